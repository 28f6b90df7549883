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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import IO

from django.conf import settings
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet

from annotation_app.models import Annotation, Batch, Comparison, Response, Turn
from rlhf.preferences import DEFAULT_MARGIN_TABLE, is_dropped_safety_pair, margin_for_rating

EXPORT_FORMATS = ("canonical", "trl")
CANONICAL_FORMAT_VERSION = "pairwise.canonical/v1"


def annotator_pseudonym(user_id: int) -> str:
    """A stable pseudonym: the same annotator always maps to the same id, which reveals no name."""
    digest = hashlib.sha256(f"{settings.SECRET_KEY}:annotator:{user_id}".encode()).hexdigest()
    return f"annotator-{digest[:12]}"


def annotations_to_export(batches: Iterable[Batch] | None = None) -> QuerySet[Annotation]:
    annotations = Annotation.objects.all()
    if batches is not None:
        annotations = annotations.filter(comparison__batch__in=list(batches))
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
    comparison = annotation.comparison
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
    """The TRL training pair of an annotation, or None when the paper's rule drops it."""
    batch = annotation.comparison.batch
    chosen_slot, rejected_slot = annotation.preferred_slot, annotation.rejected_slot
    if batch.kind == Batch.Kind.SAFETY and is_dropped_safety_pair(
        annotation.is_safe(chosen_slot), annotation.is_safe(rejected_slot)
    ):
        return None
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
    """The TRL training pair of an imported comparison's reference preference: unrated."""
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


def export_lines(
    export_format: str,
    batches: Iterable[Batch] | None = None,
    margin_table: str = DEFAULT_MARGIN_TABLE,
    *,
    include_reference_preferences: bool = False,
) -> Iterator[str]:
    """Yield the export one JSON line at a time (with its newline).

    ``include_reference_preferences`` (``trl`` only) adds the unrated pairs of imported
    comparisons that no one annotated (see the module docstring).
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {export_format!r}; use one of {EXPORT_FORMATS}")
    if include_reference_preferences and export_format != "trl":
        raise ValueError("reference preferences are exported in the trl format only")
    margin_for_rating("better", margin_table)  # fail early on an unknown margin table
    if batches is not None:
        batches = list(batches)  # iterated twice below
    for annotation in annotations_to_export(batches).iterator(chunk_size=500):
        if export_format == "canonical":
            record = canonical_record(annotation)
        else:
            record = training_record(annotation, margin_table)
            if record is None:
                continue
        yield json.dumps(record, ensure_ascii=False) + "\n"
    if include_reference_preferences:
        comparisons = (
            reference_only_comparisons(batches)
            .select_related("batch", "conversation")
            .prefetch_related(
                Prefetch("conversation__turns", queryset=Turn.objects.order_by("index")),
                Prefetch("responses", queryset=Response.objects.order_by("slot")),
            )
            .order_by("id")
        )
        for comparison in comparisons.iterator(chunk_size=500):
            yield json.dumps(reference_training_record(comparison), ensure_ascii=False) + "\n"


def write_export(
    out: IO[str],
    export_format: str,
    batches: Iterable[Batch] | None = None,
    margin_table: str = DEFAULT_MARGIN_TABLE,
    *,
    include_reference_preferences: bool = False,
) -> int:
    """Write the export to ``out``; returns the number of lines written."""
    count = 0
    for line in export_lines(
        export_format,
        batches,
        margin_table,
        include_reference_preferences=include_reference_preferences,
    ):
        out.write(line)
        count += 1
    return count
