"""A run's life on the platform's side (see the package docstring): claim, freeze its data,
write its spec; mirror the events its job sends back; register its model or record its failure.

Every step is safe to repeat: a run is claimed once (under a row lock), a batch of events is
applied once and in order (``events_mirrored``), and a finished run stays as it finished.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, TextField, Value
from django.db.models.functions import Concat
from django.utils import timezone

from annotation_app.errors import InvalidInput
from annotation_app.models import Batch, ModelVersion, TrainingRun
from annotation_app.services.exports import write_export
from annotation_app.services.registry import current_version, register_model
from annotation_app.services.training.start import REWARD_ROLE, run_kind
from rlhf.jobs import SPEC_FILE, InputFile, RunSpec, sha256_of

logger = logging.getLogger(__name__)

EXPORT_FILE = "preferences.jsonl"
# Progress: the job's own progress fills [TRAINING_START, TRAINING_END]; the rest is freezing
# the data, the evaluation before training, and the registration.
TRAINING_START, TRAINING_END = 0.05, 0.95
# At most about this many step lines go to a run's logs (every step of a short run, every
# n-th of a long one), so that appending stays cheap; the full loss history is in its metrics.
STEP_LOG_LINES = 500


def training_dir(run: TrainingRun) -> Path:
    """The run's job directory: its frozen export, spec, event log, metrics and model."""
    return Path(settings.PAIRWISE_TRAINING_DIR) / f"run-{run.pk}"


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None: PostgreSQL's jsonb refuses them, and a
    diverging run's loss is exactly when its metrics matter."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _stamped(message: str) -> str:
    stamp = timezone.now().strftime("%H:%M:%S")
    return "".join(f"[{stamp}] {line}\n" for line in message.rstrip("\n").split("\n"))


def append_log(run_id: int, message: str) -> None:
    """Append lines to a run's logs in SQL (``logs || text``): what is stored is not rewritten."""
    TrainingRun.objects.filter(pk=run_id).update(
        logs=Concat(F("logs"), Value(_stamped(message)), output_field=TextField())
    )


# --- claiming a run and writing its job ---------------------------------------------------------


def is_stalled(run: TrainingRun, now: datetime | None = None) -> bool:
    """A running run whose job sent nothing for ``PAIRWISE_TRAINING_STALL_SECONDS``."""
    if run.status != TrainingRun.Status.RUNNING:
        return False
    last_sign = run.heartbeat_at or run.started_at
    limit = timedelta(seconds=settings.PAIRWISE_TRAINING_STALL_SECONDS)
    return last_sign is None or (now or timezone.now()) - last_sign > limit


def _claim(run_id: int) -> tuple[TrainingRun | None, bool]:
    """Mark a run running and return it, with whether it was taken over from a lost worker.

    Under a row lock, a queued run starts and a stalled one (:func:`is_stalled`) is taken
    over; any other run is left alone, (None, False), so that a message delivered twice never
    starts a healthy run twice.
    """
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            return None, False
        taken_over = is_stalled(run)
        if run.status != TrainingRun.Status.QUEUED and not taken_over:
            return None, False
        now = timezone.now()
        run.status = TrainingRun.Status.RUNNING
        run.heartbeat_at = now
        fields = ["status", "heartbeat_at"]
        if not taken_over:
            run.started_at, run.progress, run.error = now, 0.0, ""
            fields += ["started_at", "progress", "error"]
        run.save(update_fields=fields)
    return run, taken_over


def freeze_export(
    batches: list[Batch],
    margin_table: str,
    path: Path,
    log: Callable[[str], None] | None = None,
) -> tuple[int, str]:
    """Write the training export of ``batches`` to ``path``; returns (pairs, SHA-256).

    Written to a temporary name and renamed, so a file at ``path`` is always complete. A
    damaged comparison is left out, and ``log`` (the run's logs) says which and why.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")

    def report_skipped(row) -> None:
        if log is not None:
            log(f"left out of the export: {row}")

    with partial.open("w", encoding="utf-8") as out:
        count = write_export(
            out,
            "trl",
            batches,
            margin_table,
            include_reference_preferences=True,
            on_skipped=report_skipped,
        )
    partial.replace(path)
    return count, sha256_of(path)


def _frozen_export(run: TrainingRun, batches: list[Batch]) -> InputFile:
    """The run's data snapshot: frozen once; a run taken over trains on the very same pairs."""
    export = training_dir(run) / EXPORT_FILE
    if run.export_sha256 and export.is_file() and sha256_of(export) == run.export_sha256:
        count = len(export.read_text(encoding="utf-8").splitlines())
        append_log(run.pk, f"the frozen export {export} is kept ({count} pairs)")
        return InputFile(export, run.export_sha256)
    count, digest = freeze_export(
        batches, run.config.get("margin_table", "small"), export, lambda m: append_log(run.pk, m)
    )
    run.metrics = {**(run.metrics or {}), "export_pairs": count}
    TrainingRun.objects.filter(pk=run.pk).update(
        export_path=str(export), export_sha256=digest, metrics=run.metrics
    )
    append_log(
        run.pk,
        f"froze {count} preference pairs of {len(batches)} batch(es) "
        f"({', '.join(b.name for b in batches)}) in {export}, sha256 {digest}",
    )
    if count == 0:
        raise InvalidInput("the chosen batches hold no preference pairs", "batches")
    return InputFile(export, digest)


