"""Exporting preference data as JSON Lines (DESIGN.md, "Preference data formats").

- ``canonical``: one object per annotation, nothing merged away; re-importable.
- ``trl``: one training pair per annotation, loadable as is by ``datasets.load_dataset("json")``
  and by TRL's RewardTrainer / DPOTrainer: ``prompt`` (messages), ``chosen`` and ``rejected``
  (one assistant message each), ``margin`` from the Llama 2 margin table, plus ``batch_kind``,
  ``strength`` and ``safety_bin`` (and ``chosen_safe`` / ``rejected_safe``, the safety labels
  the reward-model evaluation needs). Safety pairs whose chosen response is unsafe and rejected
  response safe are dropped, as in the paper.

An imported dataset (TRL, HH-RLHF, a canonical file with a preference) holds no annotations:
its preferences are the comparisons' reference preferences. With
``include_reference_preferences`` the training export also yields one unrated pair (margin 0,
no strength) for every comparison that has a reference preference and no annotation, so that
imported datasets can be trained on; annotated comparisons are exported from their annotations
only. The canonical export never includes them: it is one line per annotation.

Annotators appear under a stable pseudonym, never their user name.

A damaged row never fails an export: a comparison that lacks a response or a turn of its
context (the models forbid it once judged, but raw SQL or an old deletion can leave one) is
left out, and said so. :class:`PreferenceExport` finds such rows with one query before the
first line, so that a caller can report them up front (the API in a response header, the
command on stderr, a training run in its logs); a row damaged while the export streams is
left out too, and added to the report.

Memory stays flat however large the export: rows are read ``EXPORT_CHUNK_SIZE`` at a time
through a server-side cursor, each chunk with its own prefetch of responses and turns, and
nothing is kept once a line is written; only the damaged comparisons' summaries (normally none)
are kept for the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from django.conf import settings
from django.db.models import Count, Exists, F, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from annotation_app.models import Annotation, Batch, Comparison, Response, Turn
from rlhf.preferences import DEFAULT_MARGIN_TABLE, is_dropped_safety_pair, margin_for_rating

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("canonical", "trl")
CANONICAL_FORMAT_VERSION = "pairwise.canonical/v1"
# Rows read per query while streaming: a chunk's model instances and prefetched responses and
# turns are all an export holds at once.
EXPORT_CHUNK_SIZE = 500


class DamagedRow(Exception):
    """A comparison the export cannot write whole: ``problem`` says what is missing."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


@dataclass(frozen=True)
class SkippedRow:
    """A comparison left out of an export, why, and how many lines it would have written."""

    comparison_id: int
    batch_id: int
    problem: str
    lines: int

    def __str__(self) -> str:
        lines = f"{self.lines} line{'s' if self.lines != 1 else ''}"
        return (
            f"comparison {self.comparison_id} (batch {self.batch_id}): {self.problem}; "
            f"{lines} left out"
        )


def annotator_pseudonym(user_id: int) -> str:
    """A stable pseudonym: the same annotator always maps to the same id, which reveals no name."""
    digest = hashlib.sha256(f"{settings.SECRET_KEY}:annotator:{user_id}".encode()).hexdigest()
    return f"annotator-{digest[:12]}"


def annotations_to_export(batches: Iterable[Batch] | None = None) -> QuerySet[Annotation]:
    annotations = Annotation.objects.all()
    if batches is not None:
        annotations = annotations.filter(batch__in=list(batches))
    return (
        annotations.select_related("comparison__batch", "comparison__conversation")
        .prefetch_related(
            Prefetch("comparison__conversation__turns", queryset=Turn.objects.order_by("index")),
            Prefetch(
                "comparison__responses",
                queryset=Response.objects.select_related("model_version").order_by("slot"),
            ),
        )
        .order_by("comparison_id", "id")
    )


def reference_only_comparisons(batches: Iterable[Batch] | None = None) -> QuerySet[Comparison]:
    """Comparisons whose only preference is the imported reference one (no annotation yet)."""
    comparisons = Comparison.objects.filter(reference_preferred_slot__isnull=False).exclude(
        Exists(Annotation.objects.filter(comparison=OuterRef("pk")))
    )
    if batches is not None:
        comparisons = comparisons.filter(batch__in=list(batches))
    return comparisons


def dropped_safety_annotations() -> Q:
    """The annotations the training export drops (Llama 2: a safety pair whose chosen
    response is unsafe and rejected response safe), as a filter on ``Annotation``."""
    return Q(comparison__batch__kind=Batch.Kind.SAFETY) & (
        Q(preferred_slot=1, slot1_safe=False, slot2_safe=True)
        | Q(preferred_slot=2, slot2_safe=False, slot1_safe=True)
    )


