"""Asking the model workers for responses, and storing what they send back.

Llama 2's protocol: the two responses of a comparison come from policy variants sampled with
different parameters (temperature, say). A batch's ``sampling_plan`` says what each side uses:

    {"sides": [{"model_version": "policy-v3", "temperature": 0.7, "top_p": 0.9,
                "max_new_tokens": 256},
               {"temperature": 1.0}]}

A side without ``model_version`` uses the current policy. Requests carry everything a worker
needs (model path, messages, parameters, and a seed drawn here), so that the worker never reads
the database and a redelivered task regenerates the very same text. Storing is idempotent: a
response slot, once filled, is never written again, so a task run twice leaves two responses.

Requests go through the outbox (``services/outbox.py``): recorded with the comparisons they are
for, sent once the transaction commits, and sent again while unanswered, so that neither a broker
outage nor a lost worker leaves a comparison waiting for ever.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q

from annotation_app.errors import Conflict, InvalidInput
from annotation_app.models import Batch, Comparison, ModelVersion, OutboxMessage, Response
from annotation_app.services import outbox
from annotation_app.services.generation_errors import mark_failed
from annotation_app.services.registry import (
    current_version,
    promote,
    register_model,
    registered_version,
)

DEFAULT_SIDES = [
    {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256},
    {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 256},
]
SIDE_KEYS = {"model_version", "temperature", "top_p", "max_new_tokens"}
# Responses generated per worker task: large enough to batch well, small enough to retry.
REQUESTS_PER_TASK = 64


def validate_sampling_plan(plan: dict) -> list[dict]:
    """The two sides of a plan, checked; errors name the field, e.g. ``sides[1].top_p``."""
    if not plan:
        return DEFAULT_SIDES
    if not isinstance(plan, dict) or not isinstance(plan.get("sides"), list):
        raise InvalidInput('must be {"sides": [side, side]}', "sampling_plan")
    sides = plan["sides"]
    if len(sides) != 2:
        raise InvalidInput("must list exactly two sides", "sampling_plan.sides")
    checked = []
    for index, side in enumerate(sides):
        where = f"sampling_plan.sides[{index}]"
        if not isinstance(side, dict) or set(side) - SIDE_KEYS:
            raise InvalidInput(f"an object with keys among {sorted(SIDE_KEYS)}", where)
        merged = {**DEFAULT_SIDES[index], **side}
        if not isinstance(merged["temperature"], int | float) or merged["temperature"] < 0:
            raise InvalidInput("must be a number ≥ 0", f"{where}.temperature")
        if not isinstance(merged["top_p"], int | float) or not 0 < merged["top_p"] <= 1:
            raise InvalidInput("must be in (0, 1]", f"{where}.top_p")
        tokens = merged["max_new_tokens"]
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= 8192:
            raise InvalidInput("must be an integer from 1 to 8192", f"{where}.max_new_tokens")
        name = merged.get("model_version")
        if (
            name is not None
            and not ModelVersion.objects.filter(name=name, role=ModelVersion.Role.POLICY).exists()
        ):
            raise InvalidInput(f"no policy model version named {name!r}", f"{where}.model_version")
        checked.append(merged)
    return checked


def default_policy() -> ModelVersion | None:
    """The current policy; registers ``settings.PAIRWISE_POLICY`` first if none is current."""
    policy = current_version(ModelVersion.Role.POLICY)
    if policy is None and settings.PAIRWISE_POLICY:
        existing = registered_version(settings.PAIRWISE_POLICY, ModelVersion.Role.POLICY)
        if existing is not None:
            return promote(existing)
        policy = register_model(
            settings.PAIRWISE_POLICY,
            ModelVersion.Role.POLICY,
            name="policy (PAIRWISE_POLICY)",
            make_current=True,
        )
    return policy


def _side_models(sides: list[dict]) -> list[ModelVersion]:
    models = []
    for side in sides:
        if side.get("model_version"):
            models.append(ModelVersion.objects.get(name=side["model_version"]))
            continue
        policy = default_policy()
        if policy is None:
            raise Conflict(
                "no current policy model: register one with `python manage.py register_model "
                "--role policy --current PATH`, or set PAIRWISE_POLICY"
            )
        models.append(policy)
    return models


def generation_requests(comparisons: Iterable[Comparison]) -> list[dict]:
    """One request per empty response slot, with a fresh seed each."""
    requests = []
    plans: dict[int, tuple[list[dict], list[ModelVersion]]] = {}
    for comparison in comparisons:
        batch = comparison.batch
        if batch.pk not in plans:
            sides = validate_sampling_plan(batch.sampling_plan)
            plans[batch.pk] = (sides, _side_models(sides))
        sides, models = plans[batch.pk]
        filled = {response.slot for response in comparison.responses.all()}
        messages = comparison.context_messages()
        for slot, (side, model) in enumerate(zip(sides, models, strict=True), start=1):
            if slot in filled:
                continue
            requests.append(
                {
                    "comparison": comparison.pk,
                    "slot": slot,
                    "model_version": model.pk,
                    "model_path": model.path,
                    "messages": messages,
                    "params": {
                        "temperature": float(side["temperature"]),
                        "top_p": float(side["top_p"]),
                        "max_new_tokens": side["max_new_tokens"],
                        "seed": random.randrange(2**31),
                    },
                }
            )
    return requests


def _unanswered_comparison_ids():
    """The comparisons an unanswered generation message asks responses for (a subquery)."""
    links = OutboxMessage.comparisons.through.objects
    return links.filter(outboxmessage__done_at__isnull=True).values("comparison_id")


def request_generation(comparisons: Iterable[Comparison]) -> int:
    """Ask for every empty slot of ``comparisons``; returns the request count.

    The requests are recorded in the outbox in the caller's transaction and sent once it
    commits; comparisons that an unanswered message already asks for are left to it. Without a
    usable plan or policy the comparisons are marked failed at once, with the reason.
    """
    comparisons = list(
        Comparison.objects.filter(pk__in=[c.pk for c in comparisons])
        .exclude(pk__in=_unanswered_comparison_ids())
        .select_related("batch", "conversation")
        .prefetch_related("responses", "conversation__turns")
    )
    try:
        requests = generation_requests(comparisons)
    except (Conflict, InvalidInput) as error:
        mark_failed([c.pk for c in comparisons], str(error))
        return 0
    waiting = [c.pk for c in comparisons if c.responses.count() < 2]
    Comparison.objects.filter(pk__in=waiting).update(
        status=Comparison.Status.WAITING, generation_error=""
    )
    chunks = [
        requests[i : i + REQUESTS_PER_TASK] for i in range(0, len(requests), REQUESTS_PER_TASK)
    ]
    if chunks:
        outbox.enqueue(
            OutboxMessage.Kind.GENERATION,
            [{"requests": chunk} for chunk in chunks],
            [sorted({request["comparison"] for request in chunk}) for chunk in chunks],
        )
    return len(requests)


def store_results(results: list[dict], outbox_id: int | None = None) -> dict[str, int]:
    """Store what a worker generated and mark its outbox message answered; idempotent.

    Results for comparisons deleted meanwhile (with their batch) are dropped. Returns counts of
    received and failed slots.
    """
    ids = {r["comparison"] for r in results}
    existing = set(Comparison.objects.filter(pk__in=ids).values_list("pk", flat=True))
    results = [r for r in results if r["comparison"] in existing]
    errors = {r["comparison"]: r["error"] for r in results if r.get("error")}
    Response.objects.bulk_create(
        [
            Response(
                comparison_id=r["comparison"],
                slot=r["slot"],
                text=r["text"],
                source=Response.Source.MODEL,
                model_version_id=r["model_version"],
                sampling_params={k: v for k, v in r["params"].items() if k != "seed"},
                seed=r["seed"],
                prompt_tokens=r["prompt_tokens"],
                completion_tokens=r["completion_tokens"],
                latency_ms=r["latency_ms"],
                finish_reason=r.get("finish_reason", ""),
                prompt_tokens_dropped=r.get("prompt_tokens_dropped", 0),
            )
            for r in results
            if not r.get("error")
        ],
        ignore_conflicts=True,  # a slot filled by an earlier run stays as it was
    )
    with transaction.atomic():
        comparisons = list(Comparison.objects.select_for_update().filter(pk__in=existing))
        response_counts = dict(
            Response.objects.filter(comparison_id__in=existing)
            .values_list("comparison_id")
            .annotate(count=Count("id"))
            .order_by()
        )
        for comparison in comparisons:
            if response_counts.get(comparison.pk, 0) == 2:
                if comparison.status in (Comparison.Status.WAITING, Comparison.Status.FAILED):
                    comparison.status = Comparison.Status.READY
                    comparison.generation_error = ""
                    comparison.save(update_fields=["status", "generation_error"])
            elif comparison.pk in errors:
                comparison.status = Comparison.Status.FAILED
                comparison.generation_error = errors[comparison.pk]
                comparison.save(update_fields=["status", "generation_error"])
        outbox.mark_done(outbox_id)
    failed = sum(1 for r in results if r.get("error"))
    return {"received": len(results) - failed, "failed": failed}


def retry_unfinished_generation(
    batch: Batch | None = None, comparisons: Iterable[Comparison] | None = None
) -> int:
    """Ask again for what failed or still waits (in a batch, or among the given comparisons).

    Failed comparisons get new requests. Waiting ones (in active batches) get their unanswered
    message sent again now, without waiting for its timeout: a broker restart may have lost it,
    and a copy answered twice changes nothing; waiting ones with no such message (stranded
    before the outbox existed) get new requests. Returns the number of responses asked for.
    """
    scope = Comparison.objects.filter(
        Q(status=Comparison.Status.FAILED)
        | Q(status=Comparison.Status.WAITING, batch__status=Batch.Status.ACTIVE)
    )
    if batch is not None:
        scope = scope.filter(batch=batch)
    if comparisons is not None:
        scope = scope.filter(pk__in=[c.pk for c in comparisons])
    with transaction.atomic():
        covered = scope.filter(pk__in=_unanswered_comparison_ids())
        outbox.send_again(
            OutboxMessage.objects.filter(
                kind=OutboxMessage.Kind.GENERATION, comparisons__in=covered
            ).distinct()
        )
        empty_slots = 2 * covered.count() - Response.objects.filter(comparison__in=covered).count()
        return empty_slots + request_generation(list(scope))
