"""Large batches for scale tests, written with ``bulk_create`` in a second instead of minutes.

:func:`ready_batch`: what import + activate would leave behind for canonical comparisons (a
user turn, two responses, ready). :func:`build_batch`: a batch hundreds or thousands of
annotations into its work, with the comparisons' counters (status, annotation and flag
counts, leases) set as the services would set them; for tests of what reads a batch
(progress, exports), not of what writes one.
"""

from __future__ import annotations

import random
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from annotation_app.models import (
    Annotation,
    Assignment,
    Batch,
    Comparison,
    Conversation,
    Response,
    Turn,
)


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


STRENGTHS = ["significantly_better", "better", "slightly_better", "negligibly_better"]


def build_batch(name: str, *, comparisons: int, annotators: int, seed: int) -> Batch:
    """A batch of ``comparisons`` (overlap 3) judged by up to three of ``annotators`` each.

    Written with ``bulk_create``, with the comparisons' counters set as the services would.
    Annotator 0 never records a time; the last annotator only skips.
    """
    rng = random.Random(seed)
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"{name}-rater{i}") for i in range(annotators)
    )
    workers, skipper = users[:-1], users[-1]
    batch = Batch.objects.create(name=name, kind=Batch.Kind.HELPFULNESS, overlap=3, status="active")
    conversations = Conversation.objects.bulk_create(
        Conversation(batch=batch) for _ in range(comparisons)
    )
    Turn.objects.bulk_create(
        Turn(conversation=c, index=0, role="user", content=f"Question {c.pk}?")
        for c in conversations
    )
    now = timezone.now()
    rows, assignments, judgements = [], [], []
    for index, conversation in enumerate(conversations):
        reference = rng.choice([1, 2]) if index % 3 == 0 else None
        comparison = Comparison(
            batch=batch,
            conversation=conversation,
            context_length=1,
            reference_preferred_slot=reference,
            is_gold=reference is not None and index % 2 == 0,
        )
        rows.append(comparison)
        if index % 10 == 9:  # still waiting for generation, or failed: nobody saw it
            comparison.status = "waiting" if index % 20 == 9 else "failed"
            continue
        raters = rng.sample(workers, rng.choice([0, 1, 2, 3, 3, 3]))
        lean = rng.random()  # how far the raters of this comparison lean towards slot 1
        for rater in raters:
            lease = Assignment(
                comparison=comparison,
                annotator=rater,
                status="submitted",
                left_slot=rng.choice([1, 2]),
                expires_at=now + timedelta(minutes=30),
                finished_at=now,
            )
            assignments.append(lease)
            judgements.append(
                Annotation(
                    comparison=comparison,
                    batch=batch,
                    annotator=rater,
                    assignment=lease,
                    preferred_slot=1 if rng.random() < lean else 2,
                    strength=rng.choice(STRENGTHS),
                    left_slot=lease.left_slot,
                    time_spent_ms=None if rater == workers[0] else rng.randrange(500, 90_000),
                    is_gold_check=comparison.is_gold,
                )
            )
        others = [user for user in users if user not in raters]
        extra = rng.choice(["", "", "", "skipped", "flagged", "live", "expired"])
        if extra:
            leased = extra in ("live", "expired")
            expires = now + timedelta(minutes=-5 if extra == "expired" else 30)
            assignments.append(
                Assignment(
                    comparison=comparison,
                    annotator=skipper if extra == "skipped" else rng.choice(others),
                    status="leased" if leased else extra,
                    left_slot=1,
                    expires_at=expires,
                    flag_reason="cut off" if extra == "flagged" else "",
                )
            )
            comparison.flag_count = int(extra == "flagged")
            comparison.leased_count = int(leased)
            comparison.earliest_lease_expiry = expires if leased else None
        comparison.annotation_count = len(raters)
        this_comparisons = judgements[len(judgements) - len(raters) :]
        comparison.slot1_count = sum(
            judgement.preferred_slot == 1 for judgement in this_comparisons
        )
        comparison.status = "complete" if len(raters) >= batch.overlap else "ready"
        if index % 30 == 7:  # as when a batch closes
            comparison.status = "closed"
    Comparison.objects.bulk_create(rows)
    Response.objects.bulk_create(
        Response(comparison=c, slot=slot, text=f"Answer {slot} to {c.pk}.")
        for c in rows
        for slot in (1, 2)
    )
    Assignment.objects.bulk_create(assignments)
    Annotation.objects.bulk_create(judgements)
    return batch
