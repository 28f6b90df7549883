"""Generation by real Celery workers consuming from Redis, with a tiny Llama built here."""

from __future__ import annotations

import io
import os
import signal
from collections import Counter

import pytest

from annotation_app.models import Batch, Comparison, Response
from annotation_app.services.assignment import next_assignment
from annotation_app.services.batches import activate_batch
from annotation_app.services.generation import generation_requests
from annotation_app.services.imports import import_comparisons
from annotation_app.tasks import store_generated_responses
from model_worker.tasks import generate_responses
from tests.conftest import FAST_PLAN, prompt_lines
from tests.workers import (
    SCRATCH_REDIS_URL,
    _flushed,
    app_using,
    start_worker,
    stop,
    wait_for,
    wait_until_answering,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def draft_batch(prompts: int, name: str = "generated") -> Batch:
    batch = Batch.objects.create(name=name, kind="helpfulness", sampling_plan=FAST_PLAN)
    import_comparisons(batch, io.BytesIO(prompt_lines(prompts)), "prompts.jsonl")
    return batch


def all_ready(batch: Batch) -> bool:
    return not batch.comparisons.exclude(status=Comparison.Status.READY).exists()


def test_activating_a_batch_generates_every_comparison(
    celery_worker_process, tiny_policy, annotator
):
    batch = draft_batch(6)
    assert set(batch.comparisons.values_list("status", flat=True)) == {"waiting"}
    assert next_assignment(annotator) is None
    activate_batch(batch)
    wait_for(lambda: all_ready(batch), message="not every comparison was generated")

    responses = Response.objects.filter(comparison__batch=batch)
    assert Counter(responses.values_list("comparison_id", flat=True)) == {
        c: 2 for c in batch.comparisons.values_list("id", flat=True)
    }
    for response in responses:
        assert response.source == Response.Source.MODEL
        assert response.model_version_id == tiny_policy.pk
        side = FAST_PLAN["sides"][response.slot - 1]
        assert response.sampling_params["temperature"] == side["temperature"]
        assert response.seed is not None
        assert 1 <= response.completion_tokens <= side["max_new_tokens"]
        assert response.prompt_tokens > 0 and response.latency_ms >= 0
    assert next_assignment(annotator) is not None  # ready comparisons are assignable


def test_a_task_run_twice_leaves_exactly_two_responses(celery_worker_process, tiny_policy):
    batch = draft_batch(2, name="twice")
    requests = generation_requests(batch.comparisons.all())
    assert len(requests) == 4
    first = (generate_responses.s(requests) | store_generated_responses.s()).apply_async()
    assert first.get(timeout=60) == {"received": 4, "failed": 0}
    texts = dict(Response.objects.values_list("id", "text"))
    again = (generate_responses.s(requests) | store_generated_responses.s()).apply_async()
    assert again.get(timeout=60) == {"received": 4, "failed": 0}
    assert dict(Response.objects.values_list("id", "text")) == texts  # nothing overwritten
    assert Response.objects.count() == 4
    assert all_ready(batch)


def test_a_worker_killed_mid_task_leads_to_redelivery(tiny_policy, tmp_path):
    broker = _flushed(SCRATCH_REDIS_URL)
    started = tmp_path / "started"
    # Unacknowledged messages come back after 3 s, and workers look for them every second.
    redelivery = {
        "visibility_timeout": 3,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
    with app_using(broker) as app:
        stalling = start_worker(
            broker,
            module="tests.integration.slow_celery",
            name="stalling",
            transport_options=redelivery,
            extra_env={"PAIRWISE_TEST_STARTED_FILE": str(started)},
        )
        try:
            wait_until_answering(app, stalling)
            batch = draft_batch(2, name="killed")
            activate_batch(batch)
            wait_for(started.exists, timeout=60, message="the worker never started the task")
            os.kill(stalling.pid, signal.SIGKILL)
            stalling.wait(timeout=10)
        finally:
            stop(stalling)
        assert Response.objects.count() == 0

        fresh = start_worker(broker, name="fresh", transport_options=redelivery)
        try:
            wait_for(
                lambda: all_ready(batch),
                timeout=120,
                message="the killed worker's task was not delivered again",
            )
        finally:
            stop(fresh)
    assert Counter(Response.objects.values_list("comparison_id", flat=True)) == {
        c: 2 for c in batch.comparisons.values_list("id", flat=True)
    }
