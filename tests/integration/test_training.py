"""Retraining the reward models from the platform: the service, the API, the pages, the worker.

The fast tests run a run's job in this process with a stand-in trainer (``tests/training_jobs.py``:
what the platform and the job do around training: data snapshot, spec, evaluation before
training, events mirrored, registration, failures); the slow ones send real runs of a tiny Llama
through the queues to the session's Celery worker, which launches them with accelerate.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from annotation_app.errors import InvalidInput
from annotation_app.models import Batch, ModelVersion, TrainingRun
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.assignment import next_assignment
from annotation_app.services.exports import export_lines
from annotation_app.services.imports import import_comparisons
from annotation_app.services.registry import current_version, register_model
from annotation_app.services.training import lifecycle, start
from rlhf.reward.config import RewardTrainingConfig
from tests.api_errors import error_fields
from tests.training_jobs import FakeTrainer, run_in_process
from tests.workers import wait_for

DEFAULT_LR = RewardTrainingConfig.__dataclass_fields__["learning_rate"].default
STRENGTHS = ["significantly_better", "better", "slightly_better", "negligibly_better"]
# Small and quick: a few steps of a few pairs, short texts.
TINY_CONFIG = {
    "max_length": 64,
    "max_steps": 3,
    "micro_batch_size": 4,
    "eval_fraction": 0.3,
    "learning_rate": 1e-4,
    "mixed_precision": "no",
}


def annotate_batch(batch: Batch, user, *, safety: list[tuple] | None = None) -> int:
    """Annotate every ready comparison of ``batch`` (strengths in turn); returns the count."""
    count = 0
    while (lease := next_assignment(user, batch=batch)) is not None:
        a_safe, b_safe = safety[count % len(safety)] if safety else (None, None)
        judgement = Judgement("A", STRENGTHS[count % 4], a_safe=a_safe, b_safe=b_safe)
        submit_annotation(user, lease.pk, judgement, uuid.uuid4())
        count += 1
    return count


def trl_lines(count: int, prefix: str = "Imported") -> bytes:
    return "".join(
        json.dumps(
            {
                "prompt": [{"role": "user", "content": f"{prefix} question {i}?"}],
                "chosen": [{"role": "assistant", "content": f"A helpful answer to {i}."}],
                "rejected": [{"role": "assistant", "content": f"Go away, {i}."}],
            }
        )
        + "\n"
        for i in range(count)
    ).encode()


def imported_batch(count: int, name: str = "imported dataset", kind: str = "helpfulness"):
    batch = Batch.objects.create(name=name, kind=kind)
    import_comparisons(batch, io.BytesIO(trl_lines(count, prefix=name)), "pairs.jsonl")
    return batch


@pytest.fixture
def annotated_batch(make_batch, annotator):
    batch = make_batch(comparisons=8, name="week 1")
    assert annotate_batch(batch, annotator) == 8
    return batch


@pytest.fixture
def policy(db):
    return ModelVersion.objects.create(
        name="policy-v1", role="policy", path="org/policy-v1", is_current=True
    )


# --- what can be trained on ---------------------------------------------------------------------


@pytest.mark.django_db
def test_imported_preferences_become_unrated_training_pairs(make_batch, annotator):
    dataset = imported_batch(3)
    records = [json.loads(line) for line in export_lines("trl", [dataset])]
    assert records == []  # the plain export is one line per annotation
    records = [
        json.loads(line)
        for line in export_lines("trl", [dataset], include_reference_preferences=True)
    ]
    assert len(records) == 3
    for record in records:
        assert record["chosen"][0]["content"].startswith("A helpful answer")
        assert record["rejected"][0]["content"].startswith("Go away")
        assert record["strength"] is None and record["margin"] == 0.0
        assert record["batch"] == dataset.name and record["batch_kind"] == "helpfulness"
    # Once annotated, a comparison is exported from its annotations only.
    dataset.status = Batch.Status.ACTIVE
    dataset.save()
    lease = next_assignment(annotator, batch=dataset)
    submit_annotation(annotator, lease.pk, Judgement("A", "better"), uuid.uuid4())
    records = [
        json.loads(line)
        for line in export_lines("trl", [dataset], include_reference_preferences=True)
    ]
    assert len(records) == 3
    assert sorted(str(r["strength"]) for r in records) == ["None", "None", "better"]


@pytest.mark.django_db
def test_exportable_pair_counts_follow_the_training_export(make_batch, annotator):
    helpful = make_batch(comparisons=4)
    annotate_batch(helpful, annotator)
    safety = make_batch("safety", comparisons=4)
    # A is chosen: (unsafe, safe) is dropped by the paper's rule, every other pair is kept.
    annotate_batch(safety, annotator, safety=[(False, True), (True, False)])
    dataset = imported_batch(5)
    empty = make_batch(comparisons=2)
    counts = start.exportable_pair_counts()
    assert counts.get(helpful.pk) == 4
    assert counts.get(safety.pk) == 2
    assert counts.get(dataset.pk) == 5
    assert counts.get(empty.pk, 0) == 0
    for batch in (helpful, safety, dataset):
        lines = list(export_lines("trl", [batch], include_reference_preferences=True))
        assert len(lines) == counts[batch.pk]


def test_the_form_offers_the_settings_the_config_declares_for_forms():
    from dataclasses import fields

    from annotation_app.forms import TrainingForm

    declared = {f.name for f in fields(RewardTrainingConfig) if f.metadata.get("form")}
    shown = TrainingForm().settings_shown()
    assert {item["hp"].name for item in shown} == declared
    assert set(start.RUN_KEYS) <= {f.name for f in fields(RewardTrainingConfig)}
    values = {item["hp"].name: item["value"] for item in shown}
    assert values["learning_rate"] == repr(DEFAULT_LR) and values["margin_table"] == "small"
    assert values["max_steps"] == ""  # no limit
    # Basic settings first: the page shows the advanced ones under "More settings".
    advanced = [item["advanced"] for item in shown]
    assert advanced == sorted(advanced) and any(advanced) and not all(advanced)


def test_charts_escape_their_labels_and_skip_missing_values():
    from annotation_app import charts

    svg = charts.bar_chart(
        [("<b>x</b>", 0.5, "n=2"), ("none", None, "n=0")], title="t & u", y_label="acc"
    )
    assert "<b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg and "t &amp; u" in svg
    assert svg.count("<rect") == 1
    line = charts.line_chart(
        [(1, 0.7), (2, float("nan")), (3, 0.5)], title="loss", x_label="s", y_label="l"
    )
    assert line.count(" L") == 1  # the NaN point is left out
    assert charts.line_chart([], title="x", x_label="", y_label="") == ""


# --- starting a run -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_api_queues_a_run_with_the_current_policy_as_base(
    annotated_batch, policy, ml_staff, api_client, django_capture_on_commit_callbacks
):
    api_client.force_login(ml_staff)
    dataset = imported_batch(4)
    with django_capture_on_commit_callbacks() as callbacks:
        response = api_client.post(
            "/api/v1/training-runs/",
            {"kind": "helpfulness", "batches": [annotated_batch.pk, dataset.pk], "config": {}},
            format="json",
        )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued" and body["kind"] == "reward_helpfulness"
    assert body["base_model"] == policy.name
    assert {b["id"] for b in body["batches"]} == {annotated_batch.pk, dataset.pk}
    assert body["config"]["base_model"] == policy.path
    assert body["config"]["learning_rate"] == DEFAULT_LR  # the library's default
    assert len(callbacks) == 1  # sent to the training queue once committed
    run = TrainingRun.objects.get()
    assert run.created_by == ml_staff
    listing = api_client.get("/api/v1/training-runs/").json()
    assert [r["id"] for r in listing["results"]] == [run.pk]
    assert "logs" not in listing["results"][0]
    status = api_client.get(f"/api/v1/training-runs/{run.pk}/status/").json()
    assert status["status"] == "queued" and status["progress"] == 0.0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"config": {"learning_rate": -1}}, "config.learning_rate"),
        ({"config": {"max_length": "long"}}, "config.max_length"),
        ({"config": {"learnin_rate": 1e-5}}, "config.learnin_rate"),
        ({"config": {"kind": "safety"}}, "config.kind"),
        ({"config": {"margin_table": "huge"}}, "config.margin_table"),
        ({"kind": "honesty"}, "kind"),
        ({"batches": []}, "batches"),
    ],
)
def test_a_bad_request_is_refused_naming_the_field_and_creates_nothing(
    annotated_batch, policy, ml_staff, api_client, body, field
):
    api_client.force_login(ml_staff)
    request = {"kind": "helpfulness", "batches": [annotated_batch.pk], **body}
    response = api_client.post("/api/v1/training-runs/", request, format="json")
    assert response.status_code == 400, response.content
    assert field in json.dumps(response.json())
    assert TrainingRun.objects.count() == 0


@pytest.mark.django_db
def test_a_base_model_of_the_other_kind_or_empty_batches_are_refused(
    annotated_batch, make_batch, policy, ml_staff, api_client
):
    api_client.force_login(ml_staff)
    safety_model = ModelVersion.objects.create(name="rm-s", role="reward_safety", path="org/rm-s")
    response = api_client.post(
        "/api/v1/training-runs/",
        {"kind": "helpfulness", "batches": [annotated_batch.pk], "base_model": safety_model.pk},
        format="json",
    )
    assert response.status_code == 400
    assert error_fields(response) == {"base_model"}
    empty = make_batch(comparisons=2)
    response = api_client.post(
        "/api/v1/training-runs/", {"kind": "safety", "batches": [empty.pk]}, format="json"
    )
    assert response.status_code == 400
    assert error_fields(response) == {"batches"}
    assert "no preference pairs" in response.json()["detail"]
    assert TrainingRun.objects.count() == 0


@pytest.mark.django_db
def test_without_a_current_policy_a_base_model_must_be_chosen(annotated_batch, ml_staff, settings):
    settings.PAIRWISE_POLICY = ""
    with pytest.raises(InvalidInput) as refused:
        start.start_reward_training(ml_staff, "helpfulness", [annotated_batch])
    assert refused.value.field == "base_model"


@pytest.mark.django_db
def test_a_bad_config_registers_no_default_policy_either(
    annotated_batch, ml_staff, settings, fake_hub
):
    settings.PAIRWISE_POLICY = "org/env-policy"  # registered on first use as the default base
    fake_hub.models.add("org/env-policy")  # registering a hub id asks the hub (a local one)
    with pytest.raises(InvalidInput):
        start.start_reward_training(
            ml_staff, "helpfulness", [annotated_batch], config={"epochs": 0}
        )
    assert not ModelVersion.objects.exists() and not TrainingRun.objects.exists()
    run = start.start_reward_training(ml_staff, "helpfulness", [annotated_batch])
    assert run.base_model.path == "org/env-policy" and run.base_model.is_current


# --- doing a run (in this process, with a stand-in trainer) -------------------------------------


@pytest.fixture
def fake_trainer(monkeypatch, settings, tmp_path):
    settings.PAIRWISE_TRAINING_DIR = tmp_path / "training"
    trainer = FakeTrainer()
    monkeypatch.setattr("rlhf.reward.training.train_reward_model", trainer)
    return trainer


@pytest.mark.django_db
def test_a_run_freezes_its_data_trains_and_registers_a_version_not_current(
    annotated_batch, policy, ml_staff, fake_trainer
):
    dataset = imported_batch(6)
    run = start.start_reward_training(
        ml_staff, "helpfulness", [annotated_batch, dataset], config={"eval_fraction": 0.25}
    )
    assert run_in_process(run.pk) == "succeeded"
    run.refresh_from_db()
    assert run.status == "succeeded" and run.progress == 1.0
    assert run.started_at <= run.finished_at
    export = Path(run.export_path)
    assert export.is_file() and export.parent.parent == lifecycle.settings.PAIRWISE_TRAINING_DIR
    assert hashlib.sha256(export.read_bytes()).hexdigest() == run.export_sha256
    assert len(export.read_text().splitlines()) == 14  # 8 annotations + 6 imported pairs
    spec = json.loads((export.parent / "spec.json").read_text())
    assert spec["stage"] == "reward" and spec["resume"] is True
    assert spec["inputs"]["data"] == [{"path": str(export), "sha256": run.export_sha256}]
    config, train_pairs, eval_pairs = fake_trainer.calls[0]
    assert config.base_model == policy.path
    assert len(train_pairs) + len(eval_pairs) == 14 and eval_pairs
    assert (run.metrics["train_pairs"], run.metrics["eval_pairs"]) == (
        len(train_pairs),
        len(eval_pairs),
    )
    assert run.metrics["eval"]["accuracy"] == 0.75
    assert run.metrics["eval"]["loss"] is None  # NaN stored as null
    assert [row["step"] for row in run.metrics["history"]] == [1, 2, 3, 4]
    assert "before_training" not in run.metrics  # no current reward model yet
    assert "step 4/4" in run.logs and "loss 0.3000" in run.logs
    version = ModelVersion.objects.get(training_run=run)
    assert version.role == "reward_helpfulness" and not version.is_current
    assert version.parent == policy and version.path == str(export.parent / "model")
    assert version.metrics["accuracy"] == 0.75 and len(version.metrics["history"]) == 4
    assert current_version("reward_helpfulness") is None
    # Delivered again: the run is no longer queued, so nothing is trained twice.
    assert run_in_process(run.pk) == "skipped"
    assert len(fake_trainer.calls) == 1


@pytest.mark.django_db
def test_the_current_reward_model_is_evaluated_on_the_newest_batch_first(
    annotated_batch, make_batch, annotator, policy, ml_staff, fake_trainer, monkeypatch
):
    newest = make_batch(comparisons=4, name="week 2")
    annotate_batch(newest, annotator)
    current = ModelVersion.objects.create(
        name="rm-h-1", role="reward_helpfulness", path="/nonexistent/rm", is_current=True
    )
    seen = {}

    def fake_backbone(path):
        seen["path"] = path
        return object(), object()

    def fake_evaluate(model, tokenizer, pairs, *, batch_size, max_length):
        seen["batches"] = {pair.batch for pair in pairs}
        seen["calls_before_training"] = len(fake_trainer.calls)
        return {"pairs": len(pairs), "accuracy": 0.625, "by_strength": {}}

    monkeypatch.setattr("rlhf.reward.model.load_reward_backbone", fake_backbone)
    monkeypatch.setattr("rlhf.reward.evaluation.evaluate_reward_model", fake_evaluate)
    run = start.start_reward_training(ml_staff, "helpfulness", [newest, annotated_batch])
    run_in_process(run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert seen == {"path": current.path, "batches": {"week 2"}, "calls_before_training": 0}
    before = run.metrics["before_training"]
    assert before["model_version"] == {"id": current.pk, "name": "rm-h-1"}
    assert before["batch"] == "week 2" and before["pairs"] == 4
    assert before["metrics"]["accuracy"] == 0.625
    assert current_version("reward_helpfulness") == current  # not replaced by the new one


@pytest.mark.django_db
def test_a_current_model_that_cannot_be_evaluated_is_reported_not_fatal(
    annotated_batch, policy, ml_staff, fake_trainer
):
    ModelVersion.objects.create(
        name="rm-gone", role="reward_helpfulness", path="/nonexistent/rm", is_current=True
    )
    run = start.start_reward_training(ml_staff, "helpfulness", [annotated_batch])
    run_in_process(run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert run.metrics["before_training"]["error"]
    assert run.metrics["before_training"]["model_version"]["name"] == "rm-gone"
    assert "could not evaluate /nonexistent/rm" in run.logs


@pytest.mark.django_db
def test_a_failing_run_records_its_error_and_leaves_the_registry_alone(
    annotated_batch, policy, ml_staff, fake_trainer
):
    fake_trainer.fail = RuntimeError("CUDA out of memory (pretend)")
    current = ModelVersion.objects.create(
        name="rm-h-1", role="reward_helpfulness", path="/nonexistent/rm", is_current=True
    )
    versions = set(ModelVersion.objects.values_list("pk", flat=True))
    run = start.start_reward_training(ml_staff, "helpfulness", [annotated_batch])
    assert run_in_process(run.pk) == "failed"
    run.refresh_from_db()
    assert run.status == "failed" and run.finished_at is not None
    assert run.error == "RuntimeError: CUDA out of memory (pretend)"
    assert "Traceback" in run.logs and "step 4/4" in run.logs
    assert set(ModelVersion.objects.values_list("pk", flat=True)) == versions
    assert current_version("reward_helpfulness") == current


class LostWorker(BaseException):
    """What a killed worker leaves behind: no handler runs, the run stays "running"."""


@pytest.mark.django_db
def test_a_run_whose_worker_was_lost_is_taken_over_and_resumes_from_its_checkpoint(
    annotated_batch, tiny_policy, ml_staff, settings, tmp_path, monkeypatch
):
    from rlhf.jobs import EventLog

    settings.PAIRWISE_TRAINING_DIR = tmp_path / "training"
    config = {**TINY_CONFIG, "max_steps": 4, "checkpoint_every": 2}
    run = start.start_reward_training(ml_staff, "helpfulness", [annotated_batch], config=config)
    write = EventLog.write

    def worker_killed_at_step_3(log, event_type, **fields):
        write(log, event_type, **fields)
        if event_type == "step" and fields["step"] == 3:
            raise LostWorker

    monkeypatch.setattr(EventLog, "write", worker_killed_at_step_3)
    with pytest.raises(LostWorker):
        run_in_process(run.pk)
    monkeypatch.setattr(EventLog, "write", write)
    run.refresh_from_db()
    assert run.status == "running" and run.heartbeat_at is not None
    frozen = run.export_sha256

    # Delivered again while its heartbeat is fresh: a healthy run is left alone.
    assert run_in_process(run.pk) == "skipped"
    # Silent for longer than the stall limit: its worker is gone, the run is taken over.
    silent = timedelta(seconds=settings.PAIRWISE_TRAINING_STALL_SECONDS + 1)
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - silent)
    assert run_in_process(run.pk) == "succeeded"
    run.refresh_from_db()
    assert run.status == "succeeded" and run.export_sha256 == frozen
    assert "worker was lost" in run.logs and "is kept" in run.logs
    assert "at step 2 of 4" in run.logs  # the checkpoint of step 2, not a fresh start
    assert [row["step"] for row in run.metrics["history"]] == [1, 2, 3, 4]
    assert ModelVersion.objects.filter(training_run=run).count() == 1


@pytest.mark.django_db
def test_events_beat_and_a_silent_run_is_stalled(ml_staff):
    running = TrainingRun.objects.create(kind="reward_helpfulness", status="running")
    done = TrainingRun.objects.create(kind="reward_helpfulness", status="succeeded")
    assert lifecycle.record_events(running.pk, 0, []) == "applied"  # an empty batch beats
    running.refresh_from_db()
    assert running.heartbeat_at is not None and lifecycle.is_stalled(running) is False
    late = running.heartbeat_at + timedelta(
        seconds=lifecycle.settings.PAIRWISE_TRAINING_STALL_SECONDS + 1
    )
    assert lifecycle.is_stalled(running, now=late)
    assert lifecycle.record_events(done.pk, 0, []) == "ignored"
    done.refresh_from_db()
    assert done.heartbeat_at is None  # only a running run beats


def step_events(first: int, last: int, total: int) -> list[dict]:
    events = []
    for step in range(first, last + 1):
        events.append({"type": "step", "step": step, "total_steps": total, "loss": 0.5})
        events.append({"type": "progress", "fraction": step / total})
    return events


@pytest.mark.django_db
def test_events_are_mirrored_once_in_order_with_one_write_per_batch(
    annotated_batch, policy, ml_staff, monkeypatch
):
    run = start.start_reward_training(ml_staff, "helpfulness", [annotated_batch])
    TrainingRun.objects.filter(pk=run.pk).update(status="running")
    writes = []
    original = TrainingRun.objects.filter

    def counting_filter(*args, **kwargs):
        queryset = original(*args, **kwargs)
        update = queryset.update

        def counted(**changes):
            writes.append(changes)
            return update(**changes)

        queryset.update = counted
        return queryset

    monkeypatch.setattr(TrainingRun.objects, "filter", counting_filter)
    first, second = step_events(1, 50, 100), step_events(51, 100, 100)
    assert lifecycle.record_events(run.pk, len(first), second) == "early"  # the first is late
    assert lifecycle.record_events(run.pk, 0, first) == "applied"
    assert lifecycle.record_events(run.pk, 0, first) == "applied"  # sent twice: nothing new
    assert lifecycle.record_events(run.pk, len(first), second) == "applied"
    assert len(writes) == 3  # one write per batch, none for the refused early one
    run.refresh_from_db()
    assert run.events_mirrored == 200
    assert run.logs.count("\n") == 100 and "step 100/100" in run.logs
    assert run.logs.index("step 50/100") < run.logs.index("step 51/100")
    assert run.progress == pytest.approx(lifecycle.TRAINING_END)
    # A long run logs every n-th step only: the logs stay small, the history has every step.
    long = step_events(1, 100_000, 100_000)
    lifecycle.record_events(run.pk, 200, long)
    run.refresh_from_db()
    assert 100 + 500 <= run.logs.count("\n") <= 100 + 501
    assert "step 100000/100000" in run.logs


@pytest.mark.django_db
def test_a_run_that_cannot_be_queued_stays_queued_and_is_sent_later(
    annotated_batch,
    policy,
    ml_staff,
    monkeypatch,
    settings,
    django_capture_on_commit_callbacks,
    fake_trainer,
):
    from kombu.exceptions import OperationalError

    from annotation_app.models import OutboxMessage
    from annotation_app.services.outbox import NO_PUBLISH_RETRY as NO_RETRY
    from annotation_app.services.outbox import relay
    from annotation_app.tasks import start_training_run

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to redis:6379. Connection refused.")

    monkeypatch.setattr(start_training_run, "apply_async", broker_down)
    settings.PAIRWISE_EAGER_IN_THREAD = False  # sent with apply_async, as to a broker
    with django_capture_on_commit_callbacks(execute=True):
        run = start.start_reward_training(ml_staff, "helpfulness", [annotated_batch])
    run.refresh_from_db()
    assert run.status == "queued" and run.error == ""
    message = OutboxMessage.objects.get(kind="training")
    assert message.payload == {"run_id": run.pk}
    # The broker was down: not a send (attempts count sends), due again at once.
    assert message.sent_at is None and message.done_at is None and message.attempts == 0
    assert message.last_error.startswith("OperationalError: Error 111")

    sent = []
    monkeypatch.setattr(start_training_run, "apply_async", lambda *a, **k: sent.append((a, k)))
    assert relay() == 1  # the broker is back
    assert sent == [(((run.pk,), {"outbox_id": message.pk}), {"ignore_result": True, **NO_RETRY})]
    message.refresh_from_db()
    assert message.sent_at is not None and message.attempts == 1 and message.last_error == ""
    assert relay() == 0  # sent, and within its timeout: not sent again

    (args, kwargs), _options = sent[0]
    assert lifecycle.prepare(*args) is not None  # what start_training_run does first
    # The job's first events answer the message: it is never sent again.
    from annotation_app.tasks import record_training_events

    record_training_events.apply((0, []), {"run_id": run.pk, "outbox_id": message.pk}).get()
    message.refresh_from_db()
    assert message.done_at is not None
    assert OutboxMessage.objects.filter(done_at__isnull=True).count() == 0


# --- pages --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_training_page_offers_batches_with_pair_counts_and_paper_defaults(
    client, annotated_batch, policy, ml_staff
):
    imported_batch(5)
    client.force_login(ml_staff)
    page = client.get("/training/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-pairs="8"' in html and 'data-pairs="5"' in html
    assert f'<option value="{policy.pk}" selected>' in html
    assert f'name="learning_rate" id="hp-learning_rate" value="{DEFAULT_LR!r}"' in html
    assert 'name="eval_fraction" id="hp-eval_fraction" value="0.2"' in html
    assert "Reward models" in client.get("/").content.decode()


@pytest.mark.django_db
def test_starting_a_run_from_the_page(
    client, annotated_batch, policy, ml_staff, django_capture_on_commit_callbacks
):
    client.force_login(ml_staff)
    form = {
        "kind": "safety",
        "batches": [str(annotated_batch.pk)],
        "base_model": str(policy.pk),
        "learning_rate": "2e-5",
        "max_steps": "",
        "margin_table": "large",
    }
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post("/training/", form)
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/training/runs/{run.pk}/"
    assert len(callbacks) == 1
    assert run.kind == "reward_safety"
    assert run.config["learning_rate"] == 2e-5 and run.config["margin_table"] == "large"
    assert run.config["max_steps"] is None
    page = client.get(response["Location"])
    assert page.status_code == 200 and "Queued" in page.content.decode()


@pytest.mark.django_db
def test_a_bad_form_is_shown_again_with_the_field_named(client, annotated_batch, policy, ml_staff):
    client.force_login(ml_staff)
    response = client.post(
        "/training/",
        {"kind": "helpfulness", "batches": [str(annotated_batch.pk)], "learning_rate": "-3"},
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "config.learning_rate" in html
    assert 'value="-3"' in html
    assert TrainingRun.objects.count() == 0
    response = client.post(
        "/training/", {"kind": "helpfulness", "batches": [str(annotated_batch.pk)], "seed": "x"}
    )
    assert response.status_code == 400
    assert "Seed must be a whole number" in response.content.decode()
    missing = annotated_batch.pk + 1000
    response = client.post(
        "/training/", {"kind": "helpfulness", "batches": [str(annotated_batch.pk), str(missing)]}
    )
    assert response.status_code == 400
    assert f"no such batch: {missing}" in response.content.decode()
    assert TrainingRun.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["annotator", "batch_admin"])
def test_only_ml_staff_reach_the_training_pages(client, request, role, policy, annotated_batch):
    client.force_login(request.getfixturevalue(role))
    run = TrainingRun.objects.create(kind="reward_helpfulness")
    assert client.get("/training/").status_code == 403
    assert client.get(f"/training/runs/{run.pk}/").status_code == 403
    assert client.post("/training/", {"kind": "helpfulness"}).status_code == 403
    assert TrainingRun.objects.count() == 1


def succeeded_run(policy, batch) -> tuple[TrainingRun, ModelVersion]:
    run = TrainingRun.objects.create(
        kind="reward_helpfulness",
        status="succeeded",
        progress=1.0,
        base_model=policy,
        logs="[00:00:00] step 1/2 · loss 0.6931\n",
        metrics={
            "eval": {
                "pairs": 40,
                "accuracy": 0.675,
                "loss": 0.61,
                "ece": 0.042,
                "by_strength": {
                    "significantly_better": {"pairs": 10, "accuracy": 0.9},
                    "better": {"pairs": 10, "accuracy": 0.7},
                    "slightly_better": {"pairs": 10, "accuracy": 0.6},
                    "negligibly_better": {"pairs": 10, "accuracy": 0.5},
                },
                "by_batch": {batch.name: {"pairs": 40, "accuracy": 0.675}},
                "safety_gate": {
                    "threshold": 0.15,
                    "labelled_responses": 80,
                    "unsafe": 20,
                    "predicted_unsafe": 10,
                    "precision": 0.8,
                    "recall": 0.4,
                },
            },
            "before_training": {
                "model_version": {"id": 1, "name": "rm-old<script>"},
                "batch": batch.name,
                "pairs": 12,
                "metrics": {
                    "pairs": 12,
                    "accuracy": 0.5,
                    "by_strength": {"better": {"pairs": 12, "accuracy": 0.5}},
                },
            },
            "history": [{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.55}],
            "steps": 2,
            "train_pairs": 160,
            "eval_pairs": 40,
        },
    )
    run.batches.set([batch])
    version = ModelVersion.objects.create(
        name="reward_helpfulness run", role="reward_helpfulness", path="/m", training_run=run
    )
    return run, version


@pytest.mark.django_db
def test_the_run_page_shows_the_table_8_layout_plots_and_a_promote_button(
    client, annotated_batch, policy, ml_staff
):
    run, version = succeeded_run(policy, annotated_batch)
    client.force_login(ml_staff)
    html = client.get(f"/training/runs/{run.pk}/").content.decode()
    for header in ("Significantly better", "Better", "Slightly better", "Negligibly better"):
        assert f"<th>{header}" in html
    assert "Unrated" not in html  # no imported pairs in this run
    assert "90.0 %" in html and "67.5 %" in html  # a bucket and the overall accuracy
    assert "Before training: rm-old&lt;script&gt; on week 1" in html
    assert "rm-old<script>" not in html
    assert html.count('<svg class="chart"') == 2
    assert '<path class="series"' in html  # the loss curve
    assert "Precision (unsafe)" in html and "80.0 %" in html
    assert 'id="promote"' in html
    response = client.post(f"/training/runs/{run.pk}/promote/")
    assert response.status_code == 302
    version.refresh_from_db()
    assert version.is_current
    assert 'id="promote"' not in client.get(f"/training/runs/{run.pk}/").content.decode()


@pytest.mark.django_db
def test_promoting_a_run_without_a_model_is_refused(client, policy, ml_staff):
    run = TrainingRun.objects.create(kind="reward_helpfulness", status="failed", error="boom")
    client.force_login(ml_staff)
    response = client.post(f"/training/runs/{run.pk}/promote/", follow=True)
    assert "produced no model to promote" in response.content.decode()
    assert not ModelVersion.objects.filter(is_current=True).exclude(pk=policy.pk).exists()


# --- real runs on the session's Celery worker ---------------------------------------------------


def wait_for_run(run_id: int, timeout: float = 180) -> TrainingRun:
    def finished():
        run = TrainingRun.objects.get(pk=run_id)
        return run if run.status in ("succeeded", "failed") else None

    return wait_for(finished, timeout=timeout, message=f"training run {run_id} did not finish")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_retraining_through_the_api_on_a_real_worker(
    celery_worker_process, tiny_policy, make_batch, annotator, ml_staff, api_client, client
):
    week1 = make_batch(comparisons=8, name="week 1")
    annotate_batch(week1, annotator)
    dataset = imported_batch(8, name="imported pairs")
    api_client.force_login(ml_staff)
    response = api_client.post(
        "/api/v1/training-runs/",
        {"kind": "helpfulness", "batches": [week1.pk, dataset.pk], "config": TINY_CONFIG},
        format="json",
    )
    assert response.status_code == 201, response.content
    run = wait_for_run(response.json()["id"])
    assert run.status == "succeeded", run.error + run.logs
    assert run.progress == 1.0
    assert hashlib.sha256(Path(run.export_path).read_bytes()).hexdigest() == run.export_sha256
    assert "step 3/3" in run.logs
    evaluation = run.metrics["eval"]
    assert evaluation["pairs"] == run.metrics["eval_pairs"] > 0
    assert 0.0 <= evaluation["accuracy"] <= 1.0
    assert [row["step"] for row in run.metrics["history"]] == [1, 2, 3]
    version = ModelVersion.objects.get(training_run=run)
    assert version.role == "reward_helpfulness" and not version.is_current
    assert version.parent == tiny_policy
    assert (Path(version.path) / "config.json").is_file()
    assert version.metrics["accuracy"] == evaluation["accuracy"]
    assert len(version.metrics["history"]) == 3

    # Promote it, then continue it on a new week: the old model is measured on it first.
    assert api_client.post(f"/api/v1/models/{version.pk}/promote/").status_code == 200
    week2 = make_batch(comparisons=4, name="week 2")
    annotate_batch(week2, annotator)
    response = api_client.post(
        "/api/v1/training-runs/",
        {
            "kind": "helpfulness",
            "batches": [week1.pk, week2.pk],
            "base_model": version.pk,
            "config": TINY_CONFIG,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    second = wait_for_run(response.json()["id"])
    assert second.status == "succeeded", second.error + second.logs
    before = second.metrics["before_training"]
    assert before["model_version"]["id"] == version.pk and before["batch"] == "week 2"
    assert before["metrics"]["pairs"] == 4
    assert current_version("reward_helpfulness") == version  # promotion is the staff's call
    client.force_login(ml_staff)
    page = client.get(f"/training/runs/{second.pk}/").content.decode()
    assert f"Before training: {version.name} on week 2" in page


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_run_whose_base_model_is_broken_fails_on_the_worker(
    celery_worker_process, tiny_policy_dir, make_batch, annotator, ml_staff, api_client, tmp_path
):
    batch = make_batch(comparisons=6)
    annotate_batch(batch, annotator)
    broken_dir = tmp_path / "broken-policy"
    shutil.copytree(tiny_policy_dir, broken_dir)
    broken = register_model(str(broken_dir), "policy", name="broken policy", make_current=True)
    (broken_dir / "config.json").write_text("{not json")
    current = register_model(
        str(tiny_policy_dir), "reward_helpfulness", name="rm-h current", make_current=True
    )
    api_client.force_login(ml_staff)
    response = api_client.post(
        "/api/v1/training-runs/",
        {"kind": "helpfulness", "batches": [batch.pk], "config": TINY_CONFIG},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["base_model"] == broken.name
    run = wait_for_run(response.json()["id"])
    assert run.status == "failed"
    assert run.error.startswith("OSError") and "config.json" in run.error
    assert "Traceback" in run.logs
    assert run.export_sha256  # the data snapshot was taken before training failed
    assert not ModelVersion.objects.filter(training_run=run).exists()
    assert current_version("reward_helpfulness") == current


def request_run(api_client, batches, config=TINY_CONFIG) -> int:
    """Start a helpfulness run through the API; returns its id."""
    response = api_client.post(
        "/api/v1/training-runs/",
        {"kind": "helpfulness", "batches": [b.pk for b in batches], "config": config},
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()["id"]


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def job_dir_of(run_id: int, timeout: float = 120) -> Path:
    """The job directory of a run, once the platform's task wrote its spec there."""
    export = wait_for(
        lambda: TrainingRun.objects.get(pk=run_id).export_path,
        timeout=timeout,
        message=f"training run {run_id} was not started",
    )
    return Path(export).parent