def _numbers(values: list[int]) -> str:
    """1 / 1 and 2 / 0, 1 and 2."""
    if len(values) == 1:
        return str(values[0])
    return f"{', '.join(map(str, values[:-1]))} and {values[-1]}"


def check_whole(comparison: Comparison) -> None:
    """Raise :class:`DamagedRow` unless the comparison has both responses and every turn of
    its context (reads the prefetched ``responses`` and ``conversation.turns``)."""
    problems = []
    slots = {response.slot for response in comparison.responses.all()}
    missing_slots = [slot for slot in (1, 2) if slot not in slots]
    if missing_slots:
        plural = "s" if len(missing_slots) > 1 else ""
        problems.append(f"no response{plural} in slot{plural} {_numbers(missing_slots)}")
    indexes = {turn.index for turn in comparison.conversation.turns.all()}
    missing_turns = [i for i in range(comparison.context_length) if i not in indexes]
    if missing_turns:
        plural = "s" if len(missing_turns) > 1 else ""
        problems.append(
            f"turn{plural} {_numbers(missing_turns)} of its {comparison.context_length}-turn "
            f"context {'are' if plural else 'is'} missing"
        )
    if problems:
        raise DamagedRow("; ".join(problems))


def _release(comparison: Comparison) -> None:
    """Let go of the responses and turns prefetched for a comparison, once its line is built.

    Prefetched rows and the instance they were fetched for refer to each other, a reference
    cycle that only Python's occasional full garbage collection frees; unlinked, a chunk is
    freed as soon as the next one is read, and an export's memory stays flat.
    """
    for instance in (comparison, comparison.conversation):
        vars(instance).pop("_prefetched_objects_cache", None)


def _comparison_context(comparison: Comparison) -> list[dict[str, str]]:
    turns = list(comparison.conversation.turns.all())[: comparison.context_length]
    return [turn.as_message() for turn in turns]


def _context(annotation: Annotation) -> list[dict[str, str]]:
    return _comparison_context(annotation.comparison)


def _responses_by_slot(annotation: Annotation) -> dict[int, Response]:
    return {response.slot: response for response in annotation.comparison.responses.all()}


def _response_record(response: Response) -> dict:
    return {
        "slot": response.slot,
        "text": response.text,
        "source": response.source,
        "model_version": response.model_version.name
        if response.model_version
        else response.model_name or None,
        "sampling": response.sampling_params,
        "seed": response.seed,
        "prompt_tokens": response.prompt_tokens,
        "completion_tokens": response.completion_tokens,
        "latency_ms": response.latency_ms,
    }


def canonical_record(annotation: Annotation) -> dict:
    """The canonical line of an annotation; :class:`DamagedRow` if its comparison is damaged."""
    comparison = annotation.comparison
    check_whole(comparison)
    batch = comparison.batch
    responses = _responses_by_slot(annotation)
    return {
        "format": CANONICAL_FORMAT_VERSION,
        "annotation_id": annotation.pk,
        "comparison_id": comparison.pk,
        "batch": {"id": batch.pk, "name": batch.name, "kind": batch.kind},
        "conversation": _context(annotation),
        "risk_category": comparison.conversation.risk_category or None,
        "attack_vector": comparison.conversation.attack_vector or None,
        "responses": [_response_record(responses[slot]) for slot in (1, 2)],
        "shown_left": annotation.left_slot,
        "preferred": annotation.preferred_slot,
        "strength": annotation.strength,
        "safe": {"1": annotation.slot1_safe, "2": annotation.slot2_safe},
        "safety_bin": annotation.safety_bin or None,
        "rationale": annotation.rationale,
        "annotator": annotator_pseudonym(annotation.annotator_id),
        "time_spent_ms": annotation.time_spent_ms,
        "is_gold_check": annotation.is_gold_check,
        "created_at": annotation.created_at.isoformat(),
    }


def training_record(
    annotation: Annotation, margin_table: str = DEFAULT_MARGIN_TABLE
) -> dict | None:
    """The TRL training pair of an annotation, or None when the paper's rule drops it;
    :class:`DamagedRow` if its comparison is damaged."""
    batch = annotation.comparison.batch
    chosen_slot, rejected_slot = annotation.preferred_slot, annotation.rejected_slot
    if batch.kind == Batch.Kind.SAFETY and is_dropped_safety_pair(
        annotation.is_safe(chosen_slot), annotation.is_safe(rejected_slot)
    ):
        return None
    check_whole(annotation.comparison)
    responses = _responses_by_slot(annotation)
    return {
        "prompt": _context(annotation),
        "chosen": [{"role": "assistant", "content": responses[chosen_slot].text}],
        "rejected": [{"role": "assistant", "content": responses[rejected_slot].text}],
        "margin": margin_for_rating(annotation.strength, margin_table),
        "batch_kind": batch.kind,
        "strength": annotation.strength,
        "safety_bin": annotation.safety_bin or None,
        "chosen_safe": annotation.is_safe(chosen_slot),
        "rejected_safe": annotation.is_safe(rejected_slot),
        "comparison_id": annotation.comparison_id,
        "batch": batch.name,
    }


