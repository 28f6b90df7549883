"""Annotator-written prompts and multi-turn dialogues (Llama 2, section 3.2.1).

An annotator writes a prompt; two responses are generated in the background while the page
shows progress; the annotator compares them. They may then continue the dialogue: the chosen
reply joins the context, they write the next user turn, and a new comparison is generated,
up to the batch's turn limit. Each continuation is a new conversation (a copy of the context
plus the new turns), so dialogues that fork never rewrite each other's history.
"""

from __future__ import annotations

from django.db import transaction

from annotation_app.errors import Conflict, InvalidInput, NotFound
from annotation_app.models import Assignment, Batch, Comparison, Conversation, Turn
from annotation_app.services.assignment import batches_open_to, create_lease
from annotation_app.services.generation import request_generation

MAX_TURN_CHARS = 10_000

# Llama 2's safety taxonomy (section 3.2.2 and appendix A.5.2).
RISK_CATEGORIES = [
    ("illicit_and_criminal_activities", "Illicit and criminal activities"),
    ("hateful_and_harmful_activities", "Hateful and harmful activities"),
    ("unqualified_advice", "Unqualified advice"),
]
ATTACK_VECTORS = [
    ("psychological_manipulation", "Psychological manipulation"),
    ("logic_manipulation", "Logic manipulation"),
    ("syntactic_manipulation", "Syntactic manipulation"),
    ("semantic_manipulation", "Semantic manipulation"),
    ("perspective_manipulation", "Perspective manipulation"),
    ("non_english", "Non-English language"),
    ("other", "Other"),
]


def _check_text(text: str, field: str) -> str:
    text = text.strip()
    if not text:
        raise InvalidInput("write something first", field)
    if len(text) > MAX_TURN_CHARS:
        raise InvalidInput(f"limited to {MAX_TURN_CHARS} characters", field)
    return text


def _new_comparison(
    batch: Batch,
    author,
    turns: list[dict],
    *,
    risk_category: str = "",
    attack_vector: str = "",
    parent: Comparison | None = None,
) -> Assignment:
    conversation = Conversation.objects.create(
        batch=batch,
        risk_category=risk_category,
        attack_vector=attack_vector,
        source=f"written by {author.username}",
        created_by=author,
    )
    Turn.objects.bulk_create(
        Turn(conversation=conversation, index=index, role=turn["role"], content=turn["content"])
        for index, turn in enumerate(turns)
    )
    comparison = Comparison.objects.create(
        batch=batch,
        conversation=conversation,
        context_length=len(turns),
        parent=parent,
        status=Comparison.Status.WAITING,
    )
    # The author compares the responses to their own prompt: reserve one slot for them now.
    assignment = create_lease(comparison, author)
    request_generation([comparison])
    return assignment


def write_prompt(
    annotator, batch: Batch, text: str, *, risk_category: str = "", attack_vector: str = ""
) -> Assignment:
    """Start a dialogue with the annotator's own prompt; returns their lease on it."""
    if not batches_open_to(annotator).filter(pk=batch.pk).exists():
        raise NotFound(f"batch {batch.pk} is not open to you")
    if not batch.allow_annotator_prompts:
        raise Conflict(f"batch {batch.name!r} does not take prompts written by annotators")
    text = _check_text(text, "prompt")
    if batch.is_safety:
        if risk_category not in dict(RISK_CATEGORIES):
            raise InvalidInput("choose a risk category", "risk_category")
        if attack_vector not in dict(ATTACK_VECTORS):
            raise InvalidInput("choose an attack vector", "attack_vector")
    with transaction.atomic():
        return _new_comparison(
            batch,
            annotator,
            [{"role": "user", "content": text}],
            risk_category=risk_category if batch.is_safety else "",
            attack_vector=attack_vector if batch.is_safety else "",
        )


def user_turns(comparison: Comparison) -> int:
    return sum(1 for message in comparison.context_messages() if message["role"] == "user")


def can_continue(assignment: Assignment) -> bool:
    """Whether the annotator may write a next turn after this submitted comparison."""
    comparison = assignment.comparison
    return (
        assignment.status == Assignment.Status.SUBMITTED
        and comparison.conversation.created_by_id == assignment.annotator_id
        and comparison.batch.status == Batch.Status.ACTIVE
        and user_turns(comparison) < comparison.batch.max_turns
    )


def continue_dialogue(annotator, assignment_id: int, text: str) -> Assignment:
    """Continue a dialogue with the chosen reply and the annotator's next turn."""
    try:
        assignment = Assignment.objects.select_related(
            "comparison__batch", "comparison__conversation", "annotation"
        ).get(pk=assignment_id, annotator=annotator)
    except Assignment.DoesNotExist:
        raise NotFound(f"assignment {assignment_id} does not exist") from None
    if not can_continue(assignment):
        raise Conflict(
            "this dialogue cannot be continued (not yours, not annotated yet, "
            "batch closed, or its turn limit reached)"
        )
    text = _check_text(text, "text")
    comparison = assignment.comparison
    chosen = comparison.responses.get(slot=assignment.annotation.preferred_slot)
    turns = [
        *comparison.context_messages(),
        {"role": "assistant", "content": chosen.text},
        {"role": "user", "content": text},
    ]
    conversation = comparison.conversation
    with transaction.atomic():
        return _new_comparison(
            comparison.batch,
            annotator,
            turns,
            risk_category=conversation.risk_category,
            attack_vector=conversation.attack_vector,
            parent=comparison,
        )
