"""A model worker launches a training job with accelerate and follows its event log."""

from __future__ import annotations

import os
import signal

import pytest

from model_worker.training import launch_command, run_training_job
from rlhf.jobs import RunSpec
from rlhf.nn.tiny import build_tiny_llama
from tests.unit.test_jobs import spec_values

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("launch") / "base")


def write_spec(tmp_path, base_model, **config) -> RunSpec:
    values = {
        "kind": "helpfulness",
        "base_model": str(base_model),
        "cpu": True,
        "max_length": 64,
        "micro_batch_size": 4,
        **config,
    }
    spec = RunSpec.from_dict(spec_values(tmp_path, config=values))
    spec.write(tmp_path / "spec.json")
    return spec


def test_the_launch_command_is_accelerate_running_the_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRWISE_TRAINING_LAUNCH", "--multi_gpu --num_processes 4")
    command = launch_command(tmp_path / "spec.json")
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[3:6] == ["--multi_gpu", "--num_processes", "4"]
    assert command[-4:] == ["-m", "rlhf", "run", str(tmp_path / "spec.json")]


def test_a_launched_job_streams_its_events_and_ends_with_its_metrics(tmp_path, base_model):
    write_spec(tmp_path, base_model, max_steps=2)
    batches = []
    outcome = run_training_job(tmp_path / "spec.json", batches.append)
    assert outcome.succeeded, outcome.output_tail
    streamed = [event for batch in batches for event in batch]
    assert streamed == outcome.events  # every event passed on, once, in order
    assert [e["step"] for e in streamed if e["type"] == "step"] == [1, 2]
    assert streamed[-1]["type"] == "metrics"


def test_a_job_killed_mid_run_is_reported_as_killed(tmp_path, base_model):
    write_spec(tmp_path, base_model, max_steps=400)

    def kill_after_first_step(events):
        if any(event["type"] == "step" for event in events):
            os.killpg(process_group[0], signal.SIGKILL)

    process_group = []
    outcome = run_training_job(
        tmp_path / "spec.json",
        kill_after_first_step,
        on_start=lambda process: process_group.append(process.pid),
    )
    assert outcome.killed_by == "SIGKILL" and not outcome.succeeded
    assert any(event["type"] == "step" for event in outcome.events)
    assert not any(event["type"] == "metrics" for event in outcome.events)


def test_a_killed_job_launched_again_with_resume_ends_as_an_uninterrupted_one(
    tmp_path, base_model, monkeypatch
):
    monkeypatch.setattr("model_worker.training.POLL_SECONDS", 0.01)  # to kill it early on
    settings = {"max_steps": 200, "checkpoint_every": 2, "seed": 7}
    whole = tmp_path / "whole"
    whole.mkdir()
    write_spec(whole, base_model, **settings)
    uninterrupted = run_training_job(whole / "spec.json")
    assert uninterrupted.succeeded, uninterrupted.output_tail

    broken = tmp_path / "broken"
    broken.mkdir()
    spec = write_spec(broken, base_model, **settings)
    process_group = []

    def kill_after_step_three(events):
        if any(event["type"] == "step" and event["step"] >= 3 for event in events):
            os.killpg(process_group[0], signal.SIGKILL)

    killed = run_training_job(
        broken / "spec.json",
        kill_after_step_three,
        on_start=lambda process: process_group.append(process.pid),
    )
    assert killed.killed_by == "SIGKILL"
    assert not any(event["type"] == "metrics" for event in killed.events), " ".join(
        f"{e['type']}{e.get('step', '')}" for e in killed.events if e["type"] != "progress"
    )
    spec.resume = True
    spec.write(broken / "spec.json")
    resumed = run_training_job(broken / "spec.json")
    assert resumed.succeeded, resumed.output_tail

    def losses(outcome):
        [final] = [event for event in outcome.events if event["type"] == "metrics"]
        return [entry["loss"] for entry in final["metrics"]["history"]]

    assert len(losses(resumed)) == len(losses(uninterrupted)) > 1
    assert losses(resumed) == pytest.approx(losses(uninterrupted), abs=1e-6)


def test_a_job_on_two_processes_records_each_event_once(tmp_path, base_model):
    """accelerate runs the job in two CPU processes (gloo); only the main one writes."""
    write_spec(tmp_path, base_model, max_steps=2)
    outcome = run_training_job(tmp_path / "spec.json", options=["--num_processes", "2", "--cpu"])
    assert outcome.succeeded, outcome.output_tail
    types = [event["type"] for event in outcome.events]
    assert types.count("metrics") == 1 and types.count("step") == 2
