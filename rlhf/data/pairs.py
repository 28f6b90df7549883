"""Preference pairs for reward-model training: loading, the Llama 2 data mixes, the eval split.

A :class:`PreferencePair` is one human judgement: a context (``{role, content}`` messages ending
with a user turn), the chosen and the rejected reply, and what the loss and the evaluation need
(margin, strength, kind, safety bin, batch).

Loading (:func:`load_pairs`) reads JSON Lines, plain or gzip-compressed (known from the content,
whatever the name), with the reader and the format detector of :mod:`rlhf.data.records`, which
the platform's importer uses too: a file reads the same in both. The first record of a file
fixes its format; of the importer's formats, three hold preference pairs (a ``prompts`` file,
of prompts without responses, is refused):

- ``trl``: ``prompt`` / ``chosen`` / ``rejected``; the prompt a string (one user turn) or a list
  of messages, each completion a string or a list holding one assistant message. The platform's
  training export is this format plus ``margin``, ``batch_kind``, ``strength``, ``safety_bin``,
  ``comparison_id`` and ``batch``. Optional ``chosen_safe`` / ``rejected_safe`` booleans carry
  the safety labels.
- ``trl`` with an implicit prompt: no ``prompt``, ``chosen`` and ``rejected`` two whole
  conversations that share every turn but the last (an assistant reply).
- ``hh-rlhf``: Anthropic HH-RLHF transcripts (:mod:`rlhf.data.hh_rlhf`): no ``prompt``, and
  ``chosen`` a string holding an ``"\\n\\nAssistant:"`` marker.
- ``canonical``: the platform's canonical annotation export (``conversation``, two
  ``responses``, ``preferred`` slot, ``strength``, ``safe`` labels, ``batch``).

Margins: a record with a ``strength`` gets its margin from the chosen margin table
(:data:`rlhf.preferences.MARGIN_TABLES`, so the table can be changed at training time whatever
the export used); a record with only a ``margin`` keeps it; anything else has margin 0.
A bad record raises :class:`DataError` (a ``ValueError``) naming the file, line and field.

The mixes and the split are documented on :class:`MixRecipe`, :func:`mix` and :func:`split`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.data import messages as checks
from rlhf.data import records
from rlhf.data.hh_rlhf import context_and_replies
from rlhf.data.messages import FieldError
from rlhf.data.records import RecordReader, UnreadableGzip, detect_format
from rlhf.preferences import (
    DEFAULT_MARGIN_TABLE,
    SafetyBin,
    Strength,
    margin_for_rating,
)

KINDS = ("helpfulness", "safety")


# --- the pair ---------------------------------------------------------------------------------


def _message_tuples(context: Sequence[Mapping[str, str]]) -> list[list[str]]:
    return [[message["role"], message["content"]] for message in context]


def _digest(payload: Any) -> str:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_id(context: Sequence[Mapping[str, str]], chosen: str, rejected: str) -> str:
    """A stable 16-hex-digit id of a pair's content (context, chosen, rejected, in that order)."""
    return _digest(["pair", _message_tuples(context), chosen, rejected])[:16]


def context_key(context: Sequence[Mapping[str, str]]) -> str:
    """A stable hash of a context (roles and contents, exactly); the unit of :func:`split`."""
    return _digest(["context", _message_tuples(context)])


@dataclass(frozen=True)
class PreferencePair:
    """One preference judgement: ``chosen`` is preferred to ``rejected`` after ``context``.

    ``pair_id`` identifies the compared pair: the platform's comparison id when the record has
    one (several annotations of one comparison share it), else :func:`content_id` — computed
    when left empty. ``chosen_safe`` / ``rejected_safe`` are the safety labels, when known.
    Not hashable (the context is a list): key dictionaries by ``pair_id``.
    """

    context: list[dict[str, str]]
    chosen: str
    rejected: str
    strength: str | None = None
    margin: float = 0.0
    kind: str | None = None  # "helpfulness" | "safety" | None
    safety_bin: str | None = None
    source: str = ""  # "file.jsonl:12"
    batch: str | None = None
    pair_id: str = ""
    chosen_safe: bool | None = None
    rejected_safe: bool | None = None

    def __post_init__(self) -> None:
        if not self.pair_id:
            object.__setattr__(
                self, "pair_id", content_id(self.context, self.chosen, self.rejected)
            )


# --- errors -----------------------------------------------------------------------------------


