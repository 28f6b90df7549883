"""Read-only queries: batch progress, agreement, annotator quality, an annotator's queue.

The progress page polls :func:`batch_progress` live, and a Llama 2-sized weekly batch holds
hundreds of thousands of annotations: every figure is an aggregate computed by the database,
in six queries whose answers are a row per status and per annotator whatever the batch's size.

Inter-annotator agreement is the share of annotator pairs on the same comparison who preferred
the same response. A comparison with ``n`` annotations of which ``k`` prefer slot 1 has
``C(n, 2)`` pairs, ``C(k, 2) + C(n - k, 2)`` of them agreeing: one grouped query gives every
comparison's ``n`` and ``k``, and the sums over comparisons are taken around it.

The median time per annotator is PostgreSQL's ``percentile_cont(0.5)``; SQLite (the demo's
database) has no such aggregate, so there :class:`Median` registers one written in Python on
the connection, which holds an annotator's times in memory: a demo's batch affords it.
"""

from __future__ import annotations

import statistics
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db.models import Aggregate, Count, F, FloatField, Q, QuerySet, Sum
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
    return Annotation.objects.filter(comparison__batch=batch).order_by()


def _annotation_totals(batch: Batch) -> dict[str, int]:
    """The batch's annotations, annotator pairs (agreeing or not) on the same comparison, and
    annotations of comparisons with a reference preference (agreeing with it or not)."""
    per_comparison = (
        _batch_annotations(batch)
        .values("comparison_id")
        .annotate(
            n=Count("pk"),
            k=Count("pk", filter=Q(preferred_slot=1)),
            n_referenced=Count("pk", filter=Q(comparison__reference_preferred_slot__isnull=False)),
            n_matching=Count(
                "pk", filter=Q(preferred_slot=F("comparison__reference_preferred_slot"))
            ),
        )
    )
    totals = per_comparison.aggregate(
        annotations=Sum("n"),
        pairs=Sum(_pairs(F("n"))),
        agreeing_pairs=Sum(_pairs(F("k")) + _pairs(F("n") - F("k"))),
        referenced=Sum("n_referenced"),
        matching_reference=Sum("n_matching"),
    )
    # PostgreSQL sums bigints as numeric (Decimal): plain ints for the API.
    return {key: int(value or 0) for key, value in totals.items()}


def batch_progress(batch: Batch, now: datetime | None = None) -> dict:
    """Everything an admin watches on a batch, as plain data (the API returns it as is)."""
    now = now or timezone.now()
    by_status = (
        batch.comparisons.order_by()
        .values_list("status")
        .annotate(n=Count("pk"), flagged=Count("pk", filter=Q(flag_count__gt=0)))
    )
    status_counts, flagged = {}, 0
    for status, count, flagged_count in by_status:
        status_counts[status] = count
        flagged += flagged_count
    total = sum(status_counts.values())
    wanted = total * batch.overlap
    totals = _annotation_totals(batch)
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
        "flagged_comparisons": flagged,
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
        .annotate(
            annotations=Count("pk"),
            median_ms=Median("time_spent_ms"),
            gold_checks=Count("pk", filter=Q(is_gold_check=True)),
            gold_correct=Count(
                "pk",
                filter=Q(
                    is_gold_check=True, preferred_slot=F("comparison__reference_preferred_slot")
                ),
            ),
        )
    )
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
                "gold_checks": row["gold_checks"],
                "gold_accuracy": (
                    row["gold_correct"] / row["gold_checks"] if row["gold_checks"] else None
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
