"""Next-task's cost does not grow with the batch: the rows its query reads stay bounded.

The query walks the batch's ready queue in index order and stops at the first free slot
(services/assignment.py). These tests build batches ten times apart in size, in the state a
busy batch is in (comparisons started, slots held by live and expired leases, the annotator's
own earlier comparisons), and read PostgreSQL's EXPLAIN (ANALYZE, BUFFERS) of the query.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from annotation_app.models import Assignment, Batch, Comparison, Conversation
from annotation_app.services.assignment import next_assignment, next_candidates

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def busy_batch(size: int, others: list, annotator, now) -> Batch:
    """``size`` ready comparisons; the head of the queue started, filled or leased."""
    batch = Batch.objects.create(
        name=f"scale {size}", kind=Batch.Kind.HELPFULNESS, overlap=3, status=Batch.Status.ACTIVE
    )
    conversations = Conversation.objects.bulk_create(Conversation(batch=batch) for _ in range(size))
    comparisons = Comparison.objects.bulk_create(
        Comparison(
            batch=batch,
            conversation=conversation,
            context_length=1,
            status=Comparison.Status.READY,
            annotation_count=1 if index < 40 else 0,  # the started ones come first
        )
        for index, conversation in enumerate(conversations)
    )
    leases = []
    for comparison in comparisons[:20]:  # full: one annotation and two live leases
        leases += [
            Assignment(
                comparison=comparison,
                annotator=other,
                left_slot=1,
                expires_at=now + timedelta(minutes=30),
            )
            for other in others[:2]
        ]
    for comparison in comparisons[20:30]:  # the annotator had these already
        leases.append(
            Assignment(
                comparison=comparison,
                annotator=annotator,
                left_slot=1,
                status=Assignment.Status.SKIPPED,
                expires_at=now,
            )
        )
    for comparison in comparisons[40:]:  # skipped by others: history the query must not read
        leases += [
            Assignment(
                comparison=comparison,
                annotator=other,
                left_slot=1,
                status=Assignment.Status.SKIPPED,
                expires_at=now,
            )
            for other in others
        ]
    Assignment.objects.bulk_create(leases, batch_size=5000)
    full = [c.pk for c in comparisons[:20]]
    Comparison.objects.filter(pk__in=full).update(
        leased_count=2, earliest_lease_expiry=now + timedelta(minutes=30)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotation_app_comparison; ANALYZE annotation_app_assignment")
    return batch


def plan_of_next_task(annotator, batch: Batch, now) -> dict:
    with transaction.atomic():
        query = next_candidates(annotator, batch, now)[:1]
        plan = query.explain(analyze=True, buffers=True, format="json")
    import json

    return json.loads(plan)[0]["Plan"]


def nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def rows_read(plan: dict, table: str) -> int:
    """Rows the scans of ``table`` produced over all their loops (filtered ones included)."""
    return sum(
        (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0))
        * node.get("Actual Loops", 1)
        for node in nodes(plan)
        if node.get("Relation Name") == table
    )


def blocks(plan: dict) -> int:
    return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]


def test_the_rows_next_task_reads_stay_bounded_when_the_batch_grows_tenfold(make_user):
    annotator, *others = [make_user() for _ in range(3)]
    now = timezone.now()
    small = busy_batch(2_000, others, annotator, now)
    large = busy_batch(20_000, others, annotator, now)

    small_plan, large_plan = (plan_of_next_task(annotator, b, now) for b in (small, large))
    # It passes over the 20 full comparisons and the annotator's 10 earlier ones, then stops,
    # and reads the annotator's own history only, never the batch's.
    for table, bound in (("annotation_app_comparison", 40), ("annotation_app_assignment", 40)):
        assert rows_read(small_plan, table) <= bound, small_plan
        assert rows_read(large_plan, table) <= rows_read(small_plan, table) + 2, large_plan
    # Pages touched: the walk's, whatever the size. (Their exact number depends on where the
    # updated rows' new versions landed, so it is bounded, not compared: reading the large
    # batch's comparisons alone would touch some 200 pages.)
    for plan in (small_plan, large_plan):
        assert blocks(plan) <= 100, plan

    lease = next_assignment(annotator, batch=large, now=now)
    first_free = (
        Comparison.objects.filter(batch=large, annotation_count=1).order_by("id")[30:31].get()
    )
    assert lease.comparison_id == first_free.pk  # started first, never one given before
