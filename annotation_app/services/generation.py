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
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterable

from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.db.models import Count

from annotation_app.errors import Conflict, InvalidInput
from annotation_app.models import Batch, Comparison, ModelVersion, Response
from annotation_app.services.registry import current_version, promote, register_model

logger = logging.getLogger(__name__)

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
        existing = ModelVersion.objects.filter(
            role=ModelVersion.Role.POLICY, path=settings.PAIRWISE_POLICY
        ).first()
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


def request_generation(comparisons: Iterable[Comparison]) -> int:
    """Queue generation for every empty slot of ``comparisons``; returns the request count.

    The tasks are sent once the surrounding transaction commits. Without a usable plan or
    policy the comparisons are marked failed at once, with the reason.
    """
    comparisons = list(
        Comparison.objects.filter(pk__in=[c.pk for c in comparisons])
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
    for chunk in chunks:
        transaction.on_commit(lambda chunk=chunk: dispatch_generation(chunk))
    return len(requests)


def dispatch_generation(requests: list[dict]) -> None:
    """Send one generation task and its storing callback.

    With a broker, a worker on the ``generation`` queue runs it. Without one (the embedded
    demo), it runs in a background thread of this process, so that pages stay responsive.
    """
    from annotation_app.tasks import store_generated_responses
    from model_worker.tasks import generate_responses

    work = generate_responses.s(requests) | store_generated_responses.s()
    if not generate_responses.app.conf.task_always_eager or not settings.PAIRWISE_EAGER_IN_THREAD:
        work.apply_async()
        return

    def run() -> None:
        close_old_connections()
        try:
            work.apply()
        except Exception:  # the eager task already stored failures; log anything else
            logger.exception("in-process generation failed")
        finally:
            connections.close_all()

    threading.Thread(target=run, name="pairwise-generation", daemon=True).start()


def store_results(results: list[dict]) -> dict[str, int]:
    """Store what a worker generated; idempotent. Returns counts of received and failed slots."""
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
            )
            for r in results
            if not r.get("error")
        ],
        ignore_conflicts=True,  # a slot filled by an earlier run stays as it was
    )
    ids = {r["comparison"] for r in results}
    with transaction.atomic():
        comparisons = list(Comparison.objects.select_for_update().filter(pk__in=ids))
        response_counts = dict(
            Response.objects.filter(comparison_id__in=ids)
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
    return {"received": len(results) - len(errors), "failed": len(errors)}


def mark_failed(comparison_ids: list[int], error: str) -> None:
    Comparison.objects.filter(pk__in=comparison_ids).exclude(
        status__in=[Comparison.Status.READY, Comparison.Status.COMPLETE]
    ).update(status=Comparison.Status.FAILED, generation_error=error)


def retry_failed(
    batch: Batch | None = None, comparisons: Iterable[Comparison] | None = None
) -> int:
    """Queue generation again for failed comparisons (of a batch, or the given ones)."""
    failed = Comparison.objects.filter(status=Comparison.Status.FAILED)
    if batch is not None:
        failed = failed.filter(batch=batch)
    if comparisons is not None:
        failed = failed.filter(pk__in=[c.pk for c in comparisons])
    with transaction.atomic():
        return request_generation(list(failed))
