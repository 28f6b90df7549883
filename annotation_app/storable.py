"""What PostgreSQL can store: the checks that keep bad input a 400 instead of a database error.

PostgreSQL text and JSON hold no NUL character, JSON holds no NaN or infinity, and no text
holds a lone surrogate (Python strings can, e.g. from JSON's ``"\\ud800"``, but they are not
Unicode and cannot be encoded). Nesting is bounded so that recursion never decides, and
integers fit their column (``integer`` or ``bigint``).
"""

from __future__ import annotations

import math
from typing import Any

from rlhf.data.records import nested_deeper_than

# Deeper JSON is refused: no input needs more than a few levels.
MAX_JSON_DEPTH = 64
# The range of PostgreSQL's ``integer`` (token counts, latencies, time spent) and ``bigint``
# (seeds) columns.
INTEGER_MAX = 2**31 - 1
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored (a NUL, or a lone surrogate), or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        return f"contains a lone surrogate (\\u{code:04x}), which is not valid Unicode"
    return None


def json_problem(value: Any) -> str | None:
    """Why the JSON value ``value`` cannot be stored in a JSON column, or None."""
    if nested_deeper_than(value, MAX_JSON_DEPTH):
        return f"is nested more than {MAX_JSON_DEPTH} levels deep"
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                problem = text_problem(str(key))
                if problem:
                    return f"has a key that {problem}"
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return f"has a text that {problem}"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"has a number JSON cannot hold ({item})"
    return None
