"""Batch progress computed by database aggregates equals a row-by-row computation in Python.

The fixture is a batch of a few hundred annotations by several annotators, with what every
figure reads: comparisons in each status, references and gold checks, annotation times (some
missing), skips and flags, live and expired leases, an annotator who only skipped, and a
second batch whose rows must not count. The reference computation walks every row, with the
definitions written out (agreement over every pair of annotations of a comparison).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from itertools import combinations
from statistics import median

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotation_app.models import (
    Annotation,
    Assignment,
    Batch,
    Comparison,
)
from annotation_app.selectors import batch_progress
from tests.bulk import build_batch
from tests.sqlite import run_on_sqlite


def progress_row_by_row(batch: Batch, now: datetime) -> dict:
    """What the progress of ``batch`` must be, computed from every row in Python."""
    comparisons = list(Comparison.objects.filter(batch=batch))
    annotations = list(
        Annotation.objects.filter(comparison__batch=batch).select_related("comparison", "annotator")
    )
    assignments = list(
        Assignment.objects.filter(comparison__batch=batch).select_related("annotator")
    )
    statuses = Counter(comparison.status for comparison in comparisons)
    wanted = len(comparisons) * batch.overlap

    preferences = defaultdict(list)
    for annotation in annotations:
        preferences[annotation.comparison_id].append(annotation.preferred_slot)
    pairs = [pair for prefs in preferences.values() for pair in combinations(prefs, 2)]
    referenced = [a for a in annotations if a.comparison.reference_preferred_slot is not None]

    by_annotator = defaultdict(list)
    for annotation in annotations:
        by_annotator[annotation.annotator.username].append(annotation)
    skips = Counter(
        lease.annotator.username for lease in assignments if lease.status in ("skipped", "flagged")
    )
    annotators = []
    for username in sorted(by_annotator):
        mine = by_annotator[username]
        times = [a.time_spent_ms for a in mine if a.time_spent_ms is not None]
        gold = [a for a in mine if a.is_gold_check]
        correct = [a for a in gold if a.preferred_slot == a.comparison.reference_preferred_slot]
        annotators.append(
            {
                "annotator": username,
                "annotations": len(mine),
                "median_seconds": round(median(times) / 1000, 1) if times else None,
                "gold_checks": len(gold),
                "gold_accuracy": len(correct) / len(gold) if gold else None,
                "skipped_or_flagged": skips[username],
            }
        )
    return {
        "batch": batch.pk,
        "name": batch.name,
        "kind": batch.kind,
        "status": batch.status,
        "overlap": batch.overlap,
        "comparisons": len(comparisons),
        "comparisons_by_status": {status: statuses[status] for status in Comparison.Status.values},
        "annotations": len(annotations),
        "annotations_wanted": wanted,
        "percent_complete": round(100.0 * len(annotations) / wanted, 1) if wanted else 0.0,
        "live_leases": sum(lease.is_live(now) for lease in assignments),
        "flagged_comparisons": sum(comparison.flag_count > 0 for comparison in comparisons),
        "inter_annotator_agreement": (
            sum(first == second for first, second in pairs) / len(pairs) if pairs else None
        ),
        "agreement_with_reference": (
            sum(a.preferred_slot == a.comparison.reference_preferred_slot for a in referenced)
            / len(referenced)
            if referenced
            else None
        ),
        "annotators": annotators,
    }


@pytest.mark.django_db
def test_progress_aggregates_equal_a_row_by_row_computation():
    batch = build_batch("progress", comparisons=200, annotators=7, seed=1)
    build_batch("other", comparisons=20, annotators=4, seed=2)  # must not count
    now = timezone.now()
    expected = progress_row_by_row(batch, now)
    # The fixture has what each figure reads (or the comparison below proves little).
    assert expected["annotations"] > 300 and expected["live_leases"] > 0
    assert expected["flagged_comparisons"] > 0 and expected["agreement_with_reference"]
    assert 0 < expected["inter_annotator_agreement"] < 1
    assert all(expected["comparisons_by_status"].values())
    rows = {row["annotator"]: row for row in expected["annotators"]}
    assert rows["progress-rater0"]["median_seconds"] is None
    assert "progress-rater6" not in rows  # only skipped: not an annotator of the batch
    assert all(row["gold_checks"] for row in rows.values())
    assert any(row["skipped_or_flagged"] for row in rows.values())

    with CaptureQueriesContext(connection) as queries:
        assert batch_progress(batch, now) == expected
    # A fixed handful of aggregate queries, whatever the batch's size.
    assert len(queries) == 6


@pytest.mark.django_db
def test_the_progress_of_an_empty_batch():
    batch = build_batch("empty", comparisons=0, annotators=2, seed=3)
    progress = batch_progress(batch)
    assert progress == progress_row_by_row(batch, timezone.now())
    assert progress["inter_annotator_agreement"] is None and progress["annotators"] == []


SQLITE_CHECK = """
import django
django.setup()
from django.core.management import call_command
from django.utils import timezone
call_command("migrate", verbosity=0)
from annotation_app.selectors import batch_progress
from tests.bulk import build_batch
from tests.integration.test_progress_aggregates import progress_row_by_row
batch = build_batch("progress", comparisons=60, annotators=5, seed=4)
now = timezone.now()
expected = progress_row_by_row(batch, now)
assert expected["annotators"] and expected["inter_annotator_agreement"] is not None
got = batch_progress(batch, now)
assert got == expected, (got, expected)
print("same on SQLite")
"""


@pytest.mark.slow
def test_progress_aggregates_on_sqlite_the_demos_database(tmp_path):
    """SQLite has no percentile_cont: the median comes from a Python aggregate there."""
    assert "same on SQLite" in run_on_sqlite(SQLITE_CHECK, tmp_path)
