"""Retraining the reward models from the platform (DESIGN.md, "Reward model").

Two halves, one per process:

- In the web process, :func:`start_reward_training` checks a request (kind, batches, base model,
  hyperparameters, the latter by ``rlhf.reward.config.RewardTrainingConfig`` itself so that
  the page, the API and the CLI accept exactly the same configs), creates a queued
  :class:`TrainingRun` and records it in the outbox (``services/outbox.py``), which sends it
  to the ``training`` queue once the transaction commits, and again until a worker takes it.
  A bad request raises :class:`InvalidInput` naming the field, and creates nothing.
- In a worker on the ``training`` queue, :func:`run_reward_training` does the run, in the order
  of Llama 2's protocol: freeze the data (a training export written to a file whose SHA-256 is
  stored, so that the run can be reproduced whatever is annotated later), evaluate the *current*
  reward model on the newest batch before training on it (how well the old model predicts new
  data, the paper's check of when to retrain), train, and register the result as a new, not
  current, model version. Staff compare it and promote it themselves; a failed run leaves the
  registry as it was.

``rlhf`` (and with it torch) is imported inside the functions that need it, so that web
processes that never validate a config never load it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import Count, F, QuerySet, TextField, Value
from django.db.models.functions import Concat
from django.utils import timezone

from annotation_app.errors import Conflict, InvalidInput
from annotation_app.models import Annotation, Batch, ModelVersion, OutboxMessage, TrainingRun
from annotation_app.services import outbox
from annotation_app.services.exports import (
    dropped_safety_annotations,
    reference_only_comparisons,
    write_export,
)
from annotation_app.services.generation import default_policy
from annotation_app.services.registry import current_version, promote, register_model
from rlhf.preferences import STRENGTH_LABELS

logger = logging.getLogger(__name__)

KINDS = ("helpfulness", "safety")
RUN_KIND = {
    "helpfulness": TrainingRun.Kind.REWARD_HELPFULNESS,
    "safety": TrainingRun.Kind.REWARD_SAFETY,
}
REWARD_ROLE = {
    "helpfulness": ModelVersion.Role.REWARD_HELPFULNESS,
    "safety": ModelVersion.Role.REWARD_SAFETY,
}
# Config keys the run sets itself: the kind and the base model are chosen as such, not typed.
RUN_KEYS = ("kind", "base_model")
EXPORT_FILE = "preferences.jsonl"
MODEL_DIR = "model"
# Progress: the steps of training fill [TRAINING_START, TRAINING_END]; the rest is data, the
# evaluation before training, and the final evaluation and registration.
TRAINING_START, TRAINING_END = 0.05, 0.95
# The run row is written at most this often while training (progress and log lines).
WRITE_INTERVAL_S = 0.5
# A running run's heartbeat is written this often (PAIRWISE_TRAINING_STALL_SECONDS: stalled).
HEARTBEAT_INTERVAL_S = 60
# At most about this many step lines go to a run's logs (every step of a short run, every
# n-th of a long one), so that appending stays cheap; the full loss history is in its metrics.
STEP_LOG_LINES = 500
LOG_TAIL_LINES = 200


# --- the form: hyperparameters ------------------------------------------------------------------


@dataclass(frozen=True)
class Hyperparameter:
    """A field of ``RewardTrainingConfig`` as the training page shows it."""

    name: str
    label: str
    type: type
    help: str = ""
    choices: tuple[str, ...] = ()
    advanced: bool = False


HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("learning_rate", "Learning rate", float, "Llama 2: 1e-5 (5e-6 at 70B)."),
    Hyperparameter(
        "micro_batch_size",
        "Batch size",
        int,
        "Pairs per step and device; × accumulation × devices is the effective batch "
        "(Llama 2: 512 pairs).",
    ),
    Hyperparameter("gradient_accumulation_steps", "Gradient accumulation", int),
    Hyperparameter(
        "max_length", "Max length", int, "Tokens per text; longer contexts lose their oldest turns."
    ),
    Hyperparameter("epochs", "Epochs", int, "Llama 2 trains one epoch: more over-fits."),
    Hyperparameter("max_steps", "Max steps", int, "Stop after this many steps; blank: no limit."),
    Hyperparameter(
        "margin_table",
        "Margin table",
        str,
        "Loss margin per rating: small {1, 2/3, 1/3, 0}, large {3, 2, 1, 0}, none.",
        choices=("small", "large", "none"),
    ),
    Hyperparameter(
        "eval_fraction",
        "Held-out fraction",
        float,
        "Share of prompts held out for evaluation (a prompt is never on both sides).",
    ),
    Hyperparameter("seed", "Seed", int, "Fixes the split, the order and the new head."),
    Hyperparameter("warmup_ratio", "Warm-up ratio", float, "Llama 2: 3 %.", advanced=True),
    Hyperparameter(
        "min_lr_ratio", "Final LR ratio", float, "Cosine decay to 10 % of the max.", advanced=True
    ),
    Hyperparameter("weight_decay", "Weight decay", float, advanced=True),
    Hyperparameter("max_grad_norm", "Gradient clipping", float, advanced=True),
    Hyperparameter(
        "mixed_precision",
        "Mixed precision",
        str,
        choices=("auto", "no", "bf16", "fp16"),
        advanced=True,
    ),
    Hyperparameter(
        "prefix_sharing",
        "Prefix sharing",
        str,
        "Score chosen and rejected in one pass, the shared context once (decoders).",
        choices=("auto", "on", "off"),
        advanced=True,
    ),
    Hyperparameter("eval_every", "Evaluate every (steps)", int, "0: at the end.", advanced=True),
)


def hyperparameter_defaults() -> dict[str, Any]:
    """The library's defaults of the fields the page shows (the paper's values)."""
    from rlhf.reward.config import RewardTrainingConfig

    defaults = RewardTrainingConfig().to_dict()
    return {hp.name: defaults[hp.name] for hp in HYPERPARAMETERS}


def config_from_form(data: Mapping[str, str]) -> dict[str, Any]:
    """A config dict from the training page's form: typed, blank fields left to the library."""
    config: dict[str, Any] = {}
    for hp in HYPERPARAMETERS:
        raw = (data.get(hp.name) or "").strip()
        if not raw:
            continue
        if hp.type is str:
            config[hp.name] = raw
            continue
        try:
            config[hp.name] = int(raw) if hp.type is int else float(raw)
        except ValueError:
            what = "a whole number" if hp.type is int else "a number"
            raise InvalidInput(f"{hp.label} must be {what}, not {raw!r}", hp.name) from None
    return config