class DataError(ValueError):
    """A bad record or file: ``"data.jsonl, line 3, field 'chosen': is missing"``."""

    def __init__(self, filename: str, line: int | None, field: str | None, message: str):
        self.filename, self.line, self.field, self.message = filename, line, field, message
        where = filename if line is None else f"{filename}, line {line}"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


# --- record checks (the same rules as the platform's importer) ---------------------------------


def _require(record: dict, *keys: str) -> None:
    for key in keys:
        if record.get(key) is None:
            raise FieldError("is missing", key)


def _choice(value: Any, key: str, choices: Iterable[str]) -> str | None:
    if value is None or value == "":
        return None
    choices = list(choices)
    if value not in choices:
        raise FieldError(f"must be one of {choices}, not {value!r}", key)
    return str(value)


def _optional_bool(value: Any, key: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise FieldError("must be true, false or null", key)


def _optional_id(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise FieldError("must be an integer or a non-empty string", key)
    return str(value)


def _margin(record: dict, strength: str | None, margin_table: str) -> float:
    if strength is not None:
        return margin_for_rating(strength, margin_table)
    value = record.get("margin")
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FieldError("must be a finite number", "margin")
    return float(value)


def _kind(value: Any, key: str, default: str | None) -> str | None:
    kind = _choice(value, key, KINDS)
    if kind is None:
        return default
    if default is not None and kind != default:
        raise FieldError(f"is {kind!r}, but the file was loaded as {default!r} data", key)
    return kind


# --- one parser per format --------------------------------------------------------------------


@dataclass
class _Options:
    margin_table: str
    kind: str | None


def _parse_trl(record: dict, options: _Options) -> dict:
    context, chosen, rejected = checks.trl_pair(record)
    strength = _choice(record.get("strength"), "strength", [s.value for s in Strength])
    return {
        "context": context,
        "chosen": chosen,
        "rejected": rejected,
        "strength": strength,
        "margin": _margin(record, strength, options.margin_table),
        "kind": _kind(record.get("batch_kind"), "batch_kind", options.kind),
        "safety_bin": _choice(record.get("safety_bin"), "safety_bin", [b.value for b in SafetyBin]),
        "batch": _optional_id(record.get("batch"), "batch"),
        "pair_id": _optional_id(record.get("comparison_id"), "comparison_id") or "",
        "chosen_safe": _optional_bool(record.get("chosen_safe"), "chosen_safe"),
        "rejected_safe": _optional_bool(record.get("rejected_safe"), "rejected_safe"),
    }


def _parse_hh(record: dict, options: _Options) -> dict:
    _require(record, "chosen", "rejected")
    context, chosen, rejected = context_and_replies(record["chosen"], record["rejected"])
    return {
        "context": context,
        "chosen": chosen,
        "rejected": rejected,
        "kind": options.kind,
    }


def _parse_canonical(record: dict, options: _Options) -> dict:
    responses = record.get("responses")
    if not isinstance(responses, list) or len(responses) != 2:
        raise FieldError("must be a list of exactly two responses", "responses")
    texts, slots = [], []
    for index, response in enumerate(responses):
        where = f"responses[{index}]"
        if not isinstance(response, dict) or not isinstance(response.get("text"), str):
            raise FieldError("must be an object with a string 'text'", where)
        texts.append(response["text"])
        slots.append(response.get("slot", index + 1))
    if any(type(slot) is not int for slot in slots) or sorted(slots) != [1, 2]:
        raise FieldError("the two responses must be slots 1 and 2", "responses")
    preferred = record.get("preferred")
    if preferred not in (1, 2) or isinstance(preferred, bool):
        raise FieldError(
            "must be the preferred slot, 1 or 2 (a comparison without a preference is no pair)",
            "preferred",
        )
    rejected_slot = 3 - preferred
    text_of = dict(zip(slots, texts, strict=True))
    safe = record.get("safe") or {}
    if not isinstance(safe, dict):
        raise FieldError("must be an object {'1': bool, '2': bool}", "safe")
    batch = record.get("batch") or {}
    if not isinstance(batch, dict):
        raise FieldError("must be an object with 'name' and 'kind'", "batch")
    strength = _choice(record.get("strength"), "strength", [s.value for s in Strength])
    return {
        "context": checks.context(record.get("conversation"), "conversation"),
        "chosen": text_of[preferred],
        "rejected": text_of[rejected_slot],
        "strength": strength,
        "margin": margin_for_rating(strength, options.margin_table) if strength else 0.0,
        "kind": _kind(batch.get("kind"), "batch.kind", options.kind),
        "safety_bin": _choice(record.get("safety_bin"), "safety_bin", [b.value for b in SafetyBin]),
        "batch": _optional_id(batch.get("name"), "batch.name"),
        "pair_id": _optional_id(record.get("comparison_id"), "comparison_id") or "",
        "chosen_safe": _optional_bool(safe.get(str(preferred)), f"safe.{preferred}"),
        "rejected_safe": _optional_bool(safe.get(str(rejected_slot)), f"safe.{rejected_slot}"),
    }


PARSERS: dict[str, Callable[[dict, _Options], dict]] = {
    "trl": _parse_trl,
    "hh-rlhf": _parse_hh,
    "canonical": _parse_canonical,
}


# The formats that hold preference pairs (of :data:`rlhf.data.records.FORMATS`).
FORMATS = tuple(PARSERS)


# --- loading ----------------------------------------------------------------------------------


def _pair_format(record: dict) -> str:
    """The format of a file whose first record is ``record``, if it holds pairs."""
    detected = detect_format(record)
    if detected not in FORMATS:
        raise FieldError(
            f"the first record is a prompt without responses (format {detected!r}), which holds "
            "no preference pair: a pair needs 'chosen' and 'rejected' (trl, hh-rlhf) or two "
            "'responses' and a 'preferred' slot (canonical)"
        )
    return detected


def read_records(path: Path, name: str, *, csv: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, record) of every record of a JSONL (or ``csv``) file, read by
    :class:`RecordReader`; a line that cannot be read (not UTF-8, not JSON), or a damaged gzip
    stream, is a :class:`DataError`."""
    with path.open("rb") as stream:
        try:
            for line, record in RecordReader(stream, csv=csv):
                if isinstance(record, FieldError):
                    raise DataError(name, line, record.field, str(record))
                yield line, record
        except UnreadableGzip as error:
            raise DataError(name, None, None, str(error)) from None


def margins(pairs: Sequence[PreferencePair]) -> list[float]:
    """Each pair's loss margin, as it was set once, when the pair was read: its rating's margin
    under the run's table, or an unrated record's own. The trainer's loss and the evaluation
    both take it from here."""
    return [pair.margin for pair in pairs]


def load_pairs(
    path: str | os.PathLike,
    *,
    margin_table: str = DEFAULT_MARGIN_TABLE,
    kind: str | None = None,
    file_format: str | None = None,
) -> list[PreferencePair]:
    """Every preference pair of a JSONL file (plain or gzip-compressed), in file order.

    ``file_format`` (one of :data:`FORMATS`) overrides detection from the first record.
    ``kind`` ("helpfulness" or "safety") is the kind of pairs whose record carries none (an
    HH-RLHF file, say); a record whose own kind differs is an error. Nothing is dropped here:
    the safety drop rule belongs to the mixes (:func:`mix`, :func:`drop_unsafe_chosen`).
    Raises :class:`DataError` naming file, line and field on the first bad record, for a
    file of prompts (format ``prompts``: no pairs to train on), for a damaged gzip stream, and
    for a file with no records.
    """
    margin_for_rating(Strength.BETTER, margin_table)  # fail early on an unknown table
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")
    name = os.fspath(path)
    if file_format is not None and file_format not in FORMATS:
        if file_format in records.FORMATS:  # a format of the importer's that holds no pairs
            raise DataError(
                name,
                None,
                None,
                f"a {file_format} file holds no preference pairs; use one of {FORMATS}",
            )
        raise ValueError(f"unknown format {file_format!r}; use one of {FORMATS}")
    options = _Options(margin_table=margin_table, kind=kind)
    pairs: list[PreferencePair] = []
    for line, record in read_records(Path(path), name):
        try:
            if not isinstance(record, dict):
                raise FieldError("each line must be a JSON object")
            if file_format is None:
                file_format = _pair_format(record)
            fields = PARSERS[file_format](record, options)
        except ValueError as error:  # FieldError, TranscriptError
            raise DataError(name, line, getattr(error, "field", None), str(error)) from None
        pairs.append(PreferencePair(source=f"{name}:{line}", **fields))
    if not pairs:
        raise DataError(name, None, None, "the file holds no preference pairs")
    return pairs