def reference_training_record(comparison: Comparison) -> dict:
    """The TRL training pair of an imported comparison's reference preference: unrated.

    :class:`DamagedRow` if the comparison is damaged."""
    check_whole(comparison)
    chosen_slot = comparison.reference_preferred_slot
    texts = {response.slot: response.text for response in comparison.responses.all()}
    return {
        "prompt": _comparison_context(comparison),
        "chosen": [{"role": "assistant", "content": texts[chosen_slot]}],
        "rejected": [{"role": "assistant", "content": texts[3 - chosen_slot]}],
        "margin": 0.0,
        "batch_kind": comparison.batch.kind,
        "strength": None,
        "safety_bin": None,
        "chosen_safe": None,
        "rejected_safe": None,
        "comparison_id": comparison.pk,
        "batch": comparison.batch.name,
    }


def _exported_annotations(export_format: str, batches: list[Batch] | None) -> QuerySet[Annotation]:
    """The annotations that write a line (the training export drops some safety pairs)."""
    annotations = Annotation.objects.all()
    if batches is not None:
        annotations = annotations.filter(batch__in=batches)
    if export_format == "trl":
        annotations = annotations.exclude(dropped_safety_annotations())
    return annotations


def find_damaged_rows(
    export_format: str,
    batches: Iterable[Batch] | None = None,
    *,
    include_reference_preferences: bool = False,
) -> list[SkippedRow]:
    """The comparisons an export would write that lack a response or a context turn.

    One query finds them among the exported comparisons, with the lines each would have
    written; it is read in chunks, and :func:`check_whole` describes each (few, normally none).
    """
    if batches is not None:
        batches = list(batches)
    annotations = _exported_annotations(export_format, batches)
    exported = Q(Exists(annotations.filter(comparison=OuterRef("pk"))))
    if include_reference_preferences:
        exported |= Q(pk__in=reference_only_comparisons(batches).values("pk"))
    comparisons = Comparison.objects.all()
    if batches is not None:
        comparisons = comparisons.filter(batch__in=batches)
    exported_lines = (
        annotations.filter(comparison=OuterRef("pk"))
        .order_by()
        .values("comparison")
        .annotate(count=Count("pk"))
        .values("count")
    )
    context_turns = (
        Turn.objects.filter(
            conversation=OuterRef("conversation"), index__lt=OuterRef("context_length")
        )
        .order_by()
        .values("conversation")
        .annotate(count=Count("pk"))
        .values("count")
    )
    damaged = (
        comparisons.filter(exported)
        .alias(turns=Coalesce(Subquery(context_turns), 0))
        .filter(
            ~Exists(Response.objects.filter(comparison=OuterRef("pk"), slot=1))
            | ~Exists(Response.objects.filter(comparison=OuterRef("pk"), slot=2))
            | Q(turns__lt=F("context_length"))
        )
        .annotate(exported_lines=Subquery(exported_lines))
        .prefetch_related("responses", "conversation__turns")
        .order_by("pk")
    )
    rows = []
    for comparison in damaged.iterator(chunk_size=EXPORT_CHUNK_SIZE):
        try:
            check_whole(comparison)
        except DamagedRow as damage:
            # No annotation line: it is exported for its reference preference, one line.
            count = comparison.exported_lines or 1
            rows.append(SkippedRow(comparison.pk, comparison.batch_id, damage.problem, count))
        _release(comparison)
    return rows


