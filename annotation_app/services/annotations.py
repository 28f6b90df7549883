"""Recording an annotator's judgement.

Annotators see the two responses as "A" (left) and "B" (right); which stored response is on
the left was drawn when the comparison was leased. A :class:`Judgement` speaks in those
display sides; :func:`submit_annotation` translates it to response slots.

A submit is idempotent: it carries a key chosen by the client, and a retry with the same key
returns the annotation the first attempt created instead of creating another. The same key on
another assignment is a conflict, not a retry: the new judgement is refused, never dropped.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation_app.errors import Conflict, InvalidInput
from annotation_app.models import Annotation, Assignment, Batch
from annotation_app.services.assignment import (
    check_still_held,
    count_finished_lease,
    lock_assignment,
)
from annotation_app.storable import INTEGER_MAX
from rlhf.preferences import Strength, safety_bin

MAX_RATIONALE_CHARS = 10_000
# Annotation.time_spent_ms is a PostgreSQL integer: about 24.8 days, far beyond any judgement.
MAX_TIME_SPENT_MS = INTEGER_MAX
DISPLAY_SIDES = ("A", "B")
MISSING_SAFETY_LABEL = "label response {side} safe or unsafe"


class InvalidJudgement(InvalidInput):
    """Several problems of one judgement at once (``problems``), so that all can be shown."""

    def __init__(self, problems: list[InvalidInput]):
        super().__init__("; ".join(str(problem) for problem in problems), problems[0].field)
        self.problems = problems


@dataclass(frozen=True)
class Judgement:
    """What the annotator said, in display sides: A is the left response, B the right."""

    preferred_side: str
    strength: str
    a_safe: bool | None = None
    b_safe: bool | None = None
    rationale: str = ""
    time_spent_ms: int | None = None

    def validate(self, batch: Batch) -> None:
        # The choices the annotator makes are checked together: every missing one is reported.
        problems = []
        if self.preferred_side not in DISPLAY_SIDES:
            problems.append(InvalidInput("choose response A or B", field="preferred"))
        if self.strength not in {strength.value for strength in Strength}:
            choices = ", ".join(strength.value for strength in Strength)
            problems.append(InvalidInput(f"strength must be one of: {choices}", field="strength"))
        if batch.is_safety:
            for side, label in (("A", self.a_safe), ("B", self.b_safe)):
                if label is None:
                    message = MISSING_SAFETY_LABEL.format(side=side)
                    problems.append(InvalidInput(message, field=f"{side.lower()}_safe"))
        if problems:
            raise problems[0] if len(problems) == 1 else InvalidJudgement(problems)
        if len(self.rationale) > MAX_RATIONALE_CHARS:
            raise InvalidInput(
                f"the rationale is limited to {MAX_RATIONALE_CHARS} characters", field="rationale"
            )
        if self.time_spent_ms is not None and self.time_spent_ms < 0:
            raise InvalidInput("time spent cannot be negative", field="time_spent_ms")
        if self.time_spent_ms is not None and self.time_spent_ms > MAX_TIME_SPENT_MS:
            raise InvalidInput(
                f"time spent is at most {MAX_TIME_SPENT_MS} ms (about 24 days)",
                field="time_spent_ms",
            )


def _already_recorded(
    idempotency_key: uuid.UUID, annotator, assignment_id: int
) -> Annotation | None:
    """The annotation a first attempt of this very submit created, if any.

    A key reused for another assignment is a client error, not a retry: answering with the
    first annotation would silently drop the new judgement.
    """
    annotation = Annotation.objects.filter(idempotency_key=idempotency_key).first()
    if annotation is not None and annotation.annotator_id != annotator.pk:
        raise Conflict("this submission key was already used by someone else")
    if annotation is not None and annotation.assignment_id != assignment_id:
        raise Conflict(
            f"idempotency_key {idempotency_key} was already used to submit assignment "
            f"{annotation.assignment_id}, not {assignment_id}: use a new key for each judgement"
        )
    return annotation


def submit_annotation(
    annotator,
    assignment_id: int,
    judgement: Judgement,
    idempotency_key: uuid.UUID,
    now: datetime | None = None,
) -> tuple[Annotation, bool]:
    """Record ``judgement`` for the lease ``assignment_id``; returns (annotation, created).

    A late submit (the lease expired) is still accepted while the lease holds its slot, so an
    annotator who was slow loses nothing unless someone else was given their place.
    """
    now = now or timezone.now()
    try:
        return _record(annotator, assignment_id, judgement, idempotency_key, now)
    except IntegrityError:
        # An annotation's key is unique: this one was used before, for another assignment
        # (the check says so, outside the failed transaction), or something else failed.
        existing = _already_recorded(idempotency_key, annotator, assignment_id)
        if existing is None:
            raise
        return existing, False


def _record(
    annotator, assignment_id: int, judgement: Judgement, idempotency_key: uuid.UUID, now: datetime
) -> tuple[Annotation, bool]:
    with transaction.atomic():
        # The assignment and its comparison are locked first: a concurrent retry of this very
        # submit waits here, then finds the annotation it committed.
        assignment = lock_assignment(assignment_id, annotator)
        if assignment.status == Assignment.Status.SUBMITTED:
            # Perhaps this very submit, retried. (A key used before for another assignment is
            # found by the key's unique constraint instead: a query fewer for every submit.)
            existing = _already_recorded(idempotency_key, annotator, assignment_id)
            if existing is not None:
                return existing, False
        check_still_held(assignment)

        comparison = assignment.comparison
        judgement.validate(comparison.batch)

        left, right = assignment.left_slot, assignment.right_slot
        safe_by_slot = {left: judgement.a_safe, right: judgement.b_safe}
        time_spent_ms = judgement.time_spent_ms
        if time_spent_ms is None:
            elapsed_ms = int((now - assignment.leased_at).total_seconds() * 1000)
            time_spent_ms = min(elapsed_ms, MAX_TIME_SPENT_MS)  # a lease weeks old: cap it
        annotation = Annotation.objects.create(
            comparison=comparison,
            batch=comparison.batch,
            annotator=annotator,
            assignment=assignment,
            preferred_slot=left if judgement.preferred_side == "A" else right,
            strength=judgement.strength,
            slot1_safe=safe_by_slot[1],
            slot2_safe=safe_by_slot[2],
            safety_bin=safety_bin(safe_by_slot[1], safe_by_slot[2]) or "",
            rationale=judgement.rationale.strip(),
            left_slot=left,
            time_spent_ms=time_spent_ms,
            is_gold_check=comparison.is_gold,
            idempotency_key=idempotency_key,
            created_at=now,
        )
        assignment.status = Assignment.Status.SUBMITTED
        assignment.finished_at = now
        assignment.save(update_fields=["status", "finished_at"])
        count_finished_lease(assignment, preferred_slot=annotation.preferred_slot)
    return annotation, True
