"""What a refused or missing request gets: styled pages, JSON under /api/, no traceback logged."""

from __future__ import annotations

import json
import logging

import pytest
from django.test import RequestFactory

from annotation_app.error_pages import server_error

pytestmark = pytest.mark.django_db


def test_a_missing_api_path_answers_json_in_the_api_error_shape(client, api_client, annotator):
    for caller in (client, api_client):
        response = caller.get("/api/v1/no-such-endpoint/")
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert response.json() == {
            "detail": "Not found: nothing at /api/v1/no-such-endpoint/.",
            "errors": [],
        }
    client.force_login(annotator)
    assert client.get("/api/v2/").json()["detail"] == "Not found: nothing at /api/v2/."


def test_missing_and_refused_pages_are_styled_with_navigation(client, annotator):
    response = client.get("/no-such-page/")
    html = response.content.decode()
    assert response.status_code == 404
    assert 'class="card error-page"' in html and "Page not found" in html
    assert 'href="/login/?next=/no-such-page/"' in html  # signed out: a way in

    client.force_login(annotator)
    response = client.get("/training/")  # ML staff's page
    html = response.content.decode()
    assert response.status_code == 403
    assert "You do not have access to this page" in html
    assert f"signed in as <strong>{annotator.username}</strong>" in html
    assert 'id="error-home" href="/"' in html and "Sign out" in html


def test_a_refused_page_is_logged_in_one_line_without_a_traceback(client, annotator, caplog):
    client.force_login(annotator)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert client.get("/training/").status_code == 403
        assert client.get("/tasks/999999/").status_code == 404
    records = [r for r in caplog.records if r.name == "django.request"]
    assert [r.getMessage() for r in records] == [
        "Forbidden (Permission denied): /training/",
        "Not Found: /tasks/999999/",
    ]
    assert all(record.exc_info is None for record in records)
    assert "Traceback" not in caplog.text


def test_a_server_error_is_kept_with_its_traceback(caplog):
    """The filter drops tracebacks of 4xx only: a 500 is the server's fault and keeps it."""
    logger = logging.getLogger("django.request")
    with caplog.at_level(logging.ERROR, logger="django.request"):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.error("Internal Server Error: /x/", exc_info=True, extra={"status_code": 500})
    (record,) = [r for r in caplog.records if r.name == "django.request"]
    assert record.exc_info is not None


def test_the_500_page_is_styled_and_the_api_one_is_json():
    factory = RequestFactory()
    page = server_error(factory.get("/tasks/1/"))
    assert page.status_code == 500
    assert "Something went wrong on our side" in page.content.decode()
    assert 'href="/"' in page.content.decode()
    api = server_error(factory.get("/api/v1/batches/"))
    assert api.status_code == 500
    assert api["Content-Type"] == "application/json"
    assert set(json.loads(api.content)) == {"detail", "errors"}
