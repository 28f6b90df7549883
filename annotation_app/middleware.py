"""Checks on a request before any view sees it.

:class:`RefuseNulInAdminParameters`: the Django admin passes the values of its list filters
(``?status=…``) and of its bulk actions (``_selected_action``) to queries as they come, and
PostgreSQL text cannot hold a NUL character: such a request would be a database error (500).
It is refused (400) naming the parameter. Our own pages and the API check their parameters
field by field, with messages in place, so the check is the admin's only: every other request
pays one prefix test. An admin request's query string is searched for a NUL (and parsed only
when one is there); a posted form's fields are looked at, parsed as the CSRF check parses
them for every POST anyway (an uploaded file's content is not read).
"""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse, QueryDict
from django.urls import reverse

from annotation_app.storable import text_problem

# A NUL as it appears in a query string: escaped, or (rarely) raw.
_NUL_IN_QUERY = ("%00", "\x00")


def _nul_problem(parameters: QueryDict) -> str | None:
    """What is wrong, naming the first parameter that holds a NUL character; or None."""
    for name, values in parameters.lists():
        if text_problem(name):
            return f"a parameter name {text_problem(name)}"
        for value in values:
            problem = text_problem(value)
            if problem:
                return f"the parameter {name!r} {problem}"
    return None


class RefuseNulInAdminParameters:
    """A NUL character in an admin request's parameters is a 400 (``BadRequest``), not a 500."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        self._admin_prefix: str | None = None  # found on the first request: the URLs are loaded

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self._admin_prefix is None:
            self._admin_prefix = reverse("admin:index")
        if request.path.startswith(self._admin_prefix):
            self._refuse_nul(request)
        return self.get_response(request)

    @staticmethod
    def _refuse_nul(request: HttpRequest) -> None:
        problem = None
        if any(nul in request.META.get("QUERY_STRING", "") for nul in _NUL_IN_QUERY):
            problem = _nul_problem(request.GET)
        if not problem and request.method == "POST":
            problem = _nul_problem(request.POST)
        if problem:
            raise BadRequest(problem)