# --- what can be trained on, and from -----------------------------------------------------------


def exportable_pair_counts(batches: Iterable[Batch] | None = None) -> dict[int, int]:
    """Training pairs per batch id, as the training export will write them.

    Annotations count unless the paper's safety rule drops them; imported comparisons that no
    one annotated count once for their reference preference.
    """
    annotations = Annotation.objects.exclude(dropped_safety_annotations())
    if batches is not None:
        batches = list(batches)
        annotations = annotations.filter(batch__in=batches)
    counts: dict[int, int] = dict(
        annotations.values_list("batch").annotate(n=Count("id")).order_by()
    )
    references = (
        reference_only_comparisons(batches).values_list("batch").annotate(n=Count("id")).order_by()
    )
    for batch_id, count in references:
        counts[batch_id] = counts.get(batch_id, 0) + count
    return counts


def batches_for_training() -> list[Batch]:
    """Every batch, newest first, each with ``exportable_pairs`` set."""
    batches = list(Batch.objects.order_by("-created_at", "-pk"))
    counts = exportable_pair_counts()
    for batch in batches:
        batch.exportable_pairs = counts.get(batch.pk, 0)
    return batches


def base_model_choices() -> QuerySet[ModelVersion]:
    """The versions a reward model may start from: a policy, or a reward model to continue."""
    return ModelVersion.objects.filter(
        role__in=[ModelVersion.Role.POLICY, *REWARD_ROLE.values()]
    ).order_by("role", "-is_current", "-created_at")


