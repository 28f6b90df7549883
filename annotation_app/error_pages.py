"""What a refused or missing page answers: a styled page with navigation, or JSON under /api/.

Django calls these for any ``Http404`` or ``PermissionDenied`` raised by a view (and for an
unhandled exception, when ``DEBUG`` is off), including for paths that match no URL at all, and
for a request it refuses before any view runs (a body too large, too many fields, a host it
does not serve: 400). API clients get the API's one error shape
(``annotation_app.api.errors.error_body``), never HTML.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import (
    BadRequest,
    DisallowedHost,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults
from django.views.decorators.csrf import requires_csrf_token
from rest_framework.exceptions import PermissionDenied as APIPermissionDenied

from annotation_app.api.errors import error_body

API_PREFIX = "/api/"


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def _bad_request_reason(exception: Exception | None) -> str:
    """Why a request was refused, in words safe to show: a suspicious request's own message is
    for the log only (it may quote the server's settings), as on Django's 400 page."""
    if isinstance(exception, RequestDataTooBig):
        return (
            "the request body is larger than this server accepts "
            f"({settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes)"
        )
    if isinstance(exception, TooManyFieldsSent):
        return (
            "the request has more fields than this server accepts "
            f"({settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:,})"
        )
    if isinstance(exception, TooManyFilesSent):
        return (
            "the request has more files than this server accepts "
            f"({settings.DATA_UPLOAD_MAX_NUMBER_FILES:,})"
        )
    if isinstance(exception, DisallowedHost):
        return "the request names a host that this server does not serve"
    if isinstance(exception, BadRequest) and not isinstance(exception, SuspiciousOperation):
        return str(exception)  # raised to say what is wrong (a NUL character, say)
    return "the request could not be read"


@requires_csrf_token  # as Django's own: the page's sign-out form needs the token
def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    reason = _bad_request_reason(exception)
    if _is_api(request):
        return JsonResponse(error_body(f"Bad request: {reason}."), status=400)
    return render(request, defaults.ERROR_400_TEMPLATE_NAME, {"reason": reason}, status=400)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body(f"Not found: nothing at {request.path}."), status=404)
    return defaults.page_not_found(request, exception)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body(str(APIPermissionDenied.default_detail)), status=403)
    return defaults.permission_denied(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            error_body("Server error: it was logged; try again in a moment."), status=500
        )
    return defaults.server_error(request)
