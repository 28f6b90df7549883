"""The OpenAPI schema's error responses: every operation documents the ones it can answer.

All errors share one body (``annotation_app.api.errors.ErrorSerializer``, the ``Error``
component). Which codes an operation documents follows from what it is: any request may be
refused for its credentials (401) or its permissions (403) or name something missing (404);
a request that writes may be invalid (400) or conflict with the data's state (409); one with
a body may come in an unsupported media type (415); a throttled view may answer 429 (so does
the token endpoint for a user name locked out after failed sign-ins). A view that cannot give
one of these names it in ``unanswered_error_codes``.
"""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse

from annotation_app.api.errors import ErrorSerializer

ERROR_DESCRIPTIONS = {
    "400": "Invalid request: `errors` names each field at fault.",
    "401": "No credentials, or credentials that are not valid.",
    "403": "Not allowed: the user's role does not permit this.",
    "404": "Not found: the object named does not exist, or is not the caller's to see.",
    "409": "Refused in the current state of the data (a closed batch, a duplicate import…).",
    "415": "The request body's media type is not one the operation reads.",
    "429": "Too many requests: try again after the `Retry-After` header's seconds.",
}
# Query parameters that only page through a list: a bad one is a missing page (404), not a 400.
PAGING_PARAMETERS = {"page"}


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's schema, plus the error responses each operation can give."""

    def _error_codes(self) -> list[str]:
        codes = ["401", "403", "404"]
        writes = self.method in {"POST", "PUT", "PATCH", "DELETE"}
        queried = any(
            parameter.get("in") == "query" and parameter.get("name") not in PAGING_PARAMETERS
            for parameter in self._get_parameters()
        )
        if writes or queried:
            codes.append("400")
        if writes:
            codes.append("409")
        if self._get_request_body():
            codes.append("415")
        if self.view.get_throttles():
            codes.append("429")
        unanswered = getattr(self.view, "unanswered_error_codes", ())
        return [code for code in codes if code not in unanswered]

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for code in self._error_codes():
            if code not in responses:
                documented = OpenApiResponse(ErrorSerializer, ERROR_DESCRIPTIONS[code])
                responses[code] = self._get_response_for_code(documented, code)
        return dict(sorted(responses.items()))
