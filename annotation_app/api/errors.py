"""Turn service errors into HTTP responses with a message that names the problem."""

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotation_app.errors import Conflict, InvalidInput, NotFound, PairwiseError
from annotation_app.services.imports import ImportFailed


def error_body(detail: str, errors: list[dict] | None = None) -> dict:
    """The one shape of every API error.

    ``{"detail": "one sentence for a person", "errors": [{"field": …, "message": …}, …]}``:
    ``errors`` lists each problem (``field`` is null when no single field is at fault; import
    errors add ``file`` and ``line``), and is empty when ``detail`` says it all.
    """
    return {"detail": detail, "errors": errors or []}


def exception_handler(exc, context):
    if isinstance(exc, ImportFailed):
        return Response(
            {
                "detail": "nothing was imported",
                "errors": [
                    {"file": e.filename, "line": e.line, "field": e.field, "message": e.message}
                    for e in exc.errors
                ],
                "more_errors": exc.more,
            },
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, InvalidInput):
        body = {"detail": str(exc)}
        if exc.field:
            body["field"] = exc.field
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Conflict):
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, NotFound):
        return Response({"detail": str(exc)}, status=status.HTTP_404_NOT_FOUND)
    if isinstance(exc, PairwiseError):
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)
