"""Reading the API's one error shape in tests: ``{"detail": …, "errors": [{"field": …}, …]}``."""

from __future__ import annotations


def error_body(response) -> dict:
    """The error's body, checked to be in the one shape."""
    body = response.json()
    assert set(body) == {"detail", "errors"}, body
    assert isinstance(body["detail"], str) and body["detail"], body
    for error in body["errors"]:
        assert {"field", "message"} <= set(error), body
    return body


def error_fields(response) -> set[str | None]:
    """The fields the error names (a path such as ``sides[1].top_p`` for nested ones)."""
    return {error["field"] for error in error_body(response)["errors"]}


def error_messages(response) -> str:
    """The detail and every message, as one text to search."""
    body = error_body(response)
    return "\n".join([body["detail"], *(error["message"] for error in body["errors"])])
