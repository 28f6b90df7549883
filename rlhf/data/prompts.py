"""Prompt records: one user request (or a conversation to continue), with its risk category.

The same records the platform imports as prompt batches, read the same way (the importer calls
:func:`parse_prompt`): a JSON string; an object with ``messages`` / ``conversation``; MT-Bench's
``turns`` (the first turn opens the dialogue, the later ones are kept for multi-turn stages); or
an object whose prompt is under one of :data:`PROMPT_KEYS` (the safety sets' columns: HarmBench's
``Behavior`` preceded by its ``ContextString``, SimpleSafetyTests' ``prompts_final``,
StrongREJECT's ``forbidden_prompt``, AdvBench's ``goal``, XSTest's ``prompt``), with its risk
category under one of :data:`CATEGORY_KEYS`. CSV rows are records too (:mod:`.records`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.data import messages as checks
from rlhf.data.messages import FieldError

PROMPT_KEYS = ("prompt", "Behavior", "prompts_final", "forbidden_prompt", "goal", "question")
# SimpleSafetyTests has both ``harm_area`` (the risk) and ``category`` (the kind of request).
CATEGORY_KEYS = ("risk_category", "harm_area", "SemanticCategory", "category", "type")
# HarmBench's contextual behaviors refer to a text given in this column.
CONTEXT_STRING_KEY = "ContextString"


@dataclass(frozen=True)
class PromptRecord:
    """A prompt as read: the conversation to answer, its category, and planned later turns."""

    context: list[dict[str, str]]
    category: str = ""
    category_key: str | None = None
    attack_vector: str = ""
    later_turns: list[str] = field(default_factory=list)  # MT-Bench's second turn, …
    label: str = ""  # XSTest's "safe" / "unsafe"


def first_key(record: dict, keys: tuple[str, ...]) -> str | None:
    return next((key for key in keys if record.get(key) not in (None, "")), None)


def optional_text(record: dict, key: str) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FieldError(f"must be a string, not {type(value).__name__}", key)
    return value


def _with_context_string(record: dict, key: str) -> Any:
    """The prompt under ``key``, preceded by its HarmBench context text when it has one.

    HarmBench joins the two the same way for its direct-request test cases.
    """
    prompt, context_string = record[key], record.get(CONTEXT_STRING_KEY)
    if isinstance(prompt, str) and isinstance(context_string, str) and context_string.strip():
        return f"{context_string.strip()}\n\n---\n\n{prompt}"
    return prompt


def parse_prompt(record: Any) -> PromptRecord:
    """A prompt record (see the module docstring); a bad one raises FieldError naming its field."""
    if isinstance(record, str):
        record = {"prompt": record}
    if not isinstance(record, dict):
        raise FieldError("each line must be a JSON object or string")
    later: list[str] = []
    if "messages" in record or "conversation" in record:
        key = "messages" if "messages" in record else "conversation"
        context = checks.context(record[key], key)
    elif isinstance(record.get("turns"), list):
        # MT-Bench style: planned user turns; the first one opens the dialogue.
        turns = record["turns"]
        if not turns or not all(isinstance(turn, str) and turn.strip() for turn in turns):
            raise FieldError("must be a list of non-empty strings", "turns")
        context, later = [{"role": "user", "content": turns[0]}], list(turns[1:])
    else:
        key = first_key(record, PROMPT_KEYS)
        if key is None:
            raise FieldError(f"no prompt found; expected one of {', '.join(PROMPT_KEYS)}", "prompt")
        context = checks.context(_with_context_string(record, key), key)
    category_key = first_key(record, CATEGORY_KEYS)
    return PromptRecord(
        context=context,
        category=optional_text(record, category_key).strip() if category_key else "",
        category_key=category_key,
        attack_vector=optional_text(record, "attack_vector").strip(),
        later_turns=later,
        label=optional_text(record, "label").strip()
        if isinstance(record.get("label"), str)
        else "",
    )


def load_prompts(path: str | os.PathLike) -> list[PromptRecord]:
    """Every prompt of a JSONL or CSV file (gzip or not), in file order; a bad record raises
    DataError naming the file, line and field."""
    from rlhf.data.pairs import DataError, read_records

    path = Path(path)
    name = os.fspath(path)
    if not path.is_file():
        raise DataError(name, None, None, "no such file")
    csv = path.name.removesuffix(".gz").endswith(".csv")
    prompts = []
    for line, record in read_records(path, name, csv=csv):
        try:
            prompts.append(parse_prompt(record))
        except ValueError as error:
            raise DataError(name, line, getattr(error, "field", None), str(error)) from None
    if not prompts:
        raise DataError(name, None, None, "the file holds no prompts")
    return prompts


@dataclass(frozen=True)
class Prompt:
    """A prompt as the policy stages see it: the conversation to answer and whether it comes
    from a safety prompt set (then the safety reward model judges it, Llama 2's gate)."""

    context: list[dict[str, str]]
    safety_prompt: bool
    category: str = ""

    @property
    def key(self) -> str:
        from rlhf.data.pairs import context_key

        return context_key(self.context)


def split_prompt_files(
    helpfulness: Sequence[str | os.PathLike],
    safety: Sequence[str | os.PathLike],
    *,
    eval_fraction: float,
    seed: int,
    max_prompts: int | None = None,
) -> tuple[list[Prompt], list[Prompt]]:
    """(training prompts, held-out prompts) of the helpfulness and safety prompt files: each
    prompt once, in file order, held out by hash (:func:`rlhf.data.split.held_out`, the split
    every stage and ``eval-policy`` share); ``max_prompts`` caps each set's training prompts."""
    from rlhf.data.split import held_out

    train: list[Prompt] = []
    kept_back: list[Prompt] = []
    seen: set[str] = set()
    for paths, is_safety in ((helpfulness, False), (safety, True)):
        taken = 0
        for path in paths:
            for record in load_prompts(path):
                prompt = Prompt(record.context, is_safety, record.category)
                if prompt.key in seen:
                    continue
                seen.add(prompt.key)
                if held_out(prompt.context, eval_fraction, seed):
                    kept_back.append(prompt)
                elif max_prompts is None or taken < max_prompts:
                    train.append(prompt)
                    taken += 1
    return train, kept_back
