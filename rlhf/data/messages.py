"""Checking dialogue messages as they arrive in files: ``[{"role": …, "content": …}, …]``.

Shared by the platform's importer and the training-data loader, so a file that one accepts the
other accepts too. Errors name the field at fault (``prompt[2]``, say); callers add the file
and line.
"""

from __future__ import annotations

from typing import Any

MESSAGE_ROLES = {"system", "user", "assistant"}


class FieldError(ValueError):
    """A value that breaks a rule; ``field`` names where it sits in its record."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def messages(value: Any, key: str) -> list[dict[str, str]]:
    """A list of ``{role, content}`` messages; a string is one user message."""
    if isinstance(value, str):
        if not value.strip():
            raise FieldError("is empty", key)
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise FieldError("must be a non-empty list of {role, content} messages", key)
    checked = []
    for index, message in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(message, dict):
            raise FieldError("must be an object with 'role' and 'content'", where)
        role, content = message.get("role"), message.get("content")
        if role not in MESSAGE_ROLES:
            raise FieldError(f"role must be one of {sorted(MESSAGE_ROLES)}, not {role!r}", where)
        if not isinstance(content, str):
            raise FieldError("content must be a string", where)
        checked.append({"role": role, "content": content})
    return checked


def context(value: Any, key: str) -> list[dict[str, str]]:
    """Messages that a response answers: they end with a non-empty user turn."""
    checked = messages(value, key)
    if checked[-1]["role"] != "user":
        raise FieldError("the context must end with a user turn", key)
    if not checked[-1]["content"].strip():
        raise FieldError("the last user turn is empty", key)
    return checked


def completion(value: Any, key: str) -> str:
    """A completion: a string, or a list holding one assistant message."""
    if isinstance(value, str):
        return value
    checked = messages(value, key)
    if len(checked) != 1 or checked[0]["role"] != "assistant":
        raise FieldError("must be a single assistant message", key)
    return checked[0]["content"]


def trl_pair(record: dict) -> tuple[list[dict[str, str]], str, str]:
    """(context, chosen, rejected) of a TRL preference record.

    Either ``prompt`` with two completions, or (implicit prompt) two whole conversations that
    share every turn but the last.
    """
    for key in ("chosen", "rejected"):
        if key not in record:
            raise FieldError("is missing", key)
    if "prompt" in record:
        return (
            context(record["prompt"], "prompt"),
            completion(record["chosen"], "chosen"),
            completion(record["rejected"], "rejected"),
        )
    chosen_messages = messages(record["chosen"], "chosen")
    rejected_messages = messages(record["rejected"], "rejected")
    shared = chosen_messages[:-1]
    if rejected_messages[:-1] != shared or not shared:
        raise FieldError("chosen and rejected must share all turns but the last", "rejected")
    return (
        context(shared, "chosen"),
        completion(chosen_messages[-1:], "chosen"),
        completion(rejected_messages[-1:], "rejected"),
    )
