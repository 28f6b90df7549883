"""Leasing comparisons to annotators.

The rules (DESIGN.md, "Assignment"):
- an annotator never gets a comparison they were given before (annotated, skipped or flagged);
- a comparison never has more annotations plus live leases than its batch's overlap;
- a lease that is not submitted before it expires returns its slot to the pool;
- concurrent requests never hand out the same slot twice.

The last rule rests on one lock: every change to the slots of a comparison (a new lease, a
late submit) happens while holding that comparison's row lock, and the slot count is read
*after* taking the lock, in a fresh statement. ``SKIP LOCKED`` lets concurrent annotators
spread over different comparisons instead of queueing on the same one.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation_app.errors import Conflict, NotFound
from annotation_app.models import Assignment, Batch, Comparison

# Candidates are pre-filtered on free slots, so a candidate found full under its lock means
# another request leased it in between; this bounds such retries when many race at once.
MAX_LEASE_ATTEMPTS = 50


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


def live_leases(comparison_id: int, now: datetime) -> QuerySet[Assignment]:
    return Assignment.objects.filter(
        comparison_id=comparison_id, status=Assignment.Status.LEASED, expires_at__gt=now
    )


def free_slots(comparison: Comparison, now: datetime, excluding: Assignment | None = None) -> int:
    """Slots still open on a comparison: overlap minus annotations minus live leases.

    Call it while holding the comparison's row lock, or the answer may be stale at once.
    """
    leases = live_leases(comparison.pk, now)
    if excluding is not None:
        leases = leases.exclude(pk=excluding.pk)
    return comparison.batch.overlap - comparison.annotation_count - leases.count()


def _candidates(annotator, batches: QuerySet[Batch], now: datetime) -> QuerySet[Comparison]:
    """Ready comparisons with a free slot that the annotator has never been given.

    The slot test here reads a snapshot, so a caller re-checks it under the row lock; but it
    keeps comparisons filled by live leases out of the way, however many there are.
    Comparisons that already have annotations come first, so that finished comparisons
    accumulate instead of every comparison being a third done.
    """
    leases = (
        Assignment.objects.filter(
            comparison=OuterRef("pk"), status=Assignment.Status.LEASED, expires_at__gt=now
        )
        .order_by()
        .values("comparison")
        .annotate(count=Count("pk"))
        .values("count")
    )
    return (
        Comparison.objects.filter(
            batch__in=batches.values("pk"),
            status=Comparison.Status.READY,
        )
        .alias(live_leases=Coalesce(Subquery(leases), 0))
        .filter(annotation_count__lt=F("batch__overlap") - F("live_leases"))
        .exclude(assignments__annotator=annotator)
        .order_by("-annotation_count", "id")
    )


def next_assignment(annotator, batch: Batch | None = None, now: datetime | None = None):
    """Lease the next comparison to ``annotator`` (optionally from one batch) or return None.

    An annotator who still holds a live lease gets it back, so reloading the page or a
    retried request never consumes a second slot.
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

        tried: list[int] = []
        for _ in range(MAX_LEASE_ATTEMPTS):
            comparison = (
                _candidates(annotator, batches, now)
                .exclude(pk__in=tried)
                .select_related("batch")
                .select_for_update(skip_locked=True, of=("self",))
                .first()
            )
            if comparison is None:
                return None
            if free_slots(comparison, now) > 0:
                return create_lease(comparison, annotator, now)
            tried.append(comparison.pk)
    return None


def create_lease(comparison: Comparison, annotator, now: datetime | None = None) -> Assignment:
    """A new lease, with the side shown on the left drawn at random."""
    now = now or timezone.now()
    return Assignment.objects.create(
        comparison=comparison,
        annotator=annotator,
        left_slot=random.choice((1, 2)),
        leased_at=now,
        expires_at=now + timedelta(minutes=comparison.batch.lease_minutes),
    )


def _locked_assignment(assignment_id: int, annotator) -> Assignment:
    try:
        assignment = (
            Assignment.objects.select_for_update(of=("self",))
            .select_related("comparison__batch")
            .get(pk=assignment_id)
        )
    except Assignment.DoesNotExist:
        raise NotFound(f"assignment {assignment_id} does not exist") from None
    if assignment.annotator_id != annotator.pk:
        # Annotators only ever see their own work: someone else's lease "does not exist".
        raise NotFound(f"assignment {assignment_id} does not exist")
    return assignment


def get_assignment_for(annotator, assignment_id: int) -> Assignment:
    try:
        return Assignment.objects.select_related("comparison__batch").get(
            pk=assignment_id, annotator=annotator
        )
    except Assignment.DoesNotExist:
        raise NotFound(f"assignment {assignment_id} does not exist") from None


def extend_lease(annotator, assignment_id: int, now: datetime | None = None) -> Assignment:
    """Keep a lease alive while its page is open (the browser calls this periodically)."""
    now = now or timezone.now()
    with transaction.atomic():
        assignment = _locked_assignment(assignment_id, annotator)
        if assignment.status != Assignment.Status.LEASED:
            raise Conflict(f"assignment {assignment_id} is already {assignment.status}")
        batch = assignment.comparison.batch
        if batch.status != Batch.Status.ACTIVE:
            raise Conflict(f"batch {batch.name!r} is {batch.status}; it takes no annotations")
        if not assignment.is_live(now):
            comparison = Comparison.objects.select_for_update().get(pk=assignment.comparison_id)
            comparison.batch = assignment.comparison.batch
            if free_slots(comparison, now, excluding=assignment) <= 0:
                raise Conflict("this lease expired and its slot went to another annotator")
        assignment.expires_at = now + timedelta(minutes=assignment.comparison.batch.lease_minutes)
        assignment.save(update_fields=["expires_at"])
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
        assignment = _locked_assignment(assignment_id, annotator)
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
    return assignment
