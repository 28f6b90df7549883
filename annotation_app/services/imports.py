"""Importing prompts and ready-made comparisons into a batch, all or nothing.

Four formats (``FORMATS``), detected from the first record or named explicitly:

- ``prompts``: JSONL (a JSON string, or an object with ``prompt``, ``turns`` or ``messages``)
  or CSV (a ``prompt`` column, or a known column of the public red-team sets); safety prompts
  carry a ``risk_category`` (or ``category``) and optionally an ``attack_vector``.
- ``canonical``: Pairwise's own format, ``conversation`` plus two ``responses`` (an export
  line of the canonical annotation export is also accepted; its comparison is imported once).
- ``trl``: ``prompt`` / ``chosen`` / ``rejected``, as strings or lists of messages, or without
  ``prompt`` as two whole conversations sharing their beginning.
- ``hh-rlhf``: Anthropic HH-RLHF ``chosen`` / ``rejected`` transcripts.

Files are read, and their format told, by :mod:`rlhf.data.records`, which the training-data
loader (:func:`rlhf.data.pairs.load_pairs`) uses too, so a file reads the same in both; the
importer gives it the platform's limits. The whole file is parsed and checked before anything
is written; a bad record rejects the file with every problem listed by file, line and field,
and the database is left untouched. Files must be UTF-8, and may be gzip-compressed: that is
known from their first bytes, whatever their name. A name ending in ``.csv`` (or ``.csv.gz``,
in any case) is read as CSV, any other as JSON Lines. Lines are counted on the bytes and
decoded one by one, so an error names its true line and the rest of the file is still checked.

Limits (``PAIRWISE_IMPORT_MAX_BYTES`` uncompressed, ``PAIRWISE_IMPORT_MAX_RECORDS``) are
enforced while the file is read: past one, reading stops, so that a compression bomb costs no
more than the limit. A record nested deeper than ``MAX_JSON_DEPTH`` is an error of its line.
The content is hashed as it is read (SHA-256 of the uncompressed bytes); importing the same
content into the same batch again is refused unless asked for.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotation_app.errors import Conflict, PairwiseError
from annotation_app.models import (
    Batch,
    Comparison,
    Conversation,
    ImportedFile,
    Response,
    Turn,
)
from annotation_app.services.generation import request_generation
from annotation_app.storable import (
    BIGINT_MAX,
    BIGINT_MIN,
    INTEGER_MAX,
    MAX_JSON_DEPTH,
    json_problem,
    text_problem,
)
from rlhf.data import hh_rlhf
from rlhf.data import messages as checks
from rlhf.data.messages import FieldError
from rlhf.data.prompts import parse_prompt
from rlhf.data.records import (
    FORMATS,
    FileTooLarge,
    ReadingStopped,
    RecordReader,
    TooManyRecords,
    detect_format,
)

# Prompt and category columns of the public prompt sets (HarmBench, SimpleSafetyTests,
# StrongREJECT, AdvBench, XSTest, Do-Not-Answer), tried in this order.
# A record's conversation holds at most this many messages (no dialogue to judge needs more).
MAX_CONTEXT_TURNS = 100


@dataclass(frozen=True)
class RowError:
    filename: str
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.filename}, line {self.line}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"


class ImportFailed(PairwiseError):
    """The file was rejected; ``errors`` lists every problem found (up to a limit)."""

    def __init__(self, errors: list[RowError], more: int = 0):
        self.errors = errors
        self.more = more
        lines = [str(error) for error in errors]
        if more:
            lines.append(f"... and {more} more problems")
        super().__init__("nothing was imported:\n" + "\n".join(lines))


@dataclass
class ParsedResponse:
    text: str
    model_name: str = ""
    sampling_params: dict = field(default_factory=dict)
    seed: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int | None = None


@dataclass
class ParsedComparison:
    """One record, checked: a context, and two responses unless it is a bare prompt."""

    context: list[dict[str, str]]
    responses: list[ParsedResponse] | None
    preferred_index: int | None  # index into responses of the imported preference, if any
    risk_category: str = ""
    attack_vector: str = ""
    source: str = ""
    dedupe_key: str | None = None


@dataclass(frozen=True)
class ImportReport:
    format: str
    records: int
    comparisons: int
    waiting_for_generation: int


# --- field helpers ------------------------------------------------------------------------


def _text(record: dict, key: str, *, required: bool = True, allow_empty: bool = False) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise FieldError("is missing", key)
        return ""
    if not isinstance(value, str):
        raise FieldError(f"must be a string, not {type(value).__name__}", key)
    if required and not allow_empty and not value.strip():
        raise FieldError("is empty", key)
    return value


def _optional_int(record: dict, key: str, low: int = 0, high: int = INTEGER_MAX) -> int | None:
    """An optional integer, within the range its database column can hold."""
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError("must be an integer", key)
    if not low <= value <= high:
        raise FieldError(f"must be between {low} and {high}", key)
    return value


# Column widths are read from the models, the one source of truth for them.
_RISK_CATEGORY = Conversation._meta.get_field("risk_category")
_ATTACK_VECTOR = Conversation._meta.get_field("attack_vector")
_MODEL_NAME = Response._meta.get_field("model_name")
_SOURCE = Conversation._meta.get_field("source")


def _fitting(value: str, key: str, column) -> str:
    """``value`` for the model field ``column``, refused (never cut) when it is too long."""
    limit = column.max_length
    if len(value) > limit:
        raise FieldError(f"is {len(value)} characters long; at most {limit} fit", key)
    return value


# --- one parser per format ----------------------------------------------------------------


def _parse_prompt(record: Any, batch: Batch) -> ParsedComparison:
    # The record is read as the training library reads prompts (rlhf.data.prompts).
    parsed = parse_prompt(record)
    if batch.is_safety and not parsed.category:
        raise FieldError("safety prompts need a risk category", "risk_category")
    return ParsedComparison(
        context=parsed.context,
        responses=None,
        preferred_index=None,
        risk_category=_fitting(
            parsed.category, parsed.category_key or "risk_category", _RISK_CATEGORY
        ),
        attack_vector=_fitting(parsed.attack_vector, "attack_vector", _ATTACK_VECTOR),
    )


def _parse_canonical_response(value: Any, where: str) -> ParsedResponse:
    if not isinstance(value, dict):
        raise FieldError("must be an object with 'text'", where)
    try:
        text = _text(value, "text", allow_empty=True)
        sampling = value.get("sampling", value.get("sampling_params")) or {}
        if not isinstance(sampling, dict):
            raise FieldError("must be an object", "sampling")
        model_key = "model_version" if value.get("model_version") else "model"
        model = _text(value, model_key, required=False)
        return ParsedResponse(
            text=text,
            model_name=_fitting(model, model_key, _MODEL_NAME),
            sampling_params=sampling,
            seed=_optional_int(value, "seed", BIGINT_MIN, BIGINT_MAX),
            prompt_tokens=_optional_int(value, "prompt_tokens"),
            completion_tokens=_optional_int(value, "completion_tokens"),
            latency_ms=_optional_int(value, "latency_ms"),
        )
    except FieldError as error:
        raise FieldError(str(error), f"{where}.{error.field}") from None


def _parse_canonical(record: Any, batch: Batch) -> ParsedComparison:
    if not isinstance(record, dict):
        raise FieldError("each line must be a JSON object")
    responses = record.get("responses")
    if not isinstance(responses, list) or len(responses) != 2:
        raise FieldError("must be a list of exactly two responses", "responses")
    parsed = [_parse_canonical_response(r, f"responses[{i}]") for i, r in enumerate(responses)]
    comparison_id = record.get("comparison_id")
    risk_category = _text(record, "risk_category", required=False)
    attack_vector = _text(record, "attack_vector", required=False)
    return ParsedComparison(
        context=checks.context(record.get("conversation"), "conversation"),
        responses=parsed,
        preferred_index=None,
        risk_category=_fitting(risk_category, "risk_category", _RISK_CATEGORY),
        attack_vector=_fitting(attack_vector, "attack_vector", _ATTACK_VECTOR),
        dedupe_key=None if comparison_id is None else str(comparison_id),
    )


def _parse_trl(record: Any, batch: Batch) -> ParsedComparison:
    if not isinstance(record, dict):
        raise FieldError("each line must be a JSON object")
    context, chosen, rejected = checks.trl_pair(record)
    return ParsedComparison(
        context=context,
        responses=[ParsedResponse(text=chosen), ParsedResponse(text=rejected)],
        preferred_index=0,
    )


def _parse_hh(record: Any, batch: Batch) -> ParsedComparison:
    if not isinstance(record, dict):
        raise FieldError("each line must be a JSON object")
    # The context is the shared beginning of both transcripts, up to its last Assistant
    # marker; what follows that marker is each side's reply, taken as is (rlhf.data.hh_rlhf).
    chosen, rejected = _text(record, "chosen"), _text(record, "rejected")
    try:
        context, chosen_reply, rejected_reply = hh_rlhf.context_and_replies(chosen, rejected)
    except hh_rlhf.TranscriptError as error:
        raise FieldError(str(error), error.field) from None
    return ParsedComparison(
        context=context,
        responses=[ParsedResponse(text=chosen_reply), ParsedResponse(text=rejected_reply)],
        preferred_index=0,
    )


def _check_storable(comparison: ParsedComparison) -> None:
    """A conversation of at most :data:`MAX_CONTEXT_TURNS` messages, and texts and JSON that
    PostgreSQL can hold: neither NUL characters nor lone surrogates (which JSON's ``\\ud800``
    escapes can make). Names the culprit before anything is written."""
    turns = len(comparison.context)
    if turns > MAX_CONTEXT_TURNS:
        raise FieldError(
            f"the conversation has {turns:,} messages; at most {MAX_CONTEXT_TURNS} are imported"
        )
    texts = [
        (f"turn {i + 1} of the context", m["content"]) for i, m in enumerate(comparison.context)
    ]
    for index, response in enumerate(comparison.responses or [], start=1):
        texts += [
            (f"response {index}", response.text),
            (f"the model name of response {index}", response.model_name),
        ]
    texts += [("the risk category", comparison.risk_category)]
    texts += [("the attack vector", comparison.attack_vector)]
    for what, text in texts:
        problem = text_problem(text)
        if problem:
            raise FieldError(f"{what} {problem}")
    for index, response in enumerate(comparison.responses or [], start=1):
        problem = json_problem(response.sampling_params)
        if problem:
            raise FieldError(f"the sampling parameters of response {index} {problem}")


PARSERS = {
    "prompts": _parse_prompt,
    "canonical": _parse_canonical,
    "trl": _parse_trl,
    "hh-rlhf": _parse_hh,
}


# --- the import -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedFile:
    """A file read and checked: its format, comparisons, records, and content hash."""

    format: str
    comparisons: list[ParsedComparison]
    records: int
    sha256: str  # of the uncompressed content


def _source_label(filename: str, line: int) -> str:
    """``file:line``, the file name cut from the left when the column cannot hold it all."""
    suffix = f":{line}"
    room = _SOURCE.max_length - len(suffix)
    name = filename if len(filename) <= room else "…" + filename[-(room - 1) :]
    return name + suffix


# The setting behind each limit the reader enforces, named in its error.
_LIMIT_SETTINGS = {
    FileTooLarge: "PAIRWISE_IMPORT_MAX_BYTES",
    TooManyRecords: "PAIRWISE_IMPORT_MAX_RECORDS",
}


def _stop_error(filename: str, stopped: ReadingStopped) -> RowError:
    """The error of a file whose reading stopped early; a passed limit names its setting."""
    setting = _LIMIT_SETTINGS.get(type(stopped))
    message = str(stopped)
    if setting is not None:
        message += (
            f", the import limit ({setting}={getattr(settings, setting)}); nothing past it "
            f"was read. Split the file, or raise {setting} in the server's environment."
        )
    return RowError(filename, stopped.line, None, message)


def _is_csv(filename: str) -> bool:
    """CSV is known from the name: ``.csv`` or ``.csv.gz``, in any case."""
    return filename.lower().removesuffix(".gz").endswith(".csv")


def read_file(
    stream: IO[bytes],
    filename: str,
    batch: Batch,
    file_format: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ParsedFile:
    """Read, parse and check a whole file, hashing it on the way.

    ``progress`` is called with the number of records read so far, every 100 records.
    Raises :class:`ImportFailed` listing every bad record (up to a limit), or naming the size
    limit the file passed.
    """
    if file_format is not None and file_format not in FORMATS:
        raise ImportFailed(
            [
                RowError(
                    filename, 0, "format", f"unknown format {file_format!r}; use one of {FORMATS}"
                )
            ]
        )
    problem = text_problem(filename)
    if problem:
        raise ImportFailed([RowError(ascii(filename), 0, "file", f"the file name {problem}")])
    max_errors = settings.PAIRWISE_MAX_IMPORT_ERRORS
    errors: list[RowError] = []
    error_count = 0
    parsed: list[ParsedComparison] = []
    seen_keys: set[str] = set()
    detected = False  # True when the format comes from the first record
    reader = RecordReader(
        stream,
        csv=_is_csv(filename),
        max_bytes=settings.PAIRWISE_IMPORT_MAX_BYTES,
        max_records=settings.PAIRWISE_IMPORT_MAX_RECORDS,
        max_depth=MAX_JSON_DEPTH,
    )
    try:
        for line, record in reader:
            if progress is not None and reader.records % 100 == 0:
                progress(reader.records)
            try:
                if isinstance(record, FieldError):
                    raise record
                if file_format is None:
                    file_format, detected = detect_format(record), True
                elif detected and file_format == "prompts" and detect_format(record) != file_format:
                    # A comparison further down a prompts file would lose its responses
                    # without a word; other formats fail on their missing fields.
                    raise FieldError(
                        f"looks like {detect_format(record)} but the file's first record is "
                        f"{file_format}; split the file or name its format"
                    )
                comparison = PARSERS[file_format](record, batch)
                _check_storable(comparison)
            except FieldError as error:
                error_count += 1
                if len(errors) < max_errors:
                    errors.append(RowError(filename, line, error.field, str(error)))
                continue
            if comparison.dedupe_key is not None:
                if comparison.dedupe_key in seen_keys:
                    continue
                seen_keys.add(comparison.dedupe_key)
            comparison.source = _source_label(filename, line)
            parsed.append(comparison)
    except ReadingStopped as stopped:  # a limit passed, or a damaged gzip stream
        errors.append(_stop_error(filename, stopped))
        error_count += 1
    if reader.records == 0 and not errors:
        errors.append(RowError(filename, 0, None, "the file holds no records"))
        error_count += 1
    if errors:
        raise ImportFailed(errors, more=error_count - len(errors))
    return ParsedFile(file_format or "prompts", parsed, reader.records, reader.sha256)


def _check_open(batch: Batch) -> None:
    if batch.status == Batch.Status.CLOSED:
        raise Conflict(f"batch {batch.name!r} is closed; it takes no new comparisons")


def _lock_open_batch(batch: Batch) -> None:
    """Lock the batch row (as closing it does) and check, on fresh data, that it is open."""
    _check_open(Batch.objects.select_for_update().get(pk=batch.pk))


class DuplicateImport(Conflict):
    """The same content was imported into the batch before; ``earlier`` says when and by whom."""

    def __init__(self, batch: Batch, earlier: ImportedFile):
        self.earlier = earlier
        when = timezone.localtime(earlier.created_at).strftime("%Y-%m-%d %H:%M %Z")
        who = earlier.imported_by.get_username() if earlier.imported_by else "an unknown user"
        super().__init__(
            f"this file was already imported into batch {batch.name!r} on {when} by {who} "
            f"(as {earlier.filename}, {earlier.comparisons} comparisons; same content, SHA-256 "
            f"{earlier.sha256[:12]}…); nothing was imported. To import it again all the same, "
            "ask for a duplicate (API: allow_duplicate=true; admin: 'Import again'; "
            "command: --allow-duplicate)."
        )


def _refuse_duplicate(batch: Batch, sha256: str) -> None:
    earlier = (
        ImportedFile.objects.filter(batch=batch, sha256=sha256)
        .select_related("imported_by")
        .order_by("created_at")
        .first()
    )
    if earlier is not None:
        raise DuplicateImport(batch, earlier)


def import_comparisons(
    batch: Batch,
    stream: IO[bytes],
    filename: str,
    file_format: str | None = None,
    rng: random.Random | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    imported_by=None,
    allow_duplicate: bool = False,
) -> ImportReport:
    """Import a file into ``batch``: every record, or (on any error) nothing.

    The responses of each imported pair go to slots 1 and 2 in random order, so that the
    order of the source file (chosen first, say) cannot leak. Content already imported into
    the batch is refused (:class:`DuplicateImport`) unless ``allow_duplicate``; every import
    is recorded as an :class:`ImportedFile` (``imported_by``: the user, if any).
    """
    _check_open(batch)  # fail fast; checked again under a lock before writing
    rng = rng or random.Random()
    read = read_file(stream, filename, batch, file_format, progress)
    file_format, parsed, records = read.format, read.comparisons, read.records

    with transaction.atomic():
        _lock_open_batch(batch)  # also serialises two imports of the same file
        if not allow_duplicate:
            _refuse_duplicate(batch, read.sha256)
        conversations = Conversation.objects.bulk_create(
            Conversation(
                batch=batch,
                risk_category=item.risk_category,
                attack_vector=item.attack_vector,
                source=item.source,
            )
            for item in parsed
        )
        Turn.objects.bulk_create(
            Turn(
                conversation=conversation,
                index=index,
                role=message["role"],
                content=message["content"],
            )
            for conversation, item in zip(conversations, parsed, strict=True)
            for index, message in enumerate(item.context)
        )
        comparisons = Comparison.objects.bulk_create(
            Comparison(
                batch=batch,
                conversation=conversation,
                context_length=len(item.context),
                status=Comparison.Status.WAITING
                if item.responses is None
                else Comparison.Status.READY,
            )
            for conversation, item in zip(conversations, parsed, strict=True)
        )
        responses = []
        for comparison, item in zip(comparisons, parsed, strict=True):
            if item.responses is None:
                continue
            slots = [1, 2]
            rng.shuffle(slots)
            if item.preferred_index is not None:
                comparison.reference_preferred_slot = slots[item.preferred_index]
            for slot, response in zip(slots, item.responses, strict=True):
                responses.append(
                    Response(
                        comparison=comparison,
                        slot=slot,
                        text=response.text,
                        source=Response.Source.IMPORTED,
                        model_name=response.model_name,
                        sampling_params=response.sampling_params,
                        seed=response.seed,
                        prompt_tokens=response.prompt_tokens,
                        completion_tokens=response.completion_tokens,
                        latency_ms=response.latency_ms,
                    )
                )
        Response.objects.bulk_create(responses)
        Comparison.objects.bulk_update(
            [c for c in comparisons if c.reference_preferred_slot is not None],
            ["reference_preferred_slot"],
            batch_size=1000,
        )
        ImportedFile.objects.create(
            batch=batch,
            sha256=read.sha256,
            filename=filename[-ImportedFile._meta.get_field("filename").max_length :],
            records=records,
            comparisons=len(comparisons),
            imported_by=imported_by,
        )
        batch.refresh_from_db(fields=["status"])
        if batch.status == Batch.Status.ACTIVE:
            # An active batch takes new prompts straight to the model workers.
            request_generation(
                [c for c, item in zip(comparisons, parsed, strict=True) if item.responses is None]
            )
    waiting = sum(1 for item in parsed if item.responses is None)
    return ImportReport(
        format=file_format,
        records=records,
        comparisons=len(comparisons),
        waiting_for_generation=waiting,
    )