def _check_base_model(kind: str, base_model: ModelVersion) -> None:
    allowed = {ModelVersion.Role.POLICY, REWARD_ROLE[kind]}
    if base_model.role not in allowed:
        raise InvalidInput(
            f"a {kind} reward model starts from a policy or a {kind} reward model, not from "
            f"{base_model.name!r} ({base_model.get_role_display()})",
            "base_model",
        )


def validate_config(kind: str, base_model: ModelVersion, config: Mapping[str, Any]) -> dict:
    """The full training config, checked by ``RewardTrainingConfig.from_dict``.

    Errors name the field as ``config.<name>``.
    """
    from rlhf.reward.config import ConfigError, RewardTrainingConfig

    if not isinstance(config, Mapping):
        raise InvalidInput("must be an object of hyperparameters", "config")
    for key in RUN_KEYS:
        if key in config:
            raise InvalidInput(
                f"is chosen as the run's {key.replace('_', ' ')}, not in its config",
                f"config.{key}",
            )
    # Checkpoints unless the config says otherwise: a run taken over resumes from the last.
    every = settings.PAIRWISE_TRAINING_CHECKPOINT_EVERY
    try:
        checked = RewardTrainingConfig.from_dict(
            {"checkpoint_every": every, **config, "kind": kind, "base_model": base_model.path}
        )
    except ConfigError as error:
        raise InvalidInput(str(error), f"config.{error.field}") from None
    return checked.to_dict()


# --- starting a run (web process) ---------------------------------------------------------------


def start_reward_training(
    user,
    kind: str,
    batches: Iterable[Batch],
    base_model: ModelVersion | None = None,
    config: Mapping[str, Any] | None = None,
) -> TrainingRun:
    """Queue a reward-model run on ``batches``; nothing is created if anything is wrong.

    ``base_model`` defaults to the current policy (Llama 2 initialises its reward models from
    the chat model checkpoint); pass the current reward model of ``kind`` to continue it.
    ``config`` holds the hyperparameters (``RewardTrainingConfig`` fields but ``kind`` and
    ``base_model``); missing ones take the library's defaults.
    """
    if kind not in KINDS:
        raise InvalidInput(f"must be one of {list(KINDS)}, not {kind!r}", "kind")
    batches = list(batches)
    if not batches:
        raise InvalidInput("choose at least one batch to train on", "batches")
    # One transaction: registering PAIRWISE_POLICY as the default base is undone too if the
    # request turns out to be bad.
    with transaction.atomic():
        if base_model is None:
            base_model = default_policy()
            if base_model is None:
                raise InvalidInput(
                    "no current policy to start from: choose a base model, or register a policy",
                    "base_model",
                )
        _check_base_model(kind, base_model)
        checked = validate_config(kind, base_model, config or {})
        counts = exportable_pair_counts(batches)
        if not any(counts.get(batch.pk) for batch in batches):
            raise InvalidInput(
                "the chosen batches hold no preference pairs yet (no annotations, and no "
                "imported preferences)",
                "batches",
            )
        run = TrainingRun.objects.create(
            kind=RUN_KIND[kind],
            config=checked,
            base_model=base_model,
            created_by=user if getattr(user, "is_authenticated", False) else None,
        )
        run.batches.set(batches)
        # Sent once committed; with the broker down the run stays queued and is sent later.
        # Without a broker (the embedded demo) it runs in a background thread of this process.
        outbox.enqueue(OutboxMessage.Kind.TRAINING, [{"run_id": run.pk}])
    return run


