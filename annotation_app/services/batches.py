"""Batch life cycle: draft → active → closed (and reopened when needed)."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from annotation_app.errors import Conflict
from annotation_app.models import Annotation, Batch, Comparison
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
        annotations = Annotation.objects.filter(comparison__batch=batch).count()
        if annotations:
            raise Conflict(
                f"batch {batch.name!r} holds {annotations} annotations and cannot be deleted; "
                "close it instead"
            )
        batch.delete()
