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
needed. A lease change is one UPDATE of the counters, under the same row lock: given, one more
held and maybe a new earliest expiry (:func:`count_new_lease`); submitted, skipped or flagged,
one fewer, the earliest expiry re-read only when the finished lease may have held it
(:func:`count_finished_lease`). Rarer changes (a lease extended or reclaimed, counters mended)
recount the comparison's leases (:func:`settle_comparison`). When a batch's overlap is lowered,
:func:`fit_leases_to_overlap` retires the leases past their expiry beyond it, so that the
invariant holds for the new overlap too.

Which batches are open to an annotator, in the order they are tried, is kept in the cache
(``auth_cache.open_batch_ids``; dropped whenever a batch or its annotators change): reading
the restrictions took the costliest statement of the loop to plan.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import (
    Count,
    DateTimeField,
    Exists,
    F,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce, Least
from django.utils import timezone

from annotation_app import auth_cache
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


def _earliest_held_expiry() -> Subquery:
    """The earliest expiry among the leases held on the outer comparison (None if none)."""
    held = _held_leases().values("comparison")
    return Subquery(held.annotate(first=Min("expires_at")).values("first"))


def settle_comparison(comparison_id: int) -> None:
    """Recount the held leases of a comparison whose row lock the caller holds: one UPDATE."""
    held = _held_leases().values("comparison")
    Comparison.objects.filter(pk=comparison_id).update(
        leased_count=Coalesce(Subquery(held.annotate(n=Count("pk")).values("n")), Value(0)),
        earliest_lease_expiry=_earliest_held_expiry(),
    )


def count_new_lease(comparison_id: int, expires_at: datetime) -> None:
    """A lease was given on the locked comparison: one more held, its expiry maybe the earliest."""
    expiry = Value(expires_at, output_field=DateTimeField())
    Comparison.objects.filter(pk=comparison_id).update(
        leased_count=F("leased_count") + 1,
        earliest_lease_expiry=Least(Coalesce("earliest_lease_expiry", expiry), expiry),
    )


def count_finished_lease(lease: Assignment, *, preferred_slot: int | None = None) -> None:
    """``lease`` (locked, its status just changed) holds its slot no more: skipped, flagged, or
    submitted preferring ``preferred_slot`` (then the comparison counts one more annotation).

    One UPDATE, the hottest statement of the loop, so written in SQL: the ORM spends more time
    compiling its expressions than PostgreSQL spends running it. The earliest expiry is re-read
    only when this lease may have been it. The batch's overlap is read in the statement, as it
    is now: an overlap changed while this transaction waited for the lock is the one applied.
    """
    comparison, assignment, batch = (
        model._meta.db_table for model in (Comparison, Assignment, Batch)
    )
    annotated = int(preferred_slot is not None)
    sql = f"""
        UPDATE {comparison} SET
            leased_count = leased_count - 1,
            earliest_lease_expiry = CASE
                WHEN leased_count <= 1 THEN NULL
                WHEN earliest_lease_expiry < %s THEN earliest_lease_expiry
                ELSE (SELECT MIN(expires_at) FROM {assignment}
                      WHERE comparison_id = %s AND status = %s)
            END,
            annotation_count = annotation_count + %s,
            slot1_count = slot1_count + %s,
            status = CASE
                WHEN %s = 1 AND status = %s
                     AND annotation_count + 1 >= (SELECT overlap FROM {batch} WHERE id = batch_id)
                THEN %s
                ELSE status
            END
        WHERE id = %s
    """
    params = [
        connection.ops.adapt_datetimefield_value(lease.expires_at),  # as the column stores it
        lease.comparison_id,
        Assignment.Status.LEASED.value,
        annotated,
        int(preferred_slot == 1),
        annotated,
        Comparison.Status.READY.value,
        Comparison.Status.COMPLETE.value,
        lease.comparison_id,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _has_free_slot(now: datetime) -> Q:
    """The free-slot test on the counters (see the module docstring); overlap from the batch."""
    return Q(annotation_count__lt=F("batch__overlap") - F("leased_count")) | Q(
        earliest_lease_expiry__lte=now
    )


def next_candidates(annotator, batch: Batch | int, now: datetime) -> QuerySet[Comparison]:
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


def _expire_leases_beyond(comparison: Comparison, limit: int, now: datetime) -> bool:
    """Bring a locked comparison's annotations plus held leases down to ``limit``: the oldest
    leases past their expiry give their slots up (they become "expired" and can no longer be
    submitted). False if too few are past their expiry; the counters are then recounted."""
    surplus = comparison.annotation_count + comparison.leased_count - limit
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
    settle_comparison(comparison.pk)
    return True


def _reclaim(comparison: Comparison, now: datetime) -> bool:
    """Make room on a locked comparison whose counters say a slot is free; False if none is.

    A slot is free outright below the overlap. Otherwise the oldest lease past its expiry
    gives its slot up. (With the counters exact, such a lease exists.)
    """
    return _expire_leases_beyond(comparison, comparison.batch.overlap - 1, now)


def fit_leases_to_overlap(batch: Batch, now: datetime | None = None) -> None:
    """After ``batch``'s overlap was lowered, its comparisons locked: leases past their expiry
    beyond the new overlap give their slots up, so that no late submit takes a comparison over
    it. (Live leases beyond it were refused by the change's check.)"""
    now = now or timezone.now()
    crowded = (
        Comparison.objects.filter(batch=batch)
        .alias(held=F("annotation_count") + F("leased_count"))
        .filter(held__gt=batch.overlap)
    )
    for comparison in crowded:
        _expire_leases_beyond(comparison, batch.overlap, now)


def _open_batch_ids(annotator) -> list[int]:
    """The batches open to the annotator, in the order next-task tries them: nearest deadline
    first (none last), then oldest."""
    batches = batches_open_to(annotator).order_by(F("deadline").asc(nulls_last=True), "created_at")
    return [batch.pk for batch in batches.only("pk", "deadline", "created_at")]


def _live_lease(annotator, batch_ids: list[int], now: datetime) -> Assignment | None:
    """The annotator's oldest live lease on a ready comparison of the batches, if any.

    Their live leases are read by the (annotator, status) index alone (almost always none,
    or the one being handed back); their comparisons only when there are some.
    """
    leases = Assignment.objects.filter(
        annotator=annotator, status=Assignment.Status.LEASED, expires_at__gt=now
    ).order_by("leased_at")
    if not leases.exists():
        return None
    return (
        leases.filter(comparison__batch__in=batch_ids, comparison__status=Comparison.Status.READY)
        .select_related("comparison__batch")
        .first()
    )


def next_assignment(annotator, batch: Batch | None = None, now: datetime | None = None):
    """Lease the next comparison to ``annotator`` (optionally from one batch) or return None.

    An annotator who still holds a live lease gets it back, so reloading the page or a
    retried request never consumes a second slot. Batches are tried nearest deadline first.
    """
    now = now or timezone.now()
    batch_ids = auth_cache.open_batch_ids(annotator, lambda: _open_batch_ids(annotator))
    if batch is not None:
        batch_ids = [pk for pk in batch_ids if pk == batch.pk]
    if not batch_ids:
        return None

    with transaction.atomic():
        current = _live_lease(annotator, batch_ids, now)
        if current is not None:
            return current
        for batch_id in batch_ids:
            # A candidate without room (counters off after a lowered overlap) is mended by
            # _reclaim and leaves the queue, so this loop ends; the bound is a safety net.
            for _ in range(MAX_CANDIDATES_PER_BATCH):
                comparison = next_candidates(annotator, batch_id, now).first()
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
    count_new_lease(comparison.pk, lease.expires_at)
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
        count_finished_lease(assignment)
    return assignment