class PreferenceExport:
    """One export of preference data, written line by line by :meth:`lines`.

    ``skipped`` lists the damaged comparisons that are left out; it is complete as soon as
    the export is made (one query), so a caller can report it before streaming, except for
    rows damaged while the export streams, which are left out and appended as they are met.
    ``on_skipped`` is called once for each skipped row, when it becomes known; every skipped
    row is logged as a warning too.

    ``include_reference_preferences`` (``trl`` only) adds the unrated pairs of imported
    comparisons that no one annotated (see the module docstring).
    """

    def __init__(
        self,
        export_format: str,
        batches: Iterable[Batch] | None = None,
        margin_table: str = DEFAULT_MARGIN_TABLE,
        *,
        include_reference_preferences: bool = False,
        on_skipped: Callable[[SkippedRow], None] | None = None,
    ):
        if export_format not in EXPORT_FORMATS:
            raise ValueError(
                f"unknown export format {export_format!r}; use one of {EXPORT_FORMATS}"
            )
        if include_reference_preferences and export_format != "trl":
            raise ValueError("reference preferences are exported in the trl format only")
        margin_for_rating("better", margin_table)  # fail early on an unknown margin table
        self.export_format = export_format
        self.batches = list(batches) if batches is not None else None
        self.margin_table = margin_table
        self.include_reference_preferences = include_reference_preferences
        self.on_skipped = on_skipped
        self.skipped: list[SkippedRow] = []
        self._skipped_ids: set[int] = set()
        for row in find_damaged_rows(
            export_format,
            self.batches,
            include_reference_preferences=include_reference_preferences,
        ):
            self._skip(row)

    def _skip(self, row: SkippedRow) -> None:
        self.skipped.append(row)
        self._skipped_ids.add(row.comparison_id)
        logger.warning("export: skipped %s", row)
        if self.on_skipped is not None:
            self.on_skipped(row)

    def _record(self, comparison: Comparison, build: Callable[..., dict | None], *args):
        """``build(*args)``: the record, or None for a comparison that is (or turns out to be)
        damaged, or a pair the paper's rule drops."""
        if comparison.pk in self._skipped_ids:
            return None
        try:
            return build(*args)
        except DamagedRow as damage:  # damaged since the export was made
            lines = _exported_annotations(self.export_format, None).filter(comparison=comparison)
            self._skip(
                SkippedRow(comparison.pk, comparison.batch_id, damage.problem, lines.count() or 1)
            )
            return None

    def lines(self) -> Iterator[str]:
        """Yield the export one JSON line at a time (with its newline)."""
        annotations = annotations_to_export(self.batches)
        for annotation in annotations.iterator(chunk_size=EXPORT_CHUNK_SIZE):
            if self.export_format == "canonical":
                record = self._record(annotation.comparison, canonical_record, annotation)
            else:
                record = self._record(
                    annotation.comparison, training_record, annotation, self.margin_table
                )
            _release(annotation.comparison)
            if record is not None:
                yield json.dumps(record, ensure_ascii=False) + "\n"
        if self.include_reference_preferences:
            comparisons = (
                reference_only_comparisons(self.batches)
                .select_related("batch", "conversation")
                .prefetch_related(
                    Prefetch("conversation__turns", queryset=Turn.objects.order_by("index")),
                    Prefetch("responses", queryset=Response.objects.order_by("slot")),
                )
                .order_by("id")
            )
            for comparison in comparisons.iterator(chunk_size=EXPORT_CHUNK_SIZE):
                record = self._record(comparison, reference_training_record, comparison)
                _release(comparison)
                if record is not None:
                    yield json.dumps(record, ensure_ascii=False) + "\n"


# How a streamed download says what it left out, before its first line (the API's export).
SKIPPED_COUNT_HEADER = "Pairwise-Skipped-Count"
SKIPPED_HEADER = "Pairwise-Skipped"
SKIPPED_HEADER_ROWS = 20


def skipped_headers(rows: list[SkippedRow]) -> dict[str, str]:
    """Response headers naming the damaged comparisons an export leaves out (none: none).

    The first ``SKIPPED_HEADER_ROWS`` rows, separated by `` | ``; the server log has them all.
    """
    if not rows:
        return {}
    shown = " | ".join(str(row) for row in rows[:SKIPPED_HEADER_ROWS])
    if len(rows) > SKIPPED_HEADER_ROWS:
        shown += f" | and {len(rows) - SKIPPED_HEADER_ROWS} more (see the server log)"
    return {SKIPPED_COUNT_HEADER: str(len(rows)), SKIPPED_HEADER: shown}


def export_lines(
    export_format: str,
    batches: Iterable[Batch] | None = None,
    margin_table: str = DEFAULT_MARGIN_TABLE,
    *,
    include_reference_preferences: bool = False,
    on_skipped: Callable[[SkippedRow], None] | None = None,
) -> Iterator[str]:
    """Yield the export one JSON line at a time (see :class:`PreferenceExport`)."""
    yield from PreferenceExport(
        export_format,
        batches,
        margin_table,
        include_reference_preferences=include_reference_preferences,
        on_skipped=on_skipped,
    ).lines()


def write_export(
    out: IO[str],
    export_format: str,
    batches: Iterable[Batch] | None = None,
    margin_table: str = DEFAULT_MARGIN_TABLE,
    *,
    include_reference_preferences: bool = False,
    on_skipped: Callable[[SkippedRow], None] | None = None,
) -> int:
    """Write the export to ``out``; returns the number of lines written.

    ``on_skipped`` hears of each damaged comparison left out (see :class:`PreferenceExport`).
    """
    count = 0
    for line in export_lines(
        export_format,
        batches,
        margin_table,
        include_reference_preferences=include_reference_preferences,
        on_skipped=on_skipped,
    ):
        out.write(line)
        count += 1
    return count
