"""Leasing comparisons to annotators, in time that does not grow with the batch.

The rules (DESIGN.md, "Assignment"):
- an annotator never gets a comparison they were given before (annotated, skipped or flagged);
- a comparison never has more annotations plus live leases than its batch's overlap;
- a lease that is not submitted before it expires returns its slot to the pool;
- concurrent requests never hand out the same slot twice;
- comparisons already started come first, so that finished comparisons accumulate;
- restricted batches are open only to their annotators and groups.

How next-task finds a free slot without counting leases
--------------------------------------------------------
Each comparison carries two counters kept under its row lock with every lease change:
``leased_count``, the leases *held* on it (status "leased", live or past their expiry), and
``earliest_lease_expiry``, the earliest expiry among them. The invariant

    annotation_count + leased_count <= overlap

holds because a lease past its expiry keeps holding its slot (and may still be submitted) until
another annotator is given that slot: it is then marked "expired" (:func:`_reclaim`). So a
comparison has a free slot now exactly when

    annotation_count + leased_count < overlap   or   earliest_lease_expiry <= now

and next-task, per batch open to the annotator (nearest deadline first), walks the batch's
ready comparisons in queue order — the partial index ``ready_comparisons_queue`` on (batch,
annotation_count desc, id) — and takes the first that passes this test, was never given to this
annotator, and is not locked by a concurrent request (``FOR UPDATE SKIP LOCKED``). The walk is
an index scan stopped by ``LIMIT 1``: the rows it passes over are comparisons filled by live
leases (at most one per live lease) and the annotator's own earlier comparisons that are still
open, never the rest of the batch, so its cost is O(log n) in the batch size for the index
descent plus a number of rows bounded by the leases in flight. The test under the lock re-reads
the row itself (PostgreSQL re-checks a locked row's newest version), so no second count is
needed; a lease change is one UPDATE that recounts the comparison's leases in place
(:func:`settle_comparison`).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation_app.errors import Conflict, NotFound
from annotation_app.models import Assignment, Batch, Comparison

MAX_CANDIDATES_PER_BATCH = 8


def batches_open_to(annotator) -> QuerySet[Batch]:
    """Active batches the annotator may work on: open ones and those assigned to them."""
    return (
        Batch.objects.filter(status=Batch.Status.ACTIVE)
        .filter(
            Q(assigned_annotators__isnull=True, assigned_groups__isnull=True)
            | Q(assigned_annotators=annotator)
            | Q(assigned_groups__in=annotator.groups.all())
        )
        .distinct()
    )


def _held_leases() -> QuerySet[Assignment]:
    """The leases held on the outer comparison (live, or expired but not given away)."""
    return Assignment.objects.filter(
        comparison=OuterRef("pk"), status=Assignment.Status.LEASED
    ).order_by()


def settle_comparison(comparison_id: int, *, annotated: bool = False) -> None:
    """Recount the comparison's held leases, and count a new annotation when ``annotated``.

    One UPDATE, run while holding the comparison's row lock. Its subqueries read the leases
    and the batch's overlap as they are now (a new statement sees every committed change), so
    an overlap changed while this transaction waited for the lock is the one applied.
    """
    held = _held_leases().values("comparison")
    changes = {
        "leased_count": Coalesce(Subquery(held.annotate(n=Count("pk")).values("n")), Value(0)),
        "earliest_lease_expiry": Subquery(held.annotate(first=Min("expires_at")).values("first")),
    }
    if annotated:
        overlap = Batch.objects.filter(pk=OuterRef("batch_id")).values("overlap")
        changes["annotation_count"] = F("annotation_count") + 1
        changes["status"] = Case(
            When(
                status=Comparison.Status.READY,
                annotation_count__gte=Subquery(overlap) - 1,
                then=Value(Comparison.Status.COMPLETE),
            ),
            default=F("status"),
        )
    Comparison.objects.filter(pk=comparison_id).update(**changes)


def _has_free_slot(now: datetime) -> Q:
    """The free-slot test on the counters (see the module docstring); overlap from the batch."""
    return Q(annotation_count__lt=F("batch__overlap") - F("leased_count")) | Q(
        earliest_lease_expiry__lte=now
    )


def next_candidates(annotator, batch: Batch, now: datetime) -> QuerySet[Comparison]:
    """``batch``'s ready comparisons with a slot free for ``annotator``, in queue order, to be
    locked (``FOR UPDATE SKIP LOCKED``); next-task takes the first."""
    given_before = Assignment.objects.filter(comparison=OuterRef("pk"), annotator=annotator)
    return (
        Comparison.objects.filter(batch=batch, status=Comparison.Status.READY)
        .filter(_has_free_slot(now))
        .exclude(Exists(given_before))
        .order_by("-annotation_count", "id")  # the ready_comparisons_queue index's order
        .select_related("batch")
        .select_for_update(skip_locked=True, of=("self",))
    )


def _reclaim(comparison: Comparison, now: datetime) -> bool:
    """Make room on a locked comparison whose counters say a slot is free; False if none is.

    A slot is free outright below the overlap. Otherwise the oldest lease past its expiry
    gives its slot up: it becomes "expired" and can no longer be submitted. (With the counters
    exact, such a lease exists; the check keeps a lowered overlap from ever being overrun.)
    """
    overlap = comparison.batch.overlap
    surplus = comparison.annotation_count + comparison.leased_count - overlap + 1
    if surplus <= 0:
        return True
    expired = list(
        Assignment.objects.filter(
            comparison=comparison, status=Assignment.Status.LEASED, expires_at__lte=now
        )
        .order_by("expires_at", "pk")
        .values_list("pk", flat=True)[:surplus]
    )
    if len(expired) < surplus:
        settle_comparison(comparison.pk)  # the counters were off: mend them so the queue skips it
        return False
    Assignment.objects.filter(pk__in=expired).update(status=Assignment.Status.EXPIRED)
    return True


def next_assignment(annotator, batch: Batch | None = None, now: datetime | None = None):
    """Lease the next comparison to ``annotator`` (optionally from one batch) or return None.

    An annotator who still holds a live lease gets it back, so reloading the page or a
    retried request never consumes a second slot. Batches are tried nearest deadline first.
    """
    now = now or timezone.now()
    batches = batches_open_to(annotator)
    if batch is not None:
        batches = batches.filter(pk=batch.pk)

    with transaction.atomic():
        current = (
            Assignment.objects.filter(
                annotator=annotator,
                status=Assignment.Status.LEASED,
                expires_at__gt=now,
                comparison__batch__in=batches.values("pk"),
                comparison__status=Comparison.Status.READY,
            )
            .select_related("comparison__batch")
            .order_by("leased_at")
            .first()
        )
        if current is not None:
            return current
        for open_batch in batches.order_by(F("deadline").asc(nulls_last=True), "created_at"):
            # A candidate without room (counters off after a lowered overlap) is mended by
            # _reclaim and leaves the queue, so this loop ends; the bound is a safety net.
            for _ in range(MAX_CANDIDATES_PER_BATCH):
                comparison = next_candidates(annotator, open_batch, now).first()
                if comparison is None:
                    break
                if _reclaim(comparison, now):
                    return create_lease(comparison, annotator, now)
    return None


def create_lease(comparison: Comparison, annotator, now: datetime | None = None) -> Assignment:
    """A new lease on a comparison whose row lock the caller holds (or that it just created),
    with the side shown on the left drawn at random."""
    now = now or timezone.now()
    lease = Assignment.objects.create(
        comparison=comparison,
        annotator=annotator,
        left_slot=random.choice((1, 2)),
        leased_at=now,
        expires_at=now + timedelta(minutes=comparison.batch.lease_minutes),
    )
    settle_comparison(comparison.pk)
    return lease


def lock_assignment(assignment_id: int, annotator) -> Assignment:
    """The annotator's assignment, locked with its comparison (the lock every slot change takes).

    Both rows are locked in one statement: assignment first, as everywhere else.
    """
    try:
        assignment = (
            Assignment.objects.select_for_update(of=("self", "comparison"))
            .select_related("comparison__batch")
            .get(pk=assignment_id)
        )
    except Assignment.DoesNotExist:
        raise NotFound(f"assignment {assignment_id} does not exist") from None
    if assignment.annotator_id != annotator.pk:
        # Annotators only ever see their own work: someone else's lease "does not exist".
        raise NotFound(f"assignment {assignment_id} does not exist")
    return assignment


def check_still_held(assignment: Assignment) -> None:
    """Refuse work on an assignment that no longer holds its slot, saying why."""
    if assignment.status == Assignment.Status.EXPIRED:
        raise Conflict(
            "your lease on this comparison expired and its slot went to another annotator"
        )
    if assignment.status != Assignment.Status.LEASED:
        raise Conflict(f"assignment {assignment.pk} is already {assignment.status}")
    batch = assignment.comparison.batch
    if batch.status != Batch.Status.ACTIVE:
        raise Conflict(f"batch {batch.name!r} is {batch.status}; it takes no annotations")


def get_assignment_for(annotator, assignment_id: int) -> Assignment:
    try:
        return Assignment.objects.select_related("comparison__batch").get(
            pk=assignment_id, annotator=annotator
        )
    except Assignment.DoesNotExist:
        raise NotFound(f"assignment {assignment_id} does not exist") from None


def extend_lease(annotator, assignment_id: int, now: datetime | None = None) -> Assignment:
    """Keep a lease alive while its page is open (the browser calls this periodically).

    A lease past its expiry still holds its slot until another annotator is given it, so it
    can be extended until then.
    """
    now = now or timezone.now()
    with transaction.atomic():
        assignment = lock_assignment(assignment_id, annotator)
        check_still_held(assignment)
        assignment.expires_at = now + timedelta(minutes=assignment.comparison.batch.lease_minutes)
        assignment.save(update_fields=["expires_at"])
        settle_comparison(assignment.comparison_id)
    return assignment


def release_assignment(
    annotator, assignment_id: int, *, flag_reason: str | None = None, now: datetime | None = None
) -> Assignment:
    """Skip a comparison, or flag it as a problem when ``flag_reason`` is given.

    Either way the annotator will not see it again and its slot returns to the pool; a flag
    also counts against the comparison so that admins can review it.
    """
    now = now or timezone.now()
    with transaction.atomic():
        assignment = lock_assignment(assignment_id, annotator)
        if assignment.status != Assignment.Status.LEASED:
            raise Conflict(f"assignment {assignment_id} is already {assignment.status}")
        if flag_reason is None:
            assignment.status = Assignment.Status.SKIPPED
        else:
            assignment.status = Assignment.Status.FLAGGED
            assignment.flag_reason = flag_reason.strip() or "(no reason given)"
            Comparison.objects.filter(pk=assignment.comparison_id).update(
                flag_count=F("flag_count") + 1
            )
        assignment.finished_at = now
        assignment.save(update_fields=["status", "flag_reason", "finished_at"])
        settle_comparison(assignment.comparison_id)
    return assignment
