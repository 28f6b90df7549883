"""A model worker launches a training job with accelerate and follows its event log."""

from __future__ import annotations

import os
import signal

import pytest

from model_worker.training import launch_command, run_training_job
from rlhf.jobs import RunSpec
from rlhf.tiny import build_tiny_llama
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
