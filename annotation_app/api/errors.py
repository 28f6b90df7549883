"""The API's one error shape, for every error: DRF's own, the services', and the importer's.

``{"detail": "one sentence for a person", "errors": [{"field": …, "message": …}, …]}``, with
DRF's status code and headers (``WWW-Authenticate`` on 401, ``Retry-After`` on 429, ``Allow``
on 405). ``ErrorSerializer`` documents it in the OpenAPI schema (``annotation_app.api.schema``
adds it to every operation's error responses).
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from annotation_app.errors import Conflict, InvalidInput, NotFound, PairwiseError
from annotation_app.services.imports import ImportFailed


def _encodable(value):
    """``value`` with any lone surrogate written out (``\\ud800``): messages may quote the
    input, and a lone surrogate cannot be encoded in the response."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def error_body(detail: str, errors: list[dict] | None = None) -> dict:
    """The one shape of every API error.

    ``{"detail": "one sentence for a person", "errors": [{"field": …, "message": …}, …]}``:
    ``errors`` lists each problem (``field`` is null when no single field is at fault; import
    errors add ``file`` and ``line``), and is empty when ``detail`` says it all.
    """
    return {
        "detail": _encodable(detail),
        "errors": [{key: _encodable(value) for key, value in e.items()} for e in errors or []],
    }


class ErrorItemSerializer(serializers.Serializer):
    field = serializers.CharField(
        allow_null=True,
        help_text="Where the problem is: a field, a path into it (`sides[1].top_p`, "
        "`batches[0]`), or null when no single field is at fault.",
    )
    message = serializers.CharField()
    code = serializers.CharField(
        required=False, help_text="A machine-readable kind of problem (`required`, `invalid`…)."
    )
    file = serializers.CharField(required=False, help_text="Imports: the file.")
    line = serializers.IntegerField(
        required=False, help_text="Imports: the line (0: the file as a whole)."
    )


class ErrorSerializer(serializers.Serializer):
    """Every API error: a sentence, and each problem on its own."""

    detail = serializers.CharField(help_text="What went wrong, for a person.")
    errors = ErrorItemSerializer(
        many=True, help_text="Each problem; empty when `detail` says it all."
    )


def _field_path(parent: str | None, key: Any) -> str | None:
    if key == api_settings.NON_FIELD_ERRORS_KEY:
        return parent
    if isinstance(key, int):  # an item of a list field
        return f"{parent}[{key}]" if parent else f"[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def validation_errors(detail: Any, field: str | None = None) -> list[dict]:
    """DRF's nested validation errors as a flat list, each naming the path to its field."""
    if isinstance(detail, dict):
        return [
            error
            for key, value in detail.items()
            for error in validation_errors(value, _field_path(field, key))
        ]
    if isinstance(detail, list):
        errors = []
        for index, item in enumerate(detail):
            if isinstance(item, dict | list):  # an item of a nested list: name its index
                errors += validation_errors(item, _field_path(field, index))
            else:
                errors += validation_errors(item, field)
        return errors
    error = {"field": field, "message": str(detail)}
    code = getattr(detail, "code", None)
    if code:
        error["code"] = code
    return [error]


def _summary(errors: list[dict]) -> str:
    described = [f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors]
    if len(described) == 1:
        return described[0]
    return f"{len(described)} problems: " + "; ".join(described)


def _service_error(exc: PairwiseError) -> Response:
    if isinstance(exc, ImportFailed):
        listed = len(exc.errors)
        detail = f"nothing was imported: {listed + exc.more} problems"
        if listed == 1:
            detail = f"nothing was imported: {exc.errors[0]}"
        elif exc.more:
            detail += f" (the first {listed} are listed)"
        errors = [
            {"file": e.filename, "line": e.line, "field": e.field, "message": e.message}
            for e in exc.errors
        ]
        return Response(error_body(detail, errors), status=status.HTTP_400_BAD_REQUEST)
    code = status.HTTP_400_BAD_REQUEST
    if isinstance(exc, Conflict):
        code = status.HTTP_409_CONFLICT
    elif isinstance(exc, NotFound):
        code = status.HTTP_404_NOT_FOUND
    if isinstance(exc, InvalidInput) and exc.field:
        # A service may find several problems at once (``problems``): name each one.
        problems = getattr(exc, "problems", None) or [exc]
        errors = [{"field": problem.field, "message": str(problem)} for problem in problems]
        return Response(error_body(_summary(errors), errors), status=code)
    return Response(error_body(str(exc)), status=code)


def exception_handler(exc, context):
    """DRF's exception handler: every error it knows, in the one shape; None for the rest."""
    if isinstance(exc, PairwiseError):
        set_rollback()
        return _service_error(exc)
    # DRF's answer first: its status code and headers, and Http404 / PermissionDenied mapped.
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # not an API error: a server error, answered by handler500
    if isinstance(exc, ValidationError):
        errors = validation_errors(exc.detail)
        response.data = error_body(_summary(errors) if errors else "invalid input", errors)
    else:
        data = response.data
        detail = data.get("detail", data) if isinstance(data, dict) else data
        response.data = error_body(str(detail))
    return response
