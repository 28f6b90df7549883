"""What a refused or missing page answers: a styled page with navigation, or JSON under /api/.

Django calls these for any ``Http404`` or ``PermissionDenied`` raised by a view (and for an
unhandled exception, when ``DEBUG`` is off), including for paths that match no URL at all. API
clients get the API's one error shape (``annotation_app.api.errors.error_body``), never HTML.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

from annotation_app.api.errors import error_body

API_PREFIX = "/api/"


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body(f"Not found: nothing at {request.path}."), status=404)
    return defaults.page_not_found(request, exception)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            error_body("You do not have permission to perform this action."), status=403
        )
    return defaults.permission_denied(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            error_body("Server error: it was logged; try again in a moment."), status=500
        )
    return defaults.server_error(request)