def _baseline_option(run: TrainingRun, kind: str, batches: list[Batch]) -> dict:
    """The job's ``baseline`` option: the current model of ``kind`` on the newest batch."""
    current = current_version(REWARD_ROLE[kind])
    if current is None:
        append_log(run.pk, f"no current {kind} reward model: nothing to evaluate before training")
        return {}
    newest = max(batches, key=lambda batch: (batch.created_at, batch.pk))
    run.metrics = {**run.metrics, "baseline_model": {"id": current.pk, "name": current.name}}
    TrainingRun.objects.filter(pk=run.pk).update(metrics=run.metrics)
    return {"baseline": {"model": current.path, "batch": newest.name}}


def write_job(run: TrainingRun) -> Path:
    """Freeze the run's data and write its job spec; returns the spec's path.

    The spec resumes: the directory is the run's own, and a run sent again continues from its
    job's last checkpoint. The platform trains on every pair of the chosen batches, whatever
    their kind (staff chose them), hence the "all" recipe.
    """
    kind = run_kind(run)
    batches = list(run.batches.order_by("created_at", "pk"))
    if not batches:
        raise InvalidInput("the run has no batches", "batches")
    export = _frozen_export(run, batches)
    options = {"recipe": "all"}
    if "before_training" not in (run.metrics or {}):  # not evaluated yet by a lost worker
        options |= _baseline_option(run, kind, batches)
    directory = training_dir(run)
    spec = RunSpec(
        stage="reward",
        output_dir=directory,
        config=run.config,
        inputs={"data": [export]},
        options=options,
        resume=True,
    )
    spec.write(directory / SPEC_FILE)
    base = run.base_model.name if run.base_model else "?"
    append_log(run.pk, f"training a {kind} reward model from {base} ({run.config['base_model']})")
    return directory / SPEC_FILE


def prepare(run_id: int) -> dict | None:
    """Claim a queued (or stalled) run and write its job; returns the model worker's task
    arguments, ``{"spec_path", "events_from"}``, or None when there is nothing to start (the
    run is taken, finished, or its data could not be frozen: then it failed, with the error)."""
    run, taken_over = _claim(run_id)
    if run is None:
        logger.info("training run %s is not queued, nor stalled: not started again", run_id)
        return None
    if taken_over:
        append_log(run.pk, "its worker was lost: sent again, resuming from the last checkpoint")
    try:
        spec_path = write_job(run)
    except Exception as error:
        logger.exception("training run %s could not start", run_id)
        fail(run_id, f"{type(error).__name__}: {error}", traceback.format_exc())
        return None
    TrainingRun.objects.filter(pk=run.pk).update(progress=TRAINING_START)
    return {"spec_path": str(spec_path), "events_from": run.events_mirrored}


# --- mirroring the job's events -----------------------------------------------------------------


