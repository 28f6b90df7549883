"""The counters a comparison keeps (services/assignment.py), recounted from the rows they sum."""

from __future__ import annotations

from annotation_app.models import Assignment, Comparison


def stored_counters(comparison: Comparison) -> dict:
    comparison.refresh_from_db()
    return {
        "annotation_count": comparison.annotation_count,
        "slot1_count": comparison.slot1_count,
        "leased_count": comparison.leased_count,
        "earliest_lease_expiry": comparison.earliest_lease_expiry,
    }


def recounted(comparison: Comparison) -> dict:
    annotations = comparison.annotations.all()
    held = comparison.assignments.filter(status=Assignment.Status.LEASED)
    return {
        "annotation_count": annotations.count(),
        "slot1_count": annotations.filter(preferred_slot=1).count(),
        "leased_count": held.count(),
        "earliest_lease_expiry": min(held.values_list("expires_at", flat=True), default=None),
    }


def assert_counters_match_rows(comparisons) -> None:
    """Every comparison's counters equal a recount, and its annotations carry its batch."""
    for comparison in comparisons:
        assert stored_counters(comparison) == recounted(comparison), comparison
        assert set(comparison.annotations.values_list("batch_id", flat=True)) <= {
            comparison.batch_id
        }
