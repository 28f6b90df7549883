"""Read-only queries: batch progress, agreement, annotator quality, an annotator's queue."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from itertools import combinations
from statistics import median

from django.db.models import Count, Q
from django.utils import timezone

from annotation_app.models import Annotation, Assignment, Batch, Comparison
from annotation_app.services.assignment import batches_open_to


def _agreement(annotations: list[tuple[int, int, int]]) -> float | None:
    """Share of annotator pairs on the same comparison who preferred the same response."""
    by_comparison: dict[int, list[int]] = defaultdict(list)
    for comparison_id, _, preferred_slot in annotations:
        by_comparison[comparison_id].append(preferred_slot)
    agreeing = total = 0
    for preferences in by_comparison.values():
        for first, second in combinations(preferences, 2):
            total += 1
            agreeing += first == second
    return agreeing / total if total else None


def batch_progress(batch: Batch, now: datetime | None = None) -> dict:
    """Everything an admin watches on a batch, as plain data (the API returns it as is)."""
    now = now or timezone.now()
    status_counts = dict(batch.comparisons.values_list("status").annotate(n=Count("id")).order_by())
    total = sum(status_counts.values())
    annotations = list(
        Annotation.objects.filter(comparison__batch=batch).values_list(
            "comparison_id", "annotator_id", "preferred_slot"
        )
    )
    wanted = total * batch.overlap
    live_leases = Assignment.objects.filter(
        comparison__batch=batch, status=Assignment.Status.LEASED, expires_at__gt=now
    ).count()
    reference = dict(
        batch.comparisons.filter(reference_preferred_slot__isnull=False).values_list(
            "id", "reference_preferred_slot"
        )
    )
    with_reference = [(c, p) for c, _, p in annotations if c in reference]
    return {
        "batch": batch.pk,
        "name": batch.name,
        "kind": batch.kind,
        "status": batch.status,
        "overlap": batch.overlap,
        "comparisons": total,
        "comparisons_by_status": {
            status: status_counts.get(status, 0) for status in Comparison.Status.values
        },
        "annotations": len(annotations),
        "annotations_wanted": wanted,
        "percent_complete": round(100.0 * len(annotations) / wanted, 1) if wanted else 0.0,
        "live_leases": live_leases,
        "flagged_comparisons": batch.comparisons.filter(flag_count__gt=0).count(),
        "inter_annotator_agreement": _agreement(annotations),
        "agreement_with_reference": (
            sum(reference[c] == p for c, p in with_reference) / len(with_reference)
            if with_reference
            else None
        ),
        "annotators": annotator_quality(batch),
    }


def annotator_quality(batch: Batch) -> list[dict]:
    """Per annotator: how many annotations, median time, accuracy on gold checks, skips."""
    rows = Annotation.objects.filter(comparison__batch=batch).values_list(
        "annotator__username",
        "time_spent_ms",
        "is_gold_check",
        "preferred_slot",
        "comparison__reference_preferred_slot",
    )
    stats: dict[str, dict] = defaultdict(
        lambda: {"count": 0, "times": [], "gold": 0, "gold_correct": 0}
    )
    for username, time_spent_ms, is_gold, preferred, reference in rows:
        entry = stats[username]
        entry["count"] += 1
        if time_spent_ms is not None:
            entry["times"].append(time_spent_ms)
        if is_gold:
            entry["gold"] += 1
            entry["gold_correct"] += preferred == reference
    skips = dict(
        Assignment.objects.filter(
            comparison__batch=batch,
            status__in=[Assignment.Status.SKIPPED, Assignment.Status.FLAGGED],
        )
        .values_list("annotator__username")
        .annotate(n=Count("id"))
        .order_by()
    )
    return [
        {
            "annotator": username,
            "annotations": entry["count"],
            "median_seconds": round(median(entry["times"]) / 1000, 1) if entry["times"] else None,
            "gold_checks": entry["gold"],
            "gold_accuracy": entry["gold_correct"] / entry["gold"] if entry["gold"] else None,
            "skipped_or_flagged": skips.get(username, 0),
        }
        for username, entry in sorted(stats.items())
    ]


def annotator_queue(annotator, now: datetime | None = None) -> list[dict]:
    """The batches an annotator may work on, with their own progress and what is left.

    ``generating`` counts the comparisons still waiting for their responses, so that an empty
    queue can say that more is coming.
    """
    now = now or timezone.now()
    queue = []
    batches = list(
        batches_open_to(annotator)
        .annotate(
            mine=Count(
                "comparisons__annotations",
                filter=Q(comparisons__annotations__annotator=annotator),
                distinct=True,
            ),
        )
        .order_by("deadline", "name")
    )
    # One grouped query for every batch, on the (batch, status) index.
    generating = dict(
        Comparison.objects.filter(batch__in=batches, status=Comparison.Status.WAITING)
        .values_list("batch")
        .annotate(n=Count("id"))
        .order_by()
    )
    for batch in batches:
        available = (
            batch.comparisons.filter(status=Comparison.Status.READY)
            .exclude(assignments__annotator=annotator)
            .count()
        )
        queue.append(
            {
                "batch": batch,
                "mine": batch.mine,
                "available": available,
                "generating": generating.get(batch.pk, 0),
            }
        )
    return queue
