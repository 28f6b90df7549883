"""Read-only queries: batch progress, agreement, annotator quality, an annotator's queue.

The progress page polls :func:`batch_progress` live, and a Llama 2-sized weekly batch holds
hundreds of thousands of annotations: every figure is an aggregate computed by the database,
in a few queries whose answers are a row per status and per annotator whatever the batch's
size, and none of them joins the batch's annotations to its comparisons.

Inter-annotator agreement is the share of annotator pairs on the same comparison who preferred
the same response. A comparison with ``n`` annotations of which ``k`` prefer slot 1 has
``C(n, 2)`` pairs, ``C(k, 2) + C(n - k, 2)`` of them agreeing. Each comparison keeps ``n``
(``annotation_count``) and ``k`` (``slot1_count``), counted with every submit, so agreement
(and agreement with a reference preference) is a sum over the batch's comparisons. Per
annotator figures read the batch's annotations by the ``annotations_by_batch`` index.

The median time per annotator is PostgreSQL's ``percentile_cont(0.5)``; SQLite (the demo's
database) has no such aggregate, so there :class:`Median` registers one written in Python on
the connection, which holds an annotator's times in memory: a demo's batch affords it.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db.models import Aggregate, Case, Count, F, FloatField, Q, QuerySet, Sum, Value, When
from django.db.models.expressions import Combinable
from django.utils import timezone

from annotation_app.models import Annotation, Assignment, Batch, Comparison
from annotation_app.services.assignment import batches_open_to


class _PythonMedian:
    """SQLite aggregate: the median of the non-null values, as :func:`statistics.median`."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def step(self, value: float | None) -> None:
        if value is not None:
            self.values.append(value)

    def finalize(self) -> float | None:
        return statistics.median(self.values) if self.values else None


class Median(Aggregate):
    """The median of a numeric expression (nulls ignored; None when there is no value)."""

    function = "PERCENTILE_CONT"
    name = "Median"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def as_sqlite(self, compiler, connection, **extra_context):
        connection.ensure_connection()
        connection.connection.create_aggregate("PAIRWISE_MEDIAN", 1, _PythonMedian)
        return super().as_sql(
            compiler,
            connection,
            function="PAIRWISE_MEDIAN",
            template="%(function)s(%(expressions)s)",
            **extra_context,
        )


def _pairs(count: Combinable) -> Combinable:
    """How many pairs ``count`` things make, C(count, 2), as an SQL expression (exact: the
    product of two consecutive integers is even)."""
    return count * (count - 1) / 2


def _batch_annotations(batch: Batch) -> QuerySet[Annotation]:
    return Annotation.objects.filter(batch=batch).order_by()


def _preferring_reference() -> Case:
    """Of a comparison's annotations, how many preferred its reference (0 without one)."""
    return Case(
        When(reference_preferred_slot=1, then=F("slot1_count")),
        When(reference_preferred_slot=2, then=F("annotation_count") - F("slot1_count")),
        default=Value(0),
    )


def _comparison_totals(batch: Batch) -> tuple[dict[str, int], dict[str, int]]:
    """Per status, the batch's comparisons; and summed over all of them: flagged comparisons,
    annotations, annotator pairs (agreeing or not) on the same comparison, and annotations of
    comparisons with a reference preference (agreeing with it or not). One grouped query."""
    n, k = F("annotation_count"), F("slot1_count")
    rows = (
        batch.comparisons.order_by()
        .values("status")
        .annotate(
            comparisons=Count("pk"),
            flagged=Count("pk", filter=Q(flag_count__gt=0)),
            annotations=Sum(n),
            pairs=Sum(_pairs(n)),
            agreeing_pairs=Sum(_pairs(k) + _pairs(n - k)),
            referenced=Sum(n, filter=Q(reference_preferred_slot__isnull=False)),
            matching_reference=Sum(_preferring_reference()),
        )
    )
    by_status, totals = {}, Counter()
    for row in rows:
        by_status[row.pop("status")] = row.pop("comparisons")
        # PostgreSQL sums bigints as numeric (Decimal): plain ints for the API.
        totals.update({key: int(value or 0) for key, value in row.items()})
    return by_status, totals


def batch_progress(batch: Batch, now: datetime | None = None) -> dict:
    """Everything an admin watches on a batch, as plain data (the API returns it as is)."""
    now = now or timezone.now()
    status_counts, totals = _comparison_totals(batch)
    total = sum(status_counts.values())
    wanted = total * batch.overlap
    annotations = totals["annotations"]
    live_leases = Assignment.objects.filter(
        comparison__batch=batch, status=Assignment.Status.LEASED, expires_at__gt=now
    ).count()
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
        "annotations": annotations,
        "annotations_wanted": wanted,
        "percent_complete": round(100.0 * annotations / wanted, 1) if wanted else 0.0,
        "live_leases": live_leases,
        "flagged_comparisons": totals["flagged"],
        "inter_annotator_agreement": (
            totals["agreeing_pairs"] / totals["pairs"] if totals["pairs"] else None
        ),
        "agreement_with_reference": (
            totals["matching_reference"] / totals["referenced"] if totals["referenced"] else None
        ),
        "annotators": annotator_quality(batch),
    }


def annotator_quality(batch: Batch) -> list[dict]:
    """Per annotator who annotated in the batch, by user name: how many annotations, median
    time, accuracy on gold checks, skips and flags."""
    per_annotator = (
        _batch_annotations(batch)
        .values("annotator_id")
        .annotate(annotations=Count("*"), median_ms=Median("time_spent_ms"))
    )
    # Gold checks are few: the join to their comparisons' reference is theirs alone.
    gold = {
        row["annotator_id"]: row
        for row in _batch_annotations(batch)
        .filter(is_gold_check=True)
        .values("annotator_id")
        .annotate(
            checks=Count("*"),
            correct=Count("pk", filter=Q(preferred_slot=F("comparison__reference_preferred_slot"))),
        )
    }
    skips = dict(
        Assignment.objects.filter(
            comparison__batch=batch,
            status__in=[Assignment.Status.SKIPPED, Assignment.Status.FLAGGED],
        )
        .values_list("annotator_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    rows = list(per_annotator)
    # Names in a query of their own: joined into the grouped one, every annotation would be.
    usernames = dict(
        get_user_model()
        .objects.filter(pk__in=[row["annotator_id"] for row in rows])
        .values_list("pk", "username")
    )
    return sorted(
        (
            {
                "annotator": usernames[row["annotator_id"]],
                "annotations": row["annotations"],
                "median_seconds": (
                    round(row["median_ms"] / 1000, 1) if row["median_ms"] is not None else None
                ),
                "gold_checks": gold.get(row["annotator_id"], {}).get("checks", 0),
                "gold_accuracy": (
                    gold[row["annotator_id"]]["correct"] / gold[row["annotator_id"]]["checks"]
                    if row["annotator_id"] in gold
                    else None
                ),
                "skipped_or_flagged": skips.get(row["annotator_id"], 0),
            }
            for row in rows
        ),
        key=lambda entry: entry["annotator"],
    )


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
