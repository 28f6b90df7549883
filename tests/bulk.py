"""Large batches for scale tests, written in bulk: what import + activate would leave behind
for canonical comparisons (a user turn, two responses, ready), in a second instead of minutes."""

from __future__ import annotations

from annotation_app.models import Batch, Comparison, Conversation, Response, Turn


def ready_batch(size: int, *, overlap: int = 3, name: str | None = None, **fields) -> Batch:
    batch = Batch.objects.create(
        name=name or f"bulk {size}",
        kind=Batch.Kind.HELPFULNESS,
        overlap=overlap,
        status=Batch.Status.ACTIVE,
        **fields,
    )
    conversations = Conversation.objects.bulk_create(
        (Conversation(batch=batch, source=f"bulk:{i}") for i in range(size)), batch_size=5000
    )
    Turn.objects.bulk_create(
        (
            Turn(conversation=c, index=0, role="user", content=f"Question {i}?")
            for i, c in enumerate(conversations)
        ),
        batch_size=5000,
    )
    comparisons = Comparison.objects.bulk_create(
        (
            Comparison(
                batch=batch, conversation=c, context_length=1, status=Comparison.Status.READY
            )
            for c in conversations
        ),
        batch_size=5000,
    )
    Response.objects.bulk_create(
        (
            Response(comparison=c, slot=slot, text=f"Answer {slot} to {c.pk}.")
            for c in comparisons
            for slot in (1, 2)
        ),
        batch_size=5000,
    )
    return batch
