"""A generation worker given a hub id it cannot reach fails the work at once (issue 9).

Before, every file download waited for its own timeout and the task was retried three times:
minutes of a worker held for nothing. Now one short request to the hub decides, and the
failure (not worth retrying) is reported on the comparisons straight away.
"""

from __future__ import annotations

import io
import time

import pytest

from annotation_app.models import Batch, Comparison, ModelVersion
from annotation_app.services.batches import activate_batch
from annotation_app.services.imports import import_comparisons
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


def test_a_worker_fails_fast_on_a_hub_it_cannot_reach(fake_hub, tmp_path):
    fake_hub.hang = True  # a network that drops packets: nothing ever answers
    ModelVersion.objects.create(name="far", role="policy", path="org/far-away", is_current=True)
    batch = Batch.objects.create(name="hub", kind="helpfulness", sampling_plan=FAST_PLAN)
    import_comparisons(batch, io.BytesIO(prompt_lines(2)), "prompts.jsonl")
    broker = _flushed(SCRATCH_REDIS_URL)
    environment = {
        "HF_ENDPOINT": fake_hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),  # an empty cache: the hub must be asked
        "HF_HUB_OFFLINE": "0",
        "PAIRWISE_HUB_TIMEOUT_SECONDS": "1",
    }
    with app_using(broker) as app:
        worker = start_worker(broker, name="hub", extra_env=environment)
        try:
            wait_until_answering(app, worker)
            began = time.monotonic()
            activate_batch(batch)
            wait_for(
                lambda: not batch.comparisons.exclude(status=Comparison.Status.FAILED).exists(),
                timeout=60,
                message="the comparisons did not fail",
            )
            elapsed = time.monotonic() - began
        finally:
            stop(worker)
            _flushed(broker)
    # Three retries would add 2 + 4 + 8 s of backoff to a timed-out check each time.
    assert elapsed < 12, f"took {elapsed:.1f} s"
    assert any(path.startswith("/api/models/org/far-away") for path in fake_hub.requests)
    for error in batch.comparisons.values_list("generation_error", flat=True):
        assert "cannot reach the Hugging Face hub to check org/far-away" in error
