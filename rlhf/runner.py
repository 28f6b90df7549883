"""Running a job (:mod:`rlhf.jobs`): its stage prepares, then trains, writing its event log.

Every stage runs in two steps, so that bad input changes nothing:

1. ``prepare(spec)`` checks the stage's config, options and inputs and reads its data; it writes
   nothing, and raises an error naming the field or file (JobError, ConfigError, DataError).
2. ``train(plan, context)`` does the work, writing events, and returns the final metrics.

:func:`run_job` checks the spec, prepares, then creates the output directory and trains; a
failure while training is written to the event log as an "error" event with its traceback.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from typing import Any

from rlhf.jobs import (
    EVENTS_FILE,
    METRICS_FILE,
    MODEL_DIR,
    SPEC_FILE,
    EventLog,
    JobContext,
    JobError,
    RunSpec,
    Stage,
)


def stages() -> dict[str, Stage]:
    """The stages by name; imported when asked for, so that reading a spec loads no torch."""
    from rlhf.gatt.job import GAttStage
    from rlhf.policy_eval.job import PolicyEvalStage
    from rlhf.ppo.job import PPOStage
    from rlhf.rejection_sampling.job import RejectionSamplingStage
    from rlhf.reward.job import RewardEvalStage, RewardStage
    from rlhf.sft.job import SFTStage

    return {
        "reward": RewardStage(),
        "reward-eval": RewardEvalStage(),
        "sft": SFTStage(),
        "rejection-sampling": RejectionSamplingStage(),
        "policy-eval": PolicyEvalStage(),
        "gatt": GAttStage(),
        "ppo": PPOStage(),
    }


def check(spec: RunSpec) -> Stage:
    """Everything checked before a stage looks at the spec: a known stage, its inputs as the
    spec names them, and an output directory that holds no other run unless the spec resumes
    it. Returns the stage."""
    known = stages()
    if spec.stage not in known:
        raise JobError("stage", f"{spec.stage!r} is not a stage; the stages are {sorted(known)}")
    for role, files in spec.inputs.items():
        for file in files:
            file.verify(role)
    model = spec.output_dir / MODEL_DIR
    if not spec.resume and model.is_dir() and any(model.iterdir()):
        raise JobError(
            "output_dir",
            f"{spec.output_dir} holds a run already: set resume to continue it, or name "
            "another directory",
        )
    return known[spec.stage]


def prepare_command(spec: RunSpec, *, main_process: bool = True) -> Any:
    """What a stage's command does before it runs its job: check and prepare the spec (bad
    input raises, nothing is written), then keep it as ``OUT/spec.json`` (main process only).
    Returns the plan to hand :func:`run_job`."""
    plan = check(spec).prepare(spec)
    if main_process:
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        spec.write(spec.output_dir / SPEC_FILE)
    return plan


def run_job(
    spec: RunSpec,
    *,
    main_process: bool = True,
    listener: Callable[[dict[str, Any]], None] | None = None,
    eval_progress: Callable[[int, int], None] | None = None,
    plan: Any = None,
) -> dict[str, Any]:
    """Run ``spec``; returns its final metrics. Bad input raises before anything is written;
    a failure while training is recorded as an "error" event, then raised. ``listener`` gets
    every event record as it is written (main process only); ``plan``: what the stage's
    ``prepare`` returned for this spec, if the caller prepared it already."""
    stage = check(spec)
    if plan is None:
        plan = stage.prepare(spec)
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    events = EventLog(spec.output_dir / EVENTS_FILE, main_process=main_process, listener=listener)
    context = JobContext(spec, events, main_process, eval_progress)
    try:
        metrics = stage.train(plan, context)
    except BaseException as error:
        message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        events.write("error", message=message, traceback=traceback.format_exc())
        raise
    events.write("metrics", metrics=metrics)
    if main_process:
        (spec.output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
