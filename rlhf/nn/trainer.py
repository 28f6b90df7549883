"""The training loop on ``accelerate``, written once for every trainer.

    class _Trainer(Trainer):
        def __init__(self, config, data, out_dir, progress):
            super().__init__(config, out_dir, progress)  # the accelerator, the seed
            ...  # the data: self.steps, self.batches (each step's global batch), self.data_digest
            self.prepare(model)  # AdamW and its schedule, the model spread over the processes

        def train_step(self, batch): ...  # the loss, through self.optimizer_step
        def units(self, batch): ...  # what a batch holds: {"pairs": 8}
        def evaluate(self): ...

What a trainer says itself: its data, what a batch is and its loss, its evaluation, how it saves
its model (:mod:`rlhf.reward.training`: preference pairs; :mod:`rlhf.sft.training`: packed
conversations). What is the same for all, here:

- AdamW, weight decay on the weight matrices only; the learning rate warms up linearly over
  ``max(min_warmup_steps, ⌈warmup_ratio · steps⌉)`` steps, then decays on a cosine to
  ``min_lr_ratio`` of its maximum, reached at the last step (:func:`learning_rate_factor`);
  gradients clipped to ``max_grad_norm``;
- a *global batch* of ``micro_batch_size × gradient_accumulation_steps × processes`` items per
  optimizer step, every process taking its share (:func:`micro_batches`); gradients accumulated
  over a process's micro-batches and synced once, on the last; the loss the mean over the global
  batch whatever the number of processes (:meth:`Trainer.optimizer_step`);
- mixed precision (bf16 autocast) on GPUs, float32 on CPUs (:func:`mixed_precision`); on
  CPUs, the memory of freed tensors kept for the next step
  (:func:`rlhf.nn.devices.keep_freed_memory`);
- progress events on the main process only (:meth:`Trainer.emit`);
- a checkpoint every ``checkpoint_every`` steps: ``accelerate``'s ``save_state`` (weights,
  optimizer, schedule, random states) and :data:`TRAINER_STATE_FILE`, the step, the loss history
  and what the run must be resumed with; the newest ``keep_checkpoints`` are kept. A run started
  again with the same config, data and number of processes resumes exactly where it stopped
  (:meth:`Trainer.resume`).

The config is one with the settings of :mod:`rlhf.trainer_settings`. Torch and accelerate are
imported where they are used, as in the trainers.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TypeVar

from rlhf.files import normalize_permissions
from rlhf.nn.devices import check_fsdp_device, keep_freed_memory, use_cpu

TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINTS_DIR = "checkpoints"
ProgressCallback = Callable[[dict[str, Any]], None]
MicroBatch = TypeVar("MicroBatch")


# --- the schedule and the batches ---------------------------------------------------------------


def warmup_steps(config: Any, total_steps: int) -> int:
    """``max(min_warmup_steps, ⌈warmup_ratio · total⌉)``, leaving at least one step to decay."""
    if config.warmup_ratio == 0:
        return 0
    wanted = max(config.min_warmup_steps, math.ceil(config.warmup_ratio * total_steps))
    return min(wanted, max(total_steps - 1, 0))


def learning_rate_factor(step: int, total_steps: int, warmup: int, min_ratio: float) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a fraction of the maximum.

    Warm-up: ``(step + 1) / warmup`` for ``step < warmup`` (reaching 1 at its last step); then
    ``min_ratio + (1 − min_ratio) · ½(1 + cos(π t))`` with t going from 0 at the first step
    after the warm-up to 1 at the last step, which hence runs at ``min_ratio`` (a run with a
    single step after its warm-up runs that step at the maximum).
    """
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = total_steps - warmup - 1
    progress = min(1.0, (step - warmup) / decay_steps) if decay_steps > 0 else 0.0
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def micro_batches(
    global_batch: Sequence[int], micro_batch_size: int, accumulation: int, world: int, rank: int
) -> list[list[tuple[int, float]]]:
    """This process's ``accumulation`` micro-batches of ``(index, weight)``.

    The global batch is cut into ``accumulation × world`` slots of ``micro_batch_size``; process
    ``rank`` takes slots ``rank, rank + world, …``. Slots past the end of a short (last) batch
    hold weight-0 copies of its first item: every process runs the same number of forward and
    backward passes (which DDP and FSDP need) and the copies add nothing to the loss. A single
    process needs no filler: it takes its micro-batches in order, the last one perhaps short.
    """
    filled = [(index, 1.0) for index in global_batch]
    if world == 1:  # nothing to keep in step with: no weight-0 filler
        return [filled[i : i + micro_batch_size] for i in range(0, len(filled), micro_batch_size)]
    slots = micro_batch_size * accumulation * world
    filled += [(global_batch[0], 0.0)] * (slots - len(filled))
    chunks = [filled[i : i + micro_batch_size] for i in range(0, slots, micro_batch_size)]
    return chunks[rank::world]


