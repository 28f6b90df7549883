"""The job contract (rlhf/jobs.py) and its runner (rlhf/runner.py): a spec in; an event log,
metrics and a model out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.jobs import EVENT_TYPES, EventLog, InputFile, JobError, RunSpec, read_events, sha256_of
from rlhf.nn.tiny import build_tiny_llama
from rlhf.runner import check, run_job
from tests.unit.test_reward_cli import export_line, rlhf, write_export


def spec_values(tmp_path, **changes) -> dict:
    data = write_export(tmp_path / "export.jsonl", helpfulness=24, safety=0)
    values = {
        "stage": "reward",
        "config": {"kind": "helpfulness", "base_model": "unused", "cpu": True},
        "inputs": {"data": [{"path": str(data), "sha256": sha256_of(data)}]},
        "options": {"recipe": "none"},
        "output_dir": str(tmp_path / "job"),
        "resume": False,
    }
    return values | changes


def test_a_spec_round_trips_through_its_json(tmp_path):
    spec = RunSpec.from_dict(spec_values(tmp_path))
    spec.write(tmp_path / "spec.json")
    again = RunSpec.load(tmp_path / "spec.json")
    assert again == spec
    assert again.paths("data") == [tmp_path / "export.jsonl"]


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"stage": ""}, "stage", "is required"),
        ({"output_dir": None}, "output_dir", "is required"),
        ({"resume": "yes"}, "resume", "true or false"),
        ({"config": []}, "config", "must be an object"),
        ({"epochs": 3}, "epochs", "is not a field of a run spec"),
        ({"inputs": {"data": [{"path": "x"}]}}, "inputs.data[0]", "path and sha256"),
        ({"inputs": {"data": "x.jsonl"}}, "inputs.data", "list of"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(tmp_path, changes, field, says):
    with pytest.raises(JobError) as refused:
        RunSpec.from_dict(spec_values(tmp_path, **changes))
    assert refused.value.field == field and says in refused.value.message


def test_an_unknown_stage_or_a_changed_input_is_refused_before_anything_is_written(tmp_path):
    spec = RunSpec.from_dict(spec_values(tmp_path, stage="ppo-someday"))
    with pytest.raises(JobError, match="'ppo-someday' is not a stage; the stages are"):
        check(spec)
    spec = RunSpec.from_dict(spec_values(tmp_path))
    data = spec.paths("data")[0]
    expected = spec.inputs["data"][0].sha256
    data.write_text(data.read_text() + "\n")  # changed after the spec was written
    with pytest.raises(JobError) as refused:
        check(spec)
    assert refused.value.field == "inputs.data"
    assert str(data) in refused.value.message and expected in refused.value.message
    assert not spec.output_dir.exists()


def test_an_output_directory_with_a_run_needs_resume(tmp_path):
    spec = RunSpec.from_dict(spec_values(tmp_path))
    (spec.output_dir / "model").mkdir(parents=True)
    (spec.output_dir / "model" / "config.json").write_text("{}")
    with pytest.raises(JobError, match="set resume to continue it"):
        check(spec)
    spec.resume = True
    check(spec)


def test_the_event_log_holds_typed_records_and_a_reader_skips_an_unfinished_line(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.write("log", message="loading")
    log.write("progress", fraction=0.5)
    with pytest.raises(ValueError, match="carries"):
        log.write("step", step=1)
    with pytest.raises(ValueError, match="unknown event type"):
        log.write("stepped", step=1)
    with (tmp_path / "events.jsonl").open("a") as file:
        file.write('{"type": "step", "ste')  # a writer mid-line
    events = read_events(tmp_path / "events.jsonl")
    assert [event["type"] for event in events] == ["log", "progress"]
    assert events[1]["fraction"] == 0.5 and "time" in events[0]
    assert read_events(tmp_path / "missing.jsonl") == []


def test_input_files_are_hashed_with_sha256(tmp_path):
    (tmp_path / "abc.txt").write_bytes(b"abc")
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    assert InputFile.of(tmp_path / "abc.txt") == InputFile(tmp_path / "abc.txt", abc)


@pytest.mark.slow
def test_a_reward_job_runs_from_its_spec_and_writes_events_metrics_and_a_model(tmp_path):
    base = build_tiny_llama(tmp_path / "base")
    config = {
        "kind": "helpfulness",
        "base_model": str(base),
        "cpu": True,
        "max_length": 64,
        "micro_batch_size": 4,
        "max_steps": 2,
    }
    spec = RunSpec.from_dict(spec_values(tmp_path, config=config))
    spec.write(tmp_path / "spec.json")
    done = rlhf("run", str(tmp_path / "spec.json"))
    assert done.returncode == 0, done.stderr
    assert "trained 2 steps on 8 pairs" in done.stdout
    events = read_events(spec.output_dir / "events.jsonl")
    types = [event["type"] for event in events]
    steps = [event for event in events if event["type"] == "step"]
    assert [event["step"] for event in steps] == [1, 2]
    assert all(event["loss"] > 0 for event in steps)
    assert "evaluation" in types and types[-1] == "metrics"
    assert [e["fraction"] for e in events if e["type"] == "progress"] == [0.5, 1.0]
    metrics = json.loads((spec.output_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["pairs_trained"] == 8
    assert metrics["metrics"]["accuracy"] == events[-1]["metrics"]["metrics"]["accuracy"]
    assert (spec.output_dir / "model" / "config.json").is_file()


@pytest.mark.slow
def test_a_failing_job_writes_an_error_event_with_its_traceback(tmp_path):
    config = {"kind": "helpfulness", "base_model": str(tmp_path / "no-such-model"), "cpu": True}
    spec = RunSpec.from_dict(spec_values(tmp_path, config=config))
    spec.write(tmp_path / "spec.json")
    done = rlhf("run", str(tmp_path / "spec.json"))
    assert done.returncode != 0
    [error] = [e for e in read_events(spec.output_dir / "events.jsonl") if e["type"] == "error"]
    assert "Traceback" in error["traceback"] and error["message"]
    assert not (spec.output_dir / "metrics.json").exists()


# --- the reward stage's options, run in this process ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("jobs") / "base")


def write_batches(path, batches: dict[str, int]) -> Path:
    """An export of helpfulness pairs, ``batches[name]`` of them in each named batch."""
    lines, number = [], 0
    for name, count in batches.items():
        for _ in range(count):
            lines.append(
                json.dumps(json.loads(export_line(number, "helpfulness")) | {"batch": name})
            )
            number += 1
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_spec(tmp_path, base, data, **options) -> RunSpec:
    """A reward job of 1 step on the tiny model, training on ``data`` with ``options``."""
    config = {
        "kind": "helpfulness",
        "base_model": str(base),
        "cpu": True,
        "max_length": 64,
        "micro_batch_size": 4,
        "max_steps": 1,
    }
    inputs = {"data": [{"path": str(data), "sha256": sha256_of(data)}]}
    return RunSpec.from_dict(
        spec_values(tmp_path, config=config, inputs=inputs, options={"recipe": "none", **options})
    )


def of_type(events: list[dict], event_type: str) -> list[dict]:
    return [event for event in events if event["type"] == event_type]


def test_the_baseline_is_the_named_model_on_every_pair_of_the_named_batch_before_training(
    tmp_path, tiny_base
):
    data = write_batches(tmp_path / "batches.jsonl", {"old batch": 10, "new batch": 6})
    baseline = {"model": str(tiny_base), "batch": "new batch"}
    spec = tiny_spec(tmp_path, tiny_base, data, baseline=baseline)
    metrics = run_job(spec)
    events = read_events(spec.output_dir / "events.jsonl")
    [event] = of_type(events, "baseline")
    assert event["error"] is None
    assert event["model"] == str(tiny_base) and event["batch"] == "new batch"
    # Every pair of the batch, held out or not, and none of the other batch.
    assert event["pairs"] == event["metrics"]["pairs"] == 6
    assert list(event["metrics"]["by_batch"]) == ["new batch"]
    assert event["metrics"]["by_batch"]["new batch"]["pairs"] == 6
    types = [e["type"] for e in events]
    assert "step" in types and types.index("baseline") < types.index("step")
    assert metrics["baseline"] == {key: event[key] for key in EVENT_TYPES["baseline"]}


def test_a_baseline_model_that_cannot_be_evaluated_is_reported_and_the_job_goes_on(
    tmp_path, tiny_base
):
    data = write_batches(tmp_path / "batches.jsonl", {"old batch": 10, "new batch": 6})
    missing = tmp_path / "no-such-model"
    spec = tiny_spec(
        tmp_path, tiny_base, data, baseline={"model": str(missing), "batch": "new batch"}
    )
    metrics = run_job(spec)
    [event] = of_type(read_events(spec.output_dir / "events.jsonl"), "baseline")
    assert event["metrics"] is None and event["pairs"] == 6
    assert event["error"] and str(missing) in event["error"]
    assert metrics["baseline"]["error"] == event["error"] and metrics["steps"] == 1
    assert (spec.output_dir / "metrics.json").is_file()
    assert not of_type(read_events(spec.output_dir / "events.jsonl"), "error")


@pytest.mark.parametrize(
    ("recipe", "pairs", "kinds"),
    [("all", 20, {"helpfulness", "safety"}), ("none", 12, {"helpfulness"})],
)
def test_recipe_all_trains_on_every_kind_and_none_on_the_models_own(
    tmp_path, tiny_base, recipe, pairs, kinds
):
    data = write_export(tmp_path / "mixed.jsonl", helpfulness=12, safety=8)
    spec = tiny_spec(tmp_path, tiny_base, data, recipe=recipe)
    metrics = run_job(spec)
    [event] = of_type(read_events(spec.output_dir / "events.jsonl"), "data")
    assert event["train"] + event["held_out"] == pairs
    # The data event says what the run reports it trained on and held out.
    assert (event["train"], event["held_out"]) == (metrics["train_pairs"], metrics["eval_pairs"])
    assert event["held_out"] == metrics["metrics"]["pairs"]
    assert set(metrics["metrics"]["by_kind"]) == kinds


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"baseline": "models/current"}, "options.baseline"),
        ({"baseline": {"model": "models/current"}}, "options.baseline"),
        ({"baseline": {"model": "models/current", "batch": ""}}, "options.baseline"),
        ({"baseline": {"model": "m", "batch": "b", "step": 3}}, "options.baseline"),
        ({"epochs": 3}, "options.epochs"),
        ({"recipe": "some"}, "options.recipe"),
    ],
)
def test_bad_options_are_refused_naming_the_field_before_anything_is_written(
    tmp_path, options, field
):
    spec = RunSpec.from_dict(spec_values(tmp_path, options=options))
    with pytest.raises(JobError) as refused:
        run_job(spec)
    assert refused.value.field == field
    assert not spec.output_dir.exists()
