"""Training runs in the test process: what the queues do with a run, without a worker.

:func:`run_in_process` prepares a run as the platform's task does, runs its job with
``rlhf.runner.run_job`` (the real stage: data, split, baseline, event log, metrics; the trainer
is whatever the test put in place, :class:`FakeTrainer` for speed), mirrors the job's events and
records its end, as the worker's callbacks do.
"""

from __future__ import annotations

from pathlib import Path

from annotation_app.services.training import lifecycle
from model_worker.training import JobOutcome, outcome_report
from rlhf.jobs import EVENTS_FILE, RunSpec, read_events


def run_in_process(run_id: int) -> str:
    """Prepare, run and finish a run here; returns what ``lifecycle.finish`` returns, or
    "skipped" when the run was not started (taken, or finished)."""
    from rlhf.runner import run_job

    job = lifecycle.prepare(run_id)
    if job is None:
        return "skipped"
    spec = RunSpec.load(job["spec_path"])
    try:
        run_job(spec)
        returncode = 0
    except Exception:  # recorded in the event log, as a job process would
        returncode = 1
    events = read_events(spec.output_dir / EVENTS_FILE)
    lifecycle.record_events(run_id, job["events_from"], events[job["events_from"] :])
    return lifecycle.finish(run_id, outcome_report(spec, JobOutcome(returncode, events)))


class FakeTrainer:
    """Stands in for rlhf.reward.training.train_reward_model: events, a model dir, a result."""

    def __init__(self, fail: Exception | None = None):
        self.fail = fail
        self.calls = []

    def __call__(self, config, train_pairs, eval_pairs, out_dir, *, progress=None, **_):
        from rlhf.reward.training import TrainingResult

        self.calls.append((config, list(train_pairs), list(eval_pairs)))
        progress({"event": "log", "message": "loading the backbone"})
        for step in range(1, 5):
            progress(
                {
                    "event": "step",
                    "step": step,
                    "total_steps": 4,
                    "loss": 0.7 - step / 10,
                    "learning_rate": 1e-5,
                    "pairs_per_second": 10.0,
                }
            )
        if self.fail is not None:
            raise self.fail
        metrics = {
            "pairs": len(eval_pairs),
            "accuracy": 0.75,
            "loss": float("nan"),  # a diverged loss must still be storable
            "ece": 0.1,
            "by_strength": {"better": {"pairs": 2, "accuracy": 0.5}},
            "by_batch": {"week 1": {"pairs": 2, "accuracy": 0.5}},
            "calibration": [],
            "safety_gate": None,
        }
        progress({"event": "eval", "step": 4, "metrics": metrics})
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        history = [{"step": s, "loss": 0.7 - s / 10, "learning_rate": 1e-5} for s in range(1, 5)]
        return TrainingResult(
            out_dir=out,
            metrics=metrics,
            history=history,
            steps=4,
            train_pairs=len(train_pairs),
            seconds=0.5,
        )
