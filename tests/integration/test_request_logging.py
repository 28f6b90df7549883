"""What the log says about a refused request: one line, never a traceback (it is no fault of the
server), whichever Django logger reports it."""

from __future__ import annotations

import io
import logging

import pytest

from config.log_filters import ClientErrorsWithoutTraceback

pytestmark = pytest.mark.django_db


@pytest.fixture
def console_log():
    """What the configured console handler (settings.LOGGING) writes during the test."""
    [console] = [
        handler
        for handler in logging.getLogger().handlers
        if any(isinstance(f, ClientErrorsWithoutTraceback) for f in handler.filters)
    ]
    written = io.StringIO()
    previous = console.setStream(written)
    try:
        yield written
    finally:
        console.setStream(previous)


def test_suspicious_requests_are_logged_in_one_line_without_a_traceback(
    client, settings, console_log
):
    """Django reports these on django.security.<error> (a child logger: a filter on
    django.security itself would never see them)."""
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    assert client.get("/login/", HTTP_HOST="elsewhere.example").status_code == 400
    fields = {f"field{n}": "1" for n in range(11)}
    assert client.post("/login/", fields).status_code == 400
    log = console_log.getvalue()
    assert "Invalid HTTP_HOST header: 'elsewhere.example'" in log
    assert "The number of GET/POST parameters exceeded" in log
    assert "Traceback" not in log


def test_a_server_error_still_logs_its_traceback(console_log):
    logger = logging.getLogger("django.security.SuspiciousOperation")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.error("Internal Server Error: /x/", exc_info=True, extra={"status_code": 500})
    assert "Traceback" in console_log.getvalue() and "RuntimeError: boom" in console_log.getvalue()
