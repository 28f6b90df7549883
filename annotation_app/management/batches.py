"""What the batch commands share: finding a batch by name, describing its state."""

from __future__ import annotations

from django.core.management.base import CommandError
from django.db.models import Count

from annotation_app.models import Batch, Comparison


def batch_named(name: str) -> Batch:
    """The batch called ``name``, or a CommandError naming it."""
    try:
        return Batch.objects.get(name=name)
    except Batch.DoesNotExist:
        raise CommandError(f"no batch named {name!r}") from None


def comparison_counts(batch: Batch) -> str:
    """``"12 comparisons: 9 ready, 3 waiting for generation"``."""
    rows = batch.comparisons.values("status").annotate(count=Count("id")).order_by("status")
    counts = {row["status"]: row["count"] for row in rows}
    total = sum(counts.values())
    parts = [
        f"{counts[status]:,} {label.lower()}"
        for status, label in Comparison.Status.choices
        if counts.get(status)
    ]
    return f"{total:,} comparisons" + (f": {', '.join(parts)}" if parts else "")
