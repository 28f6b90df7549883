"""What a refused or missing request gets: styled pages, JSON under /api/, no traceback logged."""

from __future__ import annotations

import io
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


def test_requests_django_refuses_before_any_view_answer_json_under_the_api(
    client, batch_admin, make_batch, settings
):
    """A body too large, too many fields or files, a host not served: Django refuses them (400)
    before the view runs; under /api/ the answer is still the API's one error shape."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 1
    batch = make_batch(comparisons=1)
    client.force_login(batch_admin)
    fields = "&".join(f"field{n}=1" for n in range(11))
    files = {f"file{n}": io.BytesIO(b'"A prompt"\n') for n in range(2)}
    refused = {
        "body is larger than this server accepts (10,000 bytes)": client.post(
            "/api/v1/batches/", json.dumps({"name": "x" * 20_000}), "application/json"
        ),
        "has more fields than this server accepts (10)": client.post(
            "/api/v1/batches/", fields, "application/x-www-form-urlencoded"
        ),
        "has more files than this server accepts (1)": client.post(
            f"/api/v1/batches/{batch.pk}/import/", files
        ),
        "names a host that this server does not serve": client.get(
            "/api/v1/batches/", HTTP_HOST="elsewhere.example"
        ),
    }
    for reason, response in refused.items():
        assert response.status_code == 400
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"detail": f"Bad request: the request {reason}.", "errors": []}
    page = client.get("/", HTTP_HOST="elsewhere.example")  # a page: the styled 400 page
    assert page.status_code == 400
    assert "The request could not be understood" in page.content.decode()