def kill_job_after_step(job_dir: Path, step: int, timeout: float = 120) -> None:
    """SIGKILL the job's process group (``worker.json``) once its log records ``step``."""
    from model_worker.training import LEASE_FILE
    from rlhf.jobs import EVENTS_FILE, read_events

    def stepped() -> int | None:
        steps = [e["step"] for e in read_events(job_dir / EVENTS_FILE) if e["type"] == "step"]
        lease = job_dir / LEASE_FILE
        if steps and max(steps) >= step and lease.is_file():
            return json.loads(lease.read_text()).get("process_group")
        return None

    group = wait_for(stepped, timeout=timeout, interval=0.02, message=f"no step {step}")
    os.killpg(group, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_job_killed_mid_training_is_reported_and_resumed_to_the_same_losses(
    celery_worker_process, tiny_policy, make_batch, annotator, ml_staff, api_client
):
    """web → training queue → model worker → accelerate → SIGKILL of the job's process group:
    the run's page says so, the task is delivered again and the job resumes from its last
    checkpoint, ending with the loss history of an uninterrupted run of the same request."""
    batch = make_batch(comparisons=16, name="week 1")
    annotate_batch(batch, annotator)
    config = {**TINY_CONFIG, "max_steps": 12, "checkpoint_every": 1, "micro_batch_size": 2}
    api_client.force_login(ml_staff)
    killed = request_run(api_client, [batch], config)
    kill_job_after_step(job_dir_of(killed), step=3)
    killed_run = wait_for_run(killed)
    assert killed_run.status == "succeeded", killed_run.error + killed_run.logs
    assert "killed by SIGKILL" in killed_run.logs and "launched again" in killed_run.logs
    assert "resumed from" in killed_run.logs  # from a checkpoint, not from scratch

    whole = request_run(api_client, [batch], config)
    whole_run = wait_for_run(whole)
    assert whole_run.status == "succeeded", whole_run.error
    assert "killed" not in whole_run.logs
    resumed, uninterrupted = killed_run.metrics["history"], whole_run.metrics["history"]
    assert [row["step"] for row in resumed] == list(range(1, 13))
    assert [row["step"] for row in uninterrupted] == list(range(1, 13))
    for ours, theirs in zip(resumed, uninterrupted, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
    assert ModelVersion.objects.filter(training_run__in=[killed, whole]).count() == 2


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_run_on_two_gloo_processes_through_the_queues(
    tiny_policy, make_batch, annotator, ml_staff, api_client, tmp_path
):
    """The deployment's launch options reach accelerate: two CPU processes (gloo); every
    event is recorded once, and the model is registered."""
    from tests.workers import (
        SCRATCH_REDIS_URL,
        _flushed,
        app_using,
        start_worker,
        stop,
        wait_until_answering,
    )

    batch = make_batch(comparisons=8, name="week 1")
    annotate_batch(batch, annotator)
    broker = _flushed(SCRATCH_REDIS_URL)
    launch = {
        "PAIRWISE_TRAINING_DIR": str(tmp_path / "training"),
        # accelerate's multi-process launcher; without a GPU the processes join a gloo group.
        "PAIRWISE_TRAINING_LAUNCH": "--multi_gpu --num_processes 2 --num_machines 1 "
        f"--mixed_precision no --dynamo_backend no --main_process_port {free_port()}",
    }
    with app_using(broker) as app:
        worker = start_worker(broker, name="gloo", extra_env=launch)
        try:
            wait_until_answering(app, worker)
            api_client.force_login(ml_staff)
            run = wait_for_run(request_run(api_client, [batch]), timeout=300)
        finally:
            stop(worker)
    assert run.status == "succeeded", run.error + run.logs
    for step in (1, 2, 3):
        assert run.logs.count(f"step {step}/3 ") == 1  # written by the main process only
    assert [row["step"] for row in run.metrics["history"]] == [1, 2, 3]
    assert "steps of 8 pairs on 2 processes (gloo)" in run.logs  # 4 pairs a process
    version = ModelVersion.objects.get(training_run=run)
    assert (Path(version.path) / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_without_a_broker_the_demo_runs_the_whole_job_in_its_own_process(
    eager_tasks, tiny_policy, make_batch, annotator, ml_staff, api_client, settings, tmp_path
):
    """The embedded demo: no broker, the tasks run where they are sent (here inline), the job
    still in a process of its own, launched with accelerate; the run ends registered."""
    settings.PAIRWISE_TRAINING_DIR = tmp_path / "training"
    settings.PAIRWISE_EAGER_IN_THREAD = False
    batch = make_batch(comparisons=8, name="week 1")
    annotate_batch(batch, annotator)
    api_client.force_login(ml_staff)
    run = TrainingRun.objects.get(pk=request_run(api_client, [batch]))
    assert run.status == "succeeded", run.error + run.logs
    assert "step 3/3" in run.logs and run.events_mirrored > 0
    assert (Path(run.export_path).parent / "launch.log").is_file()  # launched, not imported
    assert ModelVersion.objects.filter(training_run=run, is_current=False).count() == 1