def promote_run_output(run: TrainingRun) -> ModelVersion:
    """Make the model a succeeded run produced the current one of its role."""
    version = run.outputs.order_by("-created_at").first()
    if run.status != TrainingRun.Status.SUCCEEDED or version is None:
        raise Conflict(f"run {run.pk} produced no model to promote (it is {run.status})")
    return promote(version)


# --- doing a run (training worker) --------------------------------------------------------------


def run_kind(run: TrainingRun) -> str:
    """``helpfulness`` or ``safety``: the kind of reward model a run trains."""
    for kind, value in RUN_KIND.items():
        if run.kind == value:
            return kind
    raise InvalidInput(f"run {run.pk} is a {run.kind} run, not a reward-model run", "kind")


def training_dir(run: TrainingRun) -> Path:
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


class RunReporter:
    """Progress and log lines of a run, written to its row at most every ``interval`` seconds.

    Appending in SQL (``logs || text``) never rewrites what is already stored, and the
    throttle keeps a fast training loop from turning into a stream of database writes.
    """

    def __init__(self, run_id: int, *, interval: float = WRITE_INTERVAL_S):
        self.run_id = run_id
        self.interval = interval
        self.lines: list[str] = []
        self.progress: float | None = None
        self.last_write = 0.0

    def log(self, message: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        for line in message.rstrip("\n").split("\n"):
            self.lines.append(f"[{stamp}] {line}\n")
        self.flush(force=False)

    def set_progress(self, fraction: float) -> None:
        self.progress = min(1.0, max(0.0, fraction))
        self.flush(force=False)

    def event(self, event: Mapping[str, Any]) -> None:
        """The progress callback of ``rlhf.reward.training.train_reward_model``."""
        kind = event.get("event")
        if kind == "step":
            step, total = event.get("step", 0), event.get("total_steps") or 0
            every = max(1, total // STEP_LOG_LINES)
            if step % every == 0 or step == total:
                parts = [f"step {step}/{total}" if total else f"step {step}"]
                for key, label, fmt in (
                    ("loss", "loss", ".4f"),
                    ("learning_rate", "lr", ".2e"),
                    ("pairs_per_second", "pairs/s", ".1f"),
                ):
                    if isinstance(event.get(key), int | float):
                        parts.append(f"{label} {event[key]:{fmt}}")
                self.lines.append(f"[{timezone.now():%H:%M:%S}] {' · '.join(parts)}\n")
            if total:
                share = min(1.0, step / total)
                self.progress = TRAINING_START + (TRAINING_END - TRAINING_START) * share
            self.flush(force=False)
        elif kind == "eval":
            metrics = event.get("metrics") or {}
            accuracy = metrics.get("accuracy")
            shown = f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "—"
            self.log(
                f"evaluation at step {event.get('step')}: accuracy {shown} on "
                f"{metrics.get('pairs', '?')} held-out pairs"
            )
        elif kind == "log":
            self.log(str(event.get("message", "")))
        else:
            self.log(f"{event}")

    def flush(self, *, force: bool = True) -> None:
        if not force and time.monotonic() - self.last_write < self.interval:
            return
        if not self.lines and self.progress is None:
            return
        changes: dict[str, Any] = {}
        if self.lines:
            appended = Value("".join(self.lines))
            changes["logs"] = Concat(F("logs"), appended, output_field=TextField())
        if self.progress is not None:
            changes["progress"] = self.progress
        try:
            TrainingRun.objects.filter(pk=self.run_id).update(**changes)
        except DatabaseError:  # a database hiccup must not stop the training: retry later
            logger.warning("could not write the progress of run %s", self.run_id, exc_info=True)
            return
        self.lines, self.progress = [], None
        self.last_write = time.monotonic()


class Heartbeat:
    """Writes the run's ``heartbeat_at`` every ``interval`` seconds from a thread, while the
    worker lives: quiet phases (a long evaluation) beat too, a killed worker stops."""

    def __init__(self, run_id: int, *, interval: float = HEARTBEAT_INTERVAL_S):
        self.run_id, self.interval = run_id, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(
            target=self._beat, name=f"pairwise-heartbeat-{run_id}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self.thread.join()

    def _beat(self) -> None:
        try:
            while not self.stopped.wait(self.interval):
                try:
                    TrainingRun.objects.filter(
                        pk=self.run_id, status=TrainingRun.Status.RUNNING
                    ).update(heartbeat_at=timezone.now())
                except DatabaseError:
                    logger.warning("no heartbeat for run %s", self.run_id, exc_info=True)
        finally:
            connections.close_all()  # this thread's own connections


def is_stalled(run: TrainingRun, now: datetime | None = None) -> bool:
    """A running run whose progress writes stopped ``PAIRWISE_TRAINING_STALL_SECONDS`` ago."""
    if run.status != TrainingRun.Status.RUNNING:
        return False
    last_sign = run.heartbeat_at or run.started_at
    limit = timedelta(seconds=settings.PAIRWISE_TRAINING_STALL_SECONDS)
    return last_sign is None or (now or timezone.now()) - last_sign > limit


def _claim(run_id: int) -> tuple[TrainingRun | None, bool]:
    """Mark a run running and return it, with whether it was taken over from a lost worker.

    Under a row lock, a queued run starts and a stalled one (:func:`is_stalled`) is taken
    over; any other run is left alone, (None, False), so that a task delivered twice (a
    visibility timeout shorter than the training) never trains a healthy run twice.
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
    return count, _sha256(path)


def _sha256(path: Path) -> str | None:
    """The file's SHA-256, None when there is no such file."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _newest(batches: list[Batch]) -> Batch:
    return max(batches, key=lambda batch: (batch.created_at, batch.pk))


def evaluate_before_training(
    kind: str, newest: Batch, pairs: list, config, reporter: RunReporter
) -> dict | None:
    """Accuracy of the current reward model of ``kind`` on the newest batch, before training.

    None when there is no current model. A model that cannot be evaluated (its directory gone,
    say) is reported in the result and the logs, not raised: the check informs the decision to
    promote, it is not a reason to withhold the new model.
    """
    current = current_version(REWARD_ROLE[kind])
    if current is None:
        reporter.log(f"no current {kind} reward model: nothing to evaluate before training")
        return None
    batch_pairs = [pair for pair in pairs if pair.batch == newest.name]
    result: dict[str, Any] = {
        "model_version": {"id": current.pk, "name": current.name},
        "batch": newest.name,
        "pairs": len(batch_pairs),
    }
    if not batch_pairs:
        result["error"] = f"batch {newest.name!r} holds no preference pairs"
        return result
    reporter.log(
        f"evaluating the current {kind} reward model {current.name!r} on the newest batch "
        f"{newest.name!r} ({len(batch_pairs)} pairs) before training"
    )
    try:
        import torch

        from rlhf.reward.evaluation import evaluate_reward_model
        from rlhf.reward.model import load_reward_backbone

        # The backbone loader reads a saved reward model's head too, and unlike
        # load_reward_model it needs no pairwise_reward.json (a model registered by hand).
        model, tokenizer = load_reward_backbone(current.path)
        on_gpu = torch.cuda.is_available() and not config.cpu
        if on_gpu:
            model.to("cuda")
        try:
            result["metrics"] = evaluate_reward_model(
                model,
                tokenizer,
                batch_pairs,
                batch_size=config.eval_batch_size,
                max_length=config.max_length,
            )
        finally:
            del model
            if on_gpu:
                torch.cuda.empty_cache()
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
        reporter.log(f"could not evaluate {current.name!r}:\n{traceback.format_exc()}")
        return result
    accuracy = result["metrics"].get("accuracy")
    if isinstance(accuracy, int | float):
        reporter.log(f"before training: accuracy {accuracy:.3f} on {newest.name!r}")
    return result


def _train(run: TrainingRun, reporter: RunReporter) -> None:
    from rlhf.data.pairs import load_pairs
    from rlhf.data.split import split
    from rlhf.reward.config import RewardTrainingConfig
    from rlhf.reward.training import train_reward_model

    kind = run_kind(run)
    config = RewardTrainingConfig.from_dict(run.config)
    batches = list(run.batches.order_by("created_at", "pk"))
    if not batches:
        raise InvalidInput("the run has no batches", "batches")
    directory = training_dir(run)

    # 1. The data snapshot: frozen once; a run taken over trains on the very same pairs.
    export = directory / EXPORT_FILE
    if run.export_sha256 and _sha256(export) == run.export_sha256:
        count = len(export.read_text(encoding="utf-8").splitlines())
        reporter.log(f"the frozen export {export} is kept ({count} pairs)")
    else:
        count, digest = freeze_export(batches, config.margin_table, export, log=reporter.log)
        TrainingRun.objects.filter(pk=run.pk).update(export_path=str(export), export_sha256=digest)
        reporter.log(
            f"froze {count} preference pairs of {len(batches)} batch(es) "
            f"({', '.join(b.name for b in batches)}) in {export}, sha256 {digest}"
        )
    if count == 0:
        raise InvalidInput("the chosen batches hold no preference pairs", "batches")

    # 2. Pairs, and the held-out split (by prompt: no prompt on both sides).
    # The export has already dropped the safety pairs the paper drops (exports.training_record).
    pairs = load_pairs(export, margin_table=config.margin_table)
    train_pairs, eval_pairs = split(pairs, config.eval_fraction, config.seed)
    reporter.log(f"{len(train_pairs)} pairs to train on, {len(eval_pairs)} held out")
    # Shown on the run's pages while it trains (the final metrics write them again).
    counts = {"train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs), "export_pairs": count}
    run.metrics = {**(run.metrics or {}), **counts}
    TrainingRun.objects.filter(pk=run.pk).update(metrics=run.metrics)
    if not train_pairs:
        raise InvalidInput(
            f"every pair is held out at eval_fraction {config.eval_fraction}: lower it or add data",
            "config.eval_fraction",
        )
    reporter.set_progress(0.02)

    # 3. The current model on the newest data, before training on it.
    newest = _newest(batches)
    before = None
    if "before_training" not in (run.metrics or {}):  # done already by a lost worker
        before = evaluate_before_training(kind, newest, pairs, config, reporter)
    if before is not None:
        run.metrics = {**(run.metrics or {}), "before_training": json_safe(before)}
        TrainingRun.objects.filter(pk=run.pk).update(metrics=run.metrics)
    reporter.set_progress(TRAINING_START)

    # 4. Training.
    out_dir = directory / MODEL_DIR
    reporter.log(
        f"training a {kind} reward model from {run.base_model.name if run.base_model else '?'} "
        f"({config.base_model})"
    )
    reporter.flush()
    result = train_reward_model(config, train_pairs, eval_pairs, out_dir, progress=reporter.event)
    reporter.log(
        f"{result.summary('max_steps' if config.max_steps is not None else None)} "
        f"in {result.seconds:.1f} s"
    )
    reporter.flush()

    # 5. A new version, not current, and the run's final state, together.
    metrics = json_safe(
        {
            **(run.metrics or {}),
            "eval": result.metrics,
            "history": result.history,
            "steps": result.steps,
            "train_pairs": result.train_pairs,
            "eval_pairs": len(eval_pairs),
            "seconds": result.seconds,
            "export_pairs": count,
        }
    )
    with transaction.atomic():
        version = register_model(
            str(result.out_dir),
            REWARD_ROLE[kind],
            name=f"{REWARD_ROLE[kind]} run {run.pk}",
            parent=run.base_model,
            metrics=json_safe(
                {
                    **(result.metrics or {}),
                    "history": result.history,
                    "steps": result.steps,
                    "train_pairs": result.train_pairs,
                    "before_training": (run.metrics or {}).get("before_training"),
                }
            ),
            training_run=run,
        )
        reporter.log(f"registered {version.name!r} (not current: promote it to use it)")
        reporter.flush()
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.Status.SUCCEEDED,
            progress=1.0,
            metrics=metrics,
            finished_at=timezone.now(),
        )


def run_reward_training(run_id: int, outbox_id: int | None = None) -> str:
    """Do a queued run (the task's body); returns its final status, or "skipped".

    Any error fails the run with its message (the traceback goes to the logs); the registry is
    only written on success, so the current models stay as they were. The outbox message that
    sent the run (``outbox_id``) is answered once the run is claimed, or found not queued.
    """
    run, taken_over = _claim(run_id)
    outbox.mark_done(outbox_id)
    if run is None:
        logger.info("training run %s is not queued, nor stalled: not started again", run_id)
        return "skipped"
    reporter = RunReporter(run.pk)
    if taken_over:
        reporter.log("its worker was lost: taken over, resuming from the last checkpoint")
    try:
        with Heartbeat(run.pk):
            _train(run, reporter)
    except Exception as error:
        logger.exception("training run %s failed", run_id)
        reporter.lines.append(traceback.format_exc())
        reporter.flush()
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).update(
            status=TrainingRun.Status.FAILED,
            error=f"{type(error).__name__}: {error}",
            finished_at=timezone.now(),
        )
        return TrainingRun.Status.FAILED
    return TrainingRun.Status.SUCCEEDED


# --- reading a run (pages) ----------------------------------------------------------------------


def log_tail(run: TrainingRun, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(run.logs.rstrip("\n").split("\n")[-lines:]) if run.logs else ""


# Rating buckets in the column order of Llama 2's Table 8, then the unrated (imported) pairs.
# Table 8's columns: the rating scale's labels (rlhf.preferences), then imported, unrated pairs.
BUCKETS: tuple[tuple[str, str], ...] = (
    *((strength.value, label) for strength, label in STRENGTH_LABELS.items()),
    ("unrated", "Unrated (imported)"),
)


def _accuracy_row(label: str, metrics: Mapping[str, Any]) -> dict:
    by_strength = metrics.get("by_strength") or {}
    return {
        "label": label,
        "cells": {key: by_strength.get(key) for key, _ in BUCKETS},
        "overall": {"pairs": metrics.get("pairs"), "accuracy": metrics.get("accuracy")},
    }


def metrics_report(run: TrainingRun) -> dict:
    """A run's metrics shaped for its page: the Table 8 rows, per batch, calibration, safety.

    Plain data; missing parts are None, so that a run that failed half-way still shows what
    it has (the evaluation before training, say).
    """
    metrics = run.metrics or {}
    evaluation = metrics.get("eval") or {}
    before = metrics.get("before_training")
    rows = []
    if evaluation.get("pairs"):
        rows.append(_accuracy_row("After training, held-out pairs", evaluation))
    if before and before.get("metrics"):
        rows.append(
            _accuracy_row(
                f"Before training: {before['model_version']['name']} on {before['batch']}",
                before["metrics"],
            )
        )
    present = {key for row in rows for key, cell in row["cells"].items() if cell}
    columns = [(key, label) for key, label in BUCKETS if key in present or key != "unrated"]
    by_batch = [
        {"batch": name, **values}
        for name, values in sorted((evaluation.get("by_batch") or {}).items())
    ]
    return {
        "columns": columns,
        "rows": rows,
        "by_batch": by_batch,
        "by_kind": evaluation.get("by_kind") or {},
        "loss": evaluation.get("loss"),
        "ece": evaluation.get("ece"),
        "calibration": evaluation.get("calibration") or [],
        "safety_gate": evaluation.get("safety_gate"),
        "before_training": before,
        "history": metrics.get("history") or [],
        "steps": metrics.get("steps"),
        "train_pairs": metrics.get("train_pairs"),
        "eval_pairs": metrics.get("eval_pairs"),
        "seconds": metrics.get("seconds"),
    }