def _step_line(event: Mapping[str, Any]) -> str | None:
    step, total = event["step"], event["total_steps"] or 0
    every = max(1, total // STEP_LOG_LINES)
    if step % every and step != total:
        return None
    parts = [f"step {step}/{total}" if total else f"step {step}"]
    for key, label, fmt in (
        ("loss", "loss", ".4f"),
        ("learning_rate", "lr", ".2e"),
        ("pairs_per_second", "pairs/s", ".1f"),
    ):
        if isinstance(event.get(key), int | float):
            parts.append(f"{label} {event[key]:{fmt}}")
    return " · ".join(parts)


def _event_line(event: Mapping[str, Any]) -> str | None:
    """The log line an event adds to the run's page (None: it adds none)."""
    kind = event["type"]
    if kind == "log":
        return str(event["message"])
    if kind == "step":
        return _step_line(event)
    if kind == "evaluation":
        metrics = event["metrics"] or {}
        accuracy = metrics.get("accuracy")
        shown = f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "—"
        return (
            f"evaluation at step {event['step']}: accuracy {shown} on "
            f"{metrics.get('pairs', '?')} held-out pairs"
        )
    if kind == "baseline":
        accuracy = (event["metrics"] or {}).get("accuracy")
        if isinstance(accuracy, int | float):
            return f"before training: accuracy {accuracy:.3f} on {event['batch']!r}"
        return f"before training: not evaluated: {event['error']}"
    if kind == "error":
        return f"{event['message']}\n{event['traceback']}"
    return None


def _before_training(run: TrainingRun, event: Mapping[str, Any]) -> dict:
    """A baseline event as the run's ``before_training`` metrics (the page's second row)."""
    result = {
        "model_version": (run.metrics or {}).get("baseline_model"),
        "batch": event["batch"],
        "pairs": event["pairs"],
    }
    if event["metrics"] is not None:
        result["metrics"] = event["metrics"]
    if event["error"]:
        result["error"] = event["error"]
    return json_safe(result)


def record_events(run_id: int, index: int, events: list[dict], *, allow_gap: bool = False) -> str:
    """Mirror a batch of a running run's job events, ``index`` the position of the first in
    its log; returns "applied", "early" (an earlier batch is not in yet: send it again later;
    with ``allow_gap``, the batch is applied, the missing events skipped) or "ignored" (the run
    is not running). Also the run's heartbeat: an empty batch beats."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status != TrainingRun.Status.RUNNING:
            return "ignored"
        if index > run.events_mirrored and not allow_gap:
            return "early"
        new = events[max(0, run.events_mirrored - index) :]
        lines = [line for event in new if (line := _event_line(event)) is not None]
        changes: dict[str, Any] = {
            "heartbeat_at": timezone.now(),
            "events_mirrored": max(run.events_mirrored, index) + len(new),
        }
        if lines:
            text = "".join(_stamped(line) for line in lines)
            changes["logs"] = Concat(F("logs"), Value(text), output_field=TextField())
        fractions = [event["fraction"] for event in new if event["type"] == "progress"]
        if fractions:
            share = min(1.0, max(0.0, fractions[-1]))
            changes["progress"] = TRAINING_START + (TRAINING_END - TRAINING_START) * share
        metrics = dict(run.metrics or {})
        for event in new:  # shown on the run's pages while it trains
            if event["type"] == "data":
                metrics |= {"train_pairs": event["train"], "eval_pairs": event["held_out"]}
            elif event["type"] == "baseline":
                metrics["before_training"] = _before_training(run, event)
        if metrics != (run.metrics or {}):
            changes["metrics"] = metrics
        TrainingRun.objects.filter(pk=run_id).update(**changes)
    return "applied"


# --- the end of a run ---------------------------------------------------------------------------


def fail(run_id: int, error: str, details: str = "") -> None:
    """Fail a running run with ``error``; ``details`` (a traceback) goes to its logs."""
    if details:
        append_log(run_id, details)
    TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).update(
        status=TrainingRun.Status.FAILED, error=error, finished_at=timezone.now()
    )


def _register(run: TrainingRun, job: Mapping[str, Any], model_dir: str) -> ModelVersion:
    """The run's model as a new version, not current, and the run succeeded, together."""
    kind = run_kind(run)
    before = (run.metrics or {}).get("before_training")
    metrics = json_safe(
        {
            **(run.metrics or {}),
            "eval": job["metrics"],
            "history": job["history"],
            "steps": job["steps"],
            "train_pairs": job["train_pairs"],
            "eval_pairs": job["eval_pairs"],
            "seconds": job["seconds"],
        }
    )
    with transaction.atomic():
        version = register_model(
            model_dir,
            REWARD_ROLE[kind],
            name=f"{REWARD_ROLE[kind]} run {run.pk}",
            parent=run.base_model,
            metrics=json_safe(
                {
                    **(job["metrics"] or {}),
                    "history": job["history"],
                    "steps": job["steps"],
                    "train_pairs": job["train_pairs"],
                    "before_training": before,
                }
            ),
            training_run=run,
        )
        append_log(run.pk, f"{job['summary']} in {job['seconds']:.1f} s")
        append_log(run.pk, f"registered {version.name!r} (not current: promote it to use it)")
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.Status.SUCCEEDED,
            progress=1.0,
            metrics=metrics,
            finished_at=timezone.now(),
        )
    return version


def finish(run_id: int, report: Mapping[str, Any]) -> str:
    """Record how a run's job ended (the model worker's report); returns the run's status.

    Succeeded: the model is registered as a new version, not current. Failed: the run fails
    with the job's error, the registry as it was. Skipped (another worker runs the job) and a
    run that is not running (finished already): nothing changes.
    """
    run = TrainingRun.objects.filter(pk=run_id).select_related("base_model").first()
    if run is None or report.get("status") == "skipped":
        return "skipped"
    if run.status != TrainingRun.Status.RUNNING:
        return run.status
    if report["status"] != "succeeded":
        if report.get("output_tail") and "Traceback" not in (run.logs or ""):
            append_log(run_id, report["output_tail"])
        fail(run_id, report["error"] or "the training job failed")
        return TrainingRun.Status.FAILED
    try:
        _register(run, report["metrics"], report["model_dir"])
    except Exception as error:
        logger.exception("the model of training run %s could not be registered", run_id)
        fail(run_id, f"{type(error).__name__}: {error}", traceback.format_exc())
        return TrainingRun.Status.FAILED
    return TrainingRun.Status.SUCCEEDED