def adamw_with_schedule(model: Any, config: Any, total_steps: int) -> tuple[Any, Any]:
    """``(optimizer, scheduler)``: AdamW over ``model``'s parameters, weight decay on the weight
    matrices but none on norms and biases, and the ``LambdaLR`` of :func:`learning_rate_factor`
    over ``total_steps`` optimizer steps."""
    import torch

    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=config.adam_betas,
        eps=config.adam_epsilon,
        fused=True,  # one kernel for all parameters: ~6x faster steps than the loop on CPUs
    )
    warmup = warmup_steps(config, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: learning_rate_factor(step, total_steps, warmup, config.min_lr_ratio),
    )
    return optimizer, scheduler


# --- where it runs ------------------------------------------------------------------------------


def mixed_precision(config: Any) -> str:
    """The config's ``mixed_precision``; ``"auto"``: bf16 on a GPU that has it, else none."""
    import torch

    if config.mixed_precision != "auto":
        return config.mixed_precision
    if not config.cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint of the latest step in ``out_dir`` whose record was written (complete)."""
    folder = out_dir / CHECKPOINTS_DIR
    candidates = [p for p in folder.glob("step-*") if (p / TRAINER_STATE_FILE).is_file()]
    return max(candidates, key=_checkpoint_step, default=None)


def _checkpoint_step(folder: Path) -> int:
    return int(folder.name.split("-")[1])


def rate(count: float, seconds: float) -> float:
    """``count / seconds``; 0 before any time has passed."""
    return count / seconds if seconds else 0.0


# --- the run ------------------------------------------------------------------------------------


class Trainer:
    """One run's state and the loop around what a subclass says (see the module docstring).

    A subclass's ``__init__`` calls this one first (the accelerator and the seed come before
    anything random), sets ``steps``, ``batches`` and ``data_digest`` (what a checkpoint must be
    resumed with), then calls :meth:`prepare` with its model: a wrapper that holds the model
    trained as ``.model`` and computes the loss.
    """

    def __init__(self, config: Any, out_dir: str | Path, progress: ProgressCallback | None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        check_fsdp_device(config.cpu)
        self.accelerator = Accelerator(
            cpu=use_cpu(config.cpu), mixed_precision=mixed_precision(config)
        )
        keep_freed_memory(self.accelerator.device)
        set_seed(config.seed)
        self.world = self.accelerator.num_processes
        self.steps = 0
        self.batches: list[Any] = []  # each step's global batch, the same on every process
        self.data_digest: dict[str, str] = {}
        self.history: list[dict[str, float]] = []
        self.step = 0

    def prepare(self, model: Any) -> None:
        """``self.model``: ``model`` spread over the processes, with its optimizer and schedule
        (:func:`adamw_with_schedule` over ``self.steps``)."""
        optimizer, scheduler = adamw_with_schedule(model, self.config, self.steps)
        # The scheduler is not prepared: accelerate would step it once per process.
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        self.accelerator.register_for_checkpointing(scheduler)

    # -- what a subclass says --

    def train_step(self, batch: Any) -> float:
        """One optimizer step on a global batch (:meth:`optimizer_step`); its mean loss."""
        raise NotImplementedError

    def units(self, batch: Any) -> dict[str, int]:
        """What a global batch holds, by unit: ``{"pairs": 8}``. The step events report each
        unit's rate since the run (re)started, as ``<unit>_per_second``."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any] | None:
        """The held-out metrics (on the main process; None on the others, or without data)."""
        raise NotImplementedError

    # -- reporting --

    def emit(self, event: dict[str, Any]) -> None:
        if self.progress is not None and self.accelerator.is_main_process:
            self.progress(event)

    def log(self, message: str) -> None:
        self.emit({"event": "log", "message": message})

    def processes(self) -> str:
        """``"1 process (cpu)"``, ``"2 processes (gloo)"``: where the run computes."""
        if self.world == 1:
            return f"1 process ({self.accelerator.device})"
        return f"{self.world} processes ({self.accelerator.state.backend or '?'})"

    # -- checkpoints --

    def state_record(self) -> dict[str, Any]:
        """What a checkpoint holds beside accelerate's state: the step, the loss history, and
        what :meth:`resume` checks (the config, the data, the number of processes)."""
        return {
            "step": self.step,
            "total_steps": self.steps,
            "history": self.history,
            "config": self.config.to_dict(),
            "data": self.data_digest,
            "world_size": self.world,
        }

    def save_checkpoint(self) -> None:
        """``out_dir/checkpoints/step-N``; the record is written last (a checkpoint without it
        is incomplete and never resumed from), then all but the newest ``keep_checkpoints``
        are deleted."""
        folder = self.out_dir / CHECKPOINTS_DIR / f"step-{self.step}"
        self.accelerator.save_state(str(folder))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            normalize_permissions(folder)  # safetensors writes 0600 files (see rlhf.files)
            record = json.dumps(self.state_record(), indent=1)
            (folder / TRAINER_STATE_FILE).write_text(record + "\n", encoding="utf-8")
            older = sorted((self.out_dir / CHECKPOINTS_DIR).glob("step-*"), key=_checkpoint_step)
            for stale in older[: -self.config.keep_checkpoints]:
                shutil.rmtree(stale, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.log(f"checkpoint saved at step {self.step}")

    def resume(self) -> dict[str, Any] | None:
        """Continue from the latest checkpoint in ``out_dir``, if this run wrote one (another
        config, data or number of processes raises ValueError); its record, or None."""
        checkpoint = latest_checkpoint(self.out_dir)
        if checkpoint is None:
            return None
        record = json.loads((checkpoint / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        for key, expected in (
            ("config", self.config.to_dict()),
            ("data", self.data_digest),
            ("world_size", self.world),
        ):
            if record[key] != expected:
                raise ValueError(
                    f"{checkpoint} was written by a run with another {key}; "
                    "use a new output directory or delete its checkpoints"
                )
        self.accelerator.load_state(str(checkpoint))
        self.step, self.history = record["step"], record["history"]
        self.log(f"resumed from {checkpoint} at step {self.step} of {self.steps}")
        return record

    # -- training --

    def optimizer_step(
        self,
        micro_batches: Sequence[MicroBatch],
        weighted_loss: Callable[[MicroBatch], Any],
        denominator: float,
    ) -> float:
        """One optimizer step on this process's ``micro_batches`` of a global batch; the mean
        loss of the global batch.

        ``weighted_loss(micro_batch)`` is the micro-batch's summed (weighted) loss and
        ``denominator`` what the global batch's loss is averaged over, counted on all processes
        together (its items, its counted tokens): the loss is ``Σ weighted_loss / denominator``
        whatever the number of processes or how the global batch falls into micro-batches.
        """
        import torch

        self.model.train()
        loss_sum = torch.zeros((), device=self.accelerator.device)
        for position, micro_batch in enumerate(micro_batches):
            last = position == len(micro_batches) - 1
            sync = self.accelerator.no_sync(self.model) if not last else nullcontext()
            with sync:
                weighted = weighted_loss(micro_batch)
                # DDP and FSDP average gradients over processes: × world makes it a sum, and
                # ÷ denominator the mean over the global batch.
                self.accelerator.backward(weighted * self.world / denominator)
            loss_sum += weighted.detach()
        self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return (self.accelerator.reduce(loss_sum, reduction="sum") / denominator).item()

    def train(self) -> tuple[float, Counter[str]]:
        """The steps from ``self.step`` (after a resume, the checkpoint's) to the last: a step
        event every ``log_every`` steps and at the last, a checkpoint every ``checkpoint_every``,
        an evaluation every ``eval_every`` (but at the last: the caller's). Returns the seconds
        they took and the :meth:`units` they trained."""
        config = self.config
        started = time.perf_counter()
        done: Counter[str] = Counter()
        while self.step < self.steps:
            learning_rate = self.scheduler.get_last_lr()[0]  # the rate this step uses
            batch = self.batches[self.step]
            loss = self.train_step(batch)
            self.step += 1
            self.history.append({"step": self.step, "loss": loss, "learning_rate": learning_rate})
            done.update(self.units(batch))
            elapsed = time.perf_counter() - started
            if self.step % config.log_every == 0 or self.step == self.steps:
                self.emit(
                    {
                        "event": "step",
                        "step": self.step,
                        "total_steps": self.steps,
                        "loss": loss,
                        "learning_rate": learning_rate,
                        **{f"{unit}_per_second": rate(n, elapsed) for unit, n in done.items()},
                    }
                )
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.save_checkpoint()
            if config.eval_every and self.step % config.eval_every == 0 and self.step < self.steps:
                self.emit({"event": "eval", "step": self.step, "metrics": self.evaluate()})
        return time.perf_counter() - started, done

    def unwrapped_weights(self) -> tuple[Any, dict[str, Any]] | None:
        """``(model, weights)``: the model trained, out of its wrapper, and its weights, on the
        main process; None on the others. Every process calls it: FSDP gathers its shards from
        all of them."""
        state = self.accelerator.get_state_dict(self.model)
        if not self.accelerator.is_main_process:
            return None
        inner = self.accelerator.unwrap_model(self.model).model
        weights = {
            name.removeprefix("model."): tensor
            for name, tensor in state.items()
            if name.startswith("model.")
        }
        return inner, weights


__all__ = [
    "CHECKPOINTS_DIR",
    "TRAINER_STATE_FILE",
    "ProgressCallback",
    "Trainer",
    "adamw_with_schedule",
    "latest_checkpoint",
    "learning_rate_factor",
    "micro_batches",
    "mixed_precision",
    "rate",
    "warmup_steps",
]
