"""A model worker launches a training job with accelerate and follows its event log."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable

import pytest

from model_worker.training import LEASE_FILE, launch_command, run_training_job, train
from rlhf.jobs import RunSpec, read_events
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


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def test_a_job_on_two_processes_records_each_event_once(tmp_path, base_model):
    """accelerate runs the job in two CPU processes (gloo); only the main one writes."""
    write_spec(tmp_path, base_model, max_steps=2)
    # accelerate's multi-process launcher; without a GPU the processes join a gloo group.
    options = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    options += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    options += ["--main_process_port", str(free_port())]
    outcome = run_training_job(tmp_path / "spec.json", options=options)
    assert outcome.succeeded, outcome.output_tail
    types = [event["type"] for event in outcome.events]
    assert types.count("metrics") == 1 and types.count("step") == 2
    logs = [event["message"] for event in outcome.events if event["type"] == "log"]
    assert any("on 2 processes (gloo)" in message for message in logs)  # one group of two


# --- train(): the task's body, with its lease on the job's directory ----------------------------


@pytest.fixture
def sleeper():
    """Start ``sleep`` processes (of this test only), stopped at the end of the test."""
    started: list[subprocess.Popen] = []

    def start(seconds: int, *, new_session: bool = False) -> subprocess.Popen:
        started.append(subprocess.Popen(["sleep", str(seconds)], start_new_session=new_session))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def write_lease(spec: RunSpec, pid: int, process_group: int | None) -> dict:
    lease = {"host": socket.gethostname(), "pid": pid, "process_group": process_group}
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    (spec.output_dir / LEASE_FILE).write_text(json.dumps(lease))
    return lease


def recorder() -> tuple[list[tuple[int, list[dict]]], Callable[[int, list[dict]], None]]:
    calls: list[tuple[int, list[dict]]] = []
    return calls, lambda index, events: calls.append((index, events))


def assert_contiguous(calls: list[tuple[int, list[dict]]], start: int) -> None:
    """Each batch's index is where the previous one ended, the first at ``start``."""
    assert calls and calls[0][0] == start
    for (index, events), (next_index, _) in itertools.pairwise(calls):
        assert next_index == index + len(events)


def test_a_job_whose_lease_a_live_worker_on_this_host_holds_is_skipped(
    tmp_path, base_model, sleeper
):
    spec = write_spec(tmp_path, base_model, max_steps=2)
    lease = write_lease(spec, sleeper(30).pid, None)
    calls, on_events = recorder()
    report, outcome = train(tmp_path / "spec.json", on_events)
    assert report["status"] == "skipped" and outcome is None
    assert calls == []
    assert json.loads((spec.output_dir / LEASE_FILE).read_text()) == lease  # still the other's
    assert sorted(path.name for path in spec.output_dir.iterdir()) == [LEASE_FILE]  # no launch


def test_a_dead_workers_lease_is_taken_over_its_orphaned_job_stopped_and_the_job_run(
    tmp_path, base_model, sleeper
):
    spec = write_spec(tmp_path, base_model, max_steps=2)
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = sleeper(60, new_session=True)  # the dead worker's job: a process group of its own
    write_lease(spec, dead.pid, orphan.pid)
    calls, on_events = recorder()
    report, outcome = train(tmp_path / "spec.json", on_events)
    assert orphan.wait(timeout=10) == -signal.SIGKILL
    assert report["status"] == "succeeded", report
    assert outcome is not None and outcome.succeeded
    assert [event for _, events in calls for event in events] == outcome.events
    assert not (spec.output_dir / LEASE_FILE).exists()  # released when done


def test_on_events_gets_each_batch_with_its_index_in_the_log_contiguous_from_events_from(
    tmp_path, base_model, monkeypatch
):
    monkeypatch.setattr("model_worker.training.POLL_SECONDS", 0.05)  # events in several batches
    write_spec(tmp_path, base_model, max_steps=2)
    calls, on_events = recorder()
    report, outcome = train(tmp_path / "spec.json", on_events)
    assert report["status"] == "succeeded", report
    assert len([events for _, events in calls if events]) > 1
    assert_contiguous(calls, 0)
    assert [event for _, events in calls for event in events] == outcome.events


def test_a_job_that_finished_before_is_reported_from_its_files_without_launching_again(
    tmp_path, base_model
):
    spec = write_spec(tmp_path, base_model, max_steps=2)
    first, _ = train(tmp_path / "spec.json", lambda index, events: None)
    assert first["status"] == "succeeded", first
    files = {name: (spec.output_dir / name).read_bytes() for name in ("events.jsonl", "launch.log")}
    events = read_events(spec.output_dir / "events.jsonl")
    calls, on_events = recorder()
    report, outcome = train(tmp_path / "spec.json", on_events, events_from=3)
    assert outcome is None
    assert report["status"] == "succeeded" and report["metrics"] == first["metrics"]
    assert calls == [(3, events[3:])]
    assert {name: (spec.output_dir / name).read_bytes() for name in files} == files
    assert not (spec.output_dir / LEASE_FILE).exists()
