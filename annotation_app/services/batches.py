"""Batch life cycle: draft → active → closed (and reopened when needed), and settings changes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Count, F, Max, Q
from django.utils import timezone

from annotation_app.errors import Conflict, InvalidInput
from annotation_app.models import Assignment, Batch, Comparison, JudgedDataReadOnly
from annotation_app.services.assignment import fit_leases_to_overlap
from annotation_app.services.generation import request_generation


def activate_batch(batch: Batch) -> Batch:
    """Open a draft (or reopen a closed) batch to its annotators."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch.pk)
        if batch.status == Batch.Status.ACTIVE:
            raise Conflict(f"batch {batch.name!r} is already active")
        if not batch.comparisons.exists():
            raise Conflict(f"batch {batch.name!r} has no comparisons yet; import some first")
        batch.status = Batch.Status.ACTIVE
        batch.activated_at = timezone.now()
        batch.closed_at = None
        batch.save(update_fields=["status", "activated_at", "closed_at"])
        # Prompts without responses yet: fan out their generation to the model workers.
        request_generation(batch.comparisons.filter(status=Comparison.Status.WAITING))
    return batch


def close_batch(batch: Batch) -> Batch:
    """Stop handing out the batch's comparisons; open leases can no longer be submitted."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch.pk)
        if batch.status == Batch.Status.CLOSED:
            raise Conflict(f"batch {batch.name!r} is already closed")
        batch.status = Batch.Status.CLOSED
        batch.closed_at = timezone.now()
        batch.save(update_fields=["status", "closed_at"])
    return batch


def delete_batch(batch: Batch) -> None:
    """Delete a batch that holds no annotations; annotated batches can only be closed."""
    with transaction.atomic():
        annotations = batch.annotations.count()
        if annotations:
            raise Conflict(
                f"batch {batch.name!r} holds {annotations} annotations and cannot be deleted; "
                "close it instead"
            )
        batch.delete()


# --- changing a batch's settings ----------------------------------------------------------------


def check_batch_changes(
    batch: Batch, changes: Mapping[str, Any], now: datetime | None = None
) -> None:
    """Refuse settings that would contradict the batch's annotations or open leases.

    - ``kind`` is fixed once the batch has annotations: they were made under its rules (safety
      labels or not), and the export reads them by it. The model guards it
      (``Batch.JUDGED_FIELDS``); its refusal is given here as invalid input, with its message.
    - ``overlap`` is at least 1, and never below what a comparison already holds in annotations
      plus open leases while a lease is open: an annotator's lease may always be submitted, so
      a lower overlap would let that comparison end over it. Lower it to the highest such
      count now, or once those leases ended. Below a comparison's annotations alone is fine:
      it is complete, and its annotations are all kept.

    Raises :class:`InvalidInput` naming the field.
    """
    try:
        batch.refuse_judged_changes(changes)
    except JudgedDataReadOnly as error:
        raise InvalidInput(str(error), field=error.fields[0]) from None
    overlap = changes.get("overlap", batch.overlap)
    if overlap == batch.overlap:
        return
    if overlap < 1:
        raise InvalidInput("overlap must be at least 1 annotation per comparison", field="overlap")
    if overlap < batch.overlap:
        now = now or timezone.now()
        open_leases = Q(
            assignments__status=Assignment.Status.LEASED, assignments__expires_at__gt=now
        )
        crowded = (
            Comparison.objects.filter(batch=batch)
            .annotate(
                leases=Count("assignments", filter=open_leases),
                last_expiry=Max("assignments__expires_at", filter=open_leases),
            )
            .alias(held=F("annotation_count") + F("leases"))
            .filter(leases__gt=0, held__gt=overlap)
            .order_by("-held", "-last_expiry")
        )
        worst = crowded.first()
        if worst is not None:
            held = worst.annotation_count + worst.leases
            raise InvalidInput(
                f"overlap {overlap} is below what comparison {worst.pk} already holds: "
                f"{worst.annotation_count} annotations and {worst.leases} open leases "
                f"({crowded.count()} comparisons are over it); lower it to {held} or more now, "
                f"or wait until those leases end (the last at "
                f"{worst.last_expiry:%Y-%m-%d %H:%M %Z})",
                field="overlap",
            )


def update_batch(batch: Batch, changes: Mapping[str, Any]) -> Batch:
    """Change a batch's settings (the API's update and the admin's save both come here).

    ``changes`` maps field names to new values; many-to-many fields (``assigned_annotators``,
    ``assigned_groups``) take lists. Values equal to the stored ones change nothing. A new
    overlap recomputes the status of the batch's ready and complete comparisons in the same
    transaction: complete with at least ``overlap`` annotations, ready below it.

    Every comparison of the batch is locked while the overlap changes, the lock that leases
    and submits take, so that no lease or annotation slips in between the check and the
    change. Raises :class:`InvalidInput` (see :func:`check_batch_changes`).
    """
    many_to_many = {field.name for field in Batch._meta.many_to_many}
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(pk=batch.pk)
        overlap_changes = changes.get("overlap", locked.overlap) != locked.overlap
        if overlap_changes:
            list(Comparison.objects.select_for_update().filter(batch=locked).values_list("pk"))
        check_batch_changes(locked, changes)
        fields = [name for name in changes if name not in many_to_many]
        for name in fields:
            setattr(locked, name, changes[name])
        if fields:
            locked.save(update_fields=fields)
        for name in many_to_many & set(changes):
            getattr(locked, name).set(changes[name])
        if overlap_changes:
            fit_leases_to_overlap(locked)
            recompute_statuses(locked)
    return locked


def recompute_statuses(batch: Batch) -> None:
    """Ready and complete comparisons of ``batch`` follow its overlap (annotations kept)."""
    ready, complete = Comparison.Status.READY, Comparison.Status.COMPLETE
    comparisons = Comparison.objects.filter(batch=batch)
    comparisons.filter(status=ready, annotation_count__gte=batch.overlap).update(status=complete)
    comparisons.filter(status=complete, annotation_count__lt=batch.overlap).update(status=ready)
