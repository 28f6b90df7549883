"""Logging filters named in ``settings.LOGGING``."""

from __future__ import annotations

import logging


class ClientErrorsWithoutTraceback(logging.Filter):
    """Keep the one-line warning of a 4xx response, drop its traceback.

    Django logs a refused request (``PermissionDenied``: 403, ``Http404``: 404) on
    ``django.request``, and a suspicious one (a bad ``Host`` header, too many fields: 400) on
    ``django.security.<error>``, with the exception attached, which prints a traceback for what
    is no fault of the server. Server errors (5xx) keep theirs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500:
            record.exc_info = None
            record.exc_text = None
        return True
