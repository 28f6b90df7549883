"""Training a reward model on preference pairs, the Llama 2 way, on one CPU or many GPUs.

    config = RewardTrainingConfig(kind="helpfulness", base_model="path/to/policy")
    result = train_reward_model(config, train_pairs, eval_pairs, "out/rm-helpfulness")

What one run does (Touvron et al. 2023, section 3.2.2; DESIGN.md):

- loss ``-log σ(r_c − r_r − m(rating))`` (:func:`rlhf.reward.losses.margin_ranking_loss`),
  each pair's margin from its rating; chosen and rejected scored in one forward pass with their
  shared context
  computed once (:mod:`rlhf.reward.scoring`, decoders), the batch packed in one row without
  padding;
- AdamW; the learning rate warms up linearly over ``max(min_warmup_steps, ⌈3 % · steps⌉)``
  steps, then decays on a cosine to ``min_lr_ratio`` (10 %) of its maximum, reached at the last
  step (:func:`learning_rate_factor`); gradients clipped to ``max_grad_norm``; one epoch;
- a *global batch* of ``micro_batch_size × gradient_accumulation_steps × processes`` pairs per
  optimizer step, its loss the mean over the global batch whatever the number of processes:
  every process takes its share of the same global batches (:func:`global_batches`), so two
  processes with half the accumulation compute the same steps as one;
- mixed precision (bf16 autocast) on GPUs, float32 on CPUs;
- a checkpoint every ``checkpoint_every`` steps (``accelerate``'s ``save_state``: weights,
  optimizer, schedule, random states; plus the step and the loss history), from which a run
  started again with the same config and data resumes exactly where it stopped;
- evaluation on the held-out pairs every ``eval_every`` steps and at the end
  (:mod:`rlhf.reward.evaluation`), each process scoring its share;
- the model saved with :func:`rlhf.reward.model.save_reward_model`, its ``pairwise_reward.json``
  holding the config, the data hashes, the metrics and the loss history.

Distributed runs go through ``accelerate``: ``accelerate launch --multi_gpu --num_processes 2
-m rlhf train-reward …`` (gloo on a machine without GPUs), or with ``--use_fsdp`` on GPUs; the
code is the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.data.pairs import PreferencePair, margins
from rlhf.files import normalize_permissions
from rlhf.nn.devices import use_cpu
from rlhf.reward.config import ConfigError, RewardTrainingConfig

TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINTS_DIR = "checkpoints"
ProgressCallback = Callable[[dict[str, Any]], None]
EvalProgressCallback = Callable[[int, int], None]  # (pairs scored, held-out pairs)


# --- the schedule and the batches ---------------------------------------------------------------


def warmup_steps(config: RewardTrainingConfig, total_steps: int) -> int:
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


def total_steps(config: RewardTrainingConfig, pair_count: int, global_batch_size: int) -> int:
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * pair_count / global_batch_size))


def global_batches(
    pair_count: int,
    global_batch_size: int,
    steps: int,
    seed: int,
    *,
    lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """The pair indices of each of ``steps`` global batches; the same on every process.

    Epoch e visits every pair once, in a random order drawn with seed ``seed + e``; with
    ``lengths`` (batches that pad: the model's own forward), in
    :func:`rlhf.reward.scoring.length_grouped_order` (pairs of similar length together, batches in
    random order). An epoch's last, partial batch is not topped up from the next epoch, so an
    epoch is exactly its pairs. The order depends on the global batch size, never on the number
    of processes.
    """
    from rlhf.reward.scoring import length_grouped_order

    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps:
        if lengths is None:
            order = list(range(pair_count))
            random.Random(seed + epoch).shuffle(order)
        else:
            order = length_grouped_order(lengths, global_batch_size, seed=seed + epoch)
        batches += [
            order[i : i + global_batch_size] for i in range(0, len(order), global_batch_size)
        ]
        epoch += 1
    return batches[:steps]


def micro_batches(
    global_batch: Sequence[int], micro_batch_size: int, accumulation: int, world: int, rank: int
) -> list[list[tuple[int, float]]]:
    """This process's ``accumulation`` micro-batches of ``(pair index, weight)``.

    The global batch is cut into ``accumulation × world`` slots of ``micro_batch_size``; process
    ``rank`` takes slots ``rank, rank + world, …``. Slots past the end of a short (last) batch
    hold weight-0 copies of its first pair: every process runs the same number of forward and
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


def pairs_digest(pairs: Sequence[PreferencePair]) -> str:
    """A SHA-256 of the pairs' content in order (what a checkpoint must be resumed with)."""
    digest = hashlib.sha256()
    for pair in pairs:
        record = [pair.pair_id, pair.context, pair.chosen, pair.rejected, pair.margin]
        digest.update(json.dumps(record, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# --- the run ------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    """What a run did. ``train_pairs`` is the size of the training set; ``pairs_trained`` counts
    the pairs its steps took (repeats included, ``max_steps`` may stop it before an epoch),
    ``distinct_pairs_trained`` the different ones among them."""

    out_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    train_pairs: int = 0
    seconds: float = 0.0
    pairs_per_second: float = 0.0
    pairs_trained: int = 0
    distinct_pairs_trained: int = 0

    def summary(self, step_limit: str | None = None) -> str:
        """``"trained 10 steps on 80 pairs (80 of the 1,881 training pairs; --max-steps stopped
        it)"``: what the steps really saw, not the size of the training set. ``step_limit``
        names the setting that capped the steps, if one did."""
        total, seen, distinct = self.train_pairs, self.pairs_trained, self.distinct_pairs_trained
        if distinct < total:
            reason = f"; {step_limit} stopped it" if step_limit else ""
            coverage = f"{distinct:,} of the {total:,} training pairs{reason}"
        else:
            epochs = seen / total if total else 0.0
            plural = "s" if epochs != 1 else ""
            coverage = f"all {total:,} training pairs, {epochs:.3g} epoch{plural}"
        return f"trained {self.steps} steps on {seen:,} pairs ({coverage})"


def _disable_dropout(model) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _mixed_precision(config: RewardTrainingConfig) -> str:
    import torch

    if config.mixed_precision != "auto":
        return config.mixed_precision
    if not config.cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _latest_checkpoint(out_dir: Path) -> Path | None:
    folder = out_dir / CHECKPOINTS_DIR
    candidates = [p for p in folder.glob("step-*") if (p / TRAINER_STATE_FILE).is_file()]
    return max(candidates, key=lambda p: int(p.name.split("-")[1]), default=None)


class _Trainer:
    """One run's state; :func:`train_reward_model` is its public face."""

    def __init__(self, config, train_pairs, eval_pairs, out_dir, progress, eval_progress=None):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from rlhf.reward.model import load_reward_backbone, usable_length
        from rlhf.reward.scoring import PairRewardModel, encode_pairs

        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        self.eval_progress = eval_progress
        self.train_pairs, self.eval_pairs = list(train_pairs), list(eval_pairs)
        if not self.train_pairs:
            raise ValueError("no training pairs")
        self.accelerator = Accelerator(
            cpu=use_cpu(config.cpu), mixed_precision=_mixed_precision(config)
        )
        set_seed(config.seed)
        self.log(f"loading the backbone {config.base_model}")
        model, self.tokenizer = load_reward_backbone(config.base_model)
        if config.disable_dropout:
            _disable_dropout(model)
        wrapper = PairRewardModel(model)
        can_share = wrapper.packed and wrapper.prefix_sharing
        if config.prefix_sharing == "on" and not can_share:
            raise ConfigError("prefix_sharing", f"{type(model).__name__} cannot share a prefix")
        self.prefix_sharing = can_share and config.prefix_sharing != "off"
        self.wrapper = wrapper
        self.max_length = usable_length(model, config.max_length)
        self.encoded = encode_pairs(self.tokenizer, self.train_pairs, max_length=self.max_length)
        self.eval_encoded = encode_pairs(
            self.tokenizer, self.eval_pairs, max_length=self.max_length
        )
        self.margins = torch.tensor(margins(self.train_pairs))
        self.world = self.accelerator.num_processes
        self.global_batch_size = (
            config.micro_batch_size * config.gradient_accumulation_steps * self.world
        )
        self.steps = total_steps(config, len(self.train_pairs), self.global_batch_size)
        # Packed batches hold no padding: their pairs need not be of similar lengths.
        lengths = None if wrapper.packed else [self._length(pair) for pair in self.encoded]
        self.batches = global_batches(
            len(self.encoded), self.global_batch_size, self.steps, config.seed, lengths=lengths
        )
        self.warmup = warmup_steps(config, self.steps)

        decay, no_decay = [], []
        for name, parameter in wrapper.named_parameters():
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
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: learning_rate_factor(step, self.steps, self.warmup, config.min_lr_ratio),
        )
        # The scheduler is not prepared: accelerate would step it once per process.
        self.model, self.optimizer = self.accelerator.prepare(wrapper, optimizer)
        self.scheduler = scheduler
        self.accelerator.register_for_checkpointing(scheduler)
        self.history: list[dict[str, float]] = []
        self.step = 0
        self.data_digest = {
            "train": pairs_digest(self.train_pairs),
            "eval": pairs_digest(self.eval_pairs),
        }

    # -- reporting --

    def emit(self, event: dict[str, Any]) -> None:
        if self.progress is not None and self.accelerator.is_main_process:
            self.progress(event)

    def log(self, message: str) -> None:
        self.emit({"event": "log", "message": message})

    # -- checkpoints --

    def _state_record(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "total_steps": self.steps,
            "history": self.history,
            "config": self.config.to_dict(),
            "data": self.data_digest,
            "world_size": self.world,
        }

    def save_checkpoint(self) -> None:
        folder = self.out_dir / CHECKPOINTS_DIR / f"step-{self.step}"
        self.accelerator.save_state(str(folder))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            normalize_permissions(folder)  # safetensors writes 0600 files (see rlhf.files)
            record = json.dumps(self._state_record(), indent=1)
            (folder / TRAINER_STATE_FILE).write_text(record + "\n", encoding="utf-8")
            older = sorted(
                (self.out_dir / CHECKPOINTS_DIR).glob("step-*"),
                key=lambda p: int(p.name.split("-")[1]),
            )
            for stale in older[: -self.config.keep_checkpoints]:
                shutil.rmtree(stale, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.log(f"checkpoint saved at step {self.step}")

    def resume(self) -> None:
        """Continue from the latest checkpoint in ``out_dir``, if one was written by this run."""
        checkpoint = _latest_checkpoint(self.out_dir)
        if checkpoint is None:
            return
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

    # -- training --

    def _length(self, pair) -> int:
        """A pair's width in a batch, what batches are grouped by."""
        return pair.packed_length if self.prefix_sharing else pair.separate_length

    def _forward(self, encoded):
        """``(chosen, rejected)`` rewards of encoded pairs, through the prepared model."""
        from rlhf.reward.scoring import padding_multiple, to_device

        device = self.accelerator.device
        batch = self.wrapper.collate(
            encoded,
            pad_token_id=self.tokenizer.pad_token_id,
            prefix_sharing=self.prefix_sharing,
            pad_to_multiple_of=padding_multiple(device),
        )
        return self.model(**to_device(batch, device))

    def train_step(self, global_batch: Sequence[int]) -> float:
        import torch

        from rlhf.reward.losses import margin_ranking_loss

        config = self.config
        real_pairs = len(global_batch)
        slots = micro_batches(
            global_batch,
            config.micro_batch_size,
            config.gradient_accumulation_steps,
            self.world,
            self.accelerator.process_index,
        )
        self.model.train()
        loss_sum = torch.zeros((), device=self.accelerator.device)
        for position, micro_batch in enumerate(slots):
            indices = [index for index, _ in micro_batch]
            weights = torch.tensor([w for _, w in micro_batch], device=self.accelerator.device)
            last = position == len(slots) - 1
            sync = self.accelerator.no_sync(self.model) if not last else nullcontext()
            with sync:
                chosen, rejected = self._forward([self.encoded[i] for i in indices])
                batch_margins = self.margins[indices].to(self.accelerator.device)
                losses = margin_ranking_loss(chosen, rejected, batch_margins, reduction="none")
                weighted = (losses * weights).sum()
                # DDP and FSDP average gradients over processes: × world makes it a sum, and
                # ÷ real_pairs the mean over the global batch.
                self.accelerator.backward(weighted * self.world / real_pairs)
            loss_sum += weighted.detach()
        self.accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return (self.accelerator.reduce(loss_sum, reduction="sum") / real_pairs).item()

    def evaluate(self) -> dict[str, Any] | None:
        """Metrics on the held-out pairs: each process scores its share, the main one reports."""
        import torch

        from rlhf.reward.evaluation import metrics_from_rewards

        if not self.eval_pairs:
            return None
        self.log(f"evaluating on {len(self.eval_pairs)} held-out pairs")
        encoded = self.eval_encoded
        mine = list(range(self.accelerator.process_index, len(encoded), self.world))
        per_process = math.ceil(len(encoded) / self.world)
        mine += [mine[0] if mine else 0] * (per_process - len(mine))  # equal work everywhere
        size = self.config.eval_batch_size
        order = sorted(mine, key=lambda i: self._length(encoded[i]))
        rewards = torch.zeros((len(order), 3), device=self.accelerator.device)
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(order), size):
                indices = order[start : start + size]
                chosen, rejected = self._forward([encoded[i] for i in indices])
                rows = slice(start, start + len(indices))
                rewards[rows, 0] = torch.tensor(indices, dtype=torch.float32)
                rewards[rows, 1], rewards[rows, 2] = chosen.float(), rejected.float()
                if self.eval_progress is not None and self.accelerator.is_main_process:
                    # Every process scores an equal share: the main one's stands for all.
                    done = min(len(encoded), (start + len(indices)) * self.world)
                    self.eval_progress(done, len(encoded))
        gathered = self.accelerator.gather(rewards).cpu()
        if not self.accelerator.is_main_process:
            return None
        chosen_rewards = torch.empty(len(encoded))
        rejected_rewards = torch.empty(len(encoded))
        for index, chosen, rejected in gathered.tolist():
            chosen_rewards[int(index)], rejected_rewards[int(index)] = chosen, rejected
        return metrics_from_rewards(self.eval_pairs, chosen_rewards, rejected_rewards)

    def _processes(self) -> str:
        if self.world == 1:
            return f"1 process ({self.accelerator.device})"
        backend = self.accelerator.state.backend or "?"
        return f"{self.world} processes ({backend})"

    def run(self) -> TrainingResult:
        config = self.config
        self.resume()
        self.log(
            f"{len(self.train_pairs)} training pairs, {len(self.eval_pairs)} held out; "
            f"{self.steps} steps of {self.global_batch_size} pairs on {self._processes()}; "
            f"prefix sharing {'on' if self.prefix_sharing else 'off'}"
        )
        started = time.perf_counter()
        trained_pairs = 0
        while self.step < self.steps:
            learning_rate = self.scheduler.get_last_lr()[0]  # the rate this step uses
            loss = self.train_step(self.batches[self.step])
            self.step += 1
            self.history.append({"step": self.step, "loss": loss, "learning_rate": learning_rate})
            trained_pairs += len(self.batches[self.step - 1])
            elapsed = time.perf_counter() - started
            if self.step % config.log_every == 0 or self.step == self.steps:
                self.emit(
                    {
                        "event": "step",
                        "step": self.step,
                        "total_steps": self.steps,
                        "loss": loss,
                        "learning_rate": learning_rate,
                        "pairs_per_second": trained_pairs / elapsed if elapsed else 0.0,
                    }
                )
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.save_checkpoint()
            if config.eval_every and self.step % config.eval_every == 0 and self.step < self.steps:
                self.emit({"event": "eval", "step": self.step, "metrics": self.evaluate()})
        seconds = time.perf_counter() - started
        metrics = self.evaluate()
        if metrics is not None:
            self.emit({"event": "eval", "step": self.step, "metrics": metrics})
        self.save_model(metrics)
        taken = [index for batch in self.batches[: self.steps] for index in batch]
        return TrainingResult(
            out_dir=self.out_dir,
            metrics=metrics or {},
            history=self.history,
            steps=self.steps,
            train_pairs=len(self.train_pairs),
            seconds=seconds,
            pairs_per_second=trained_pairs / seconds if seconds else 0.0,
            pairs_trained=len(taken),
            distinct_pairs_trained=len(set(taken)),
        )

    def save_model(self, metrics: dict[str, Any] | None) -> None:
        from rlhf.reward.model import save_reward_model

        state = self.accelerator.get_state_dict(self.model)  # gathers FSDP shards everywhere
        if self.accelerator.is_main_process:
            inner = self.accelerator.unwrap_model(self.model).model
            weights = {
                name.removeprefix("model."): tensor
                for name, tensor in state.items()
                if name.startswith("model.")
            }
            save_reward_model(
                inner,
                self.tokenizer,
                self.out_dir,
                state_dict=weights,
                metadata={
                    "kind": self.config.kind,
                    "base_model": self.config.base_model,
                    "config": self.config.to_dict(),
                    "data": {
                        "train_pairs": len(self.train_pairs),
                        "eval_pairs": len(self.eval_pairs),
                        "sha256": self.data_digest,
                    },
                    "metrics": metrics or {},
                    "history": self.history,
                    "world_size": self.world,
                },
            )
            self.log(f"saved the reward model to {self.out_dir}")
        self.accelerator.wait_for_everyone()


def train_reward_model(
    config: RewardTrainingConfig,
    train_pairs: Sequence[PreferencePair],
    eval_pairs: Sequence[PreferencePair],
    out_dir: str | Path,
    *,
    progress: ProgressCallback | None = None,
    eval_progress: EvalProgressCallback | None = None,
) -> TrainingResult:
    """Train a reward model (see the module docstring) and save it in ``out_dir``.

    ``progress`` receives, on the main process, events ``{"event": "log", "message"}``,
    ``{"event": "step", "step", "total_steps", "loss", "learning_rate", "pairs_per_second"}``
    and ``{"event": "eval", "step", "metrics"}``; ``eval_progress(scored, total)`` is called
    while the held-out pairs are scored. A run whose ``out_dir`` holds a checkpoint of the same
    config and data continues from it.
    """
    config.validate()
    if not config.base_model:
        raise ConfigError("base_model", "is required")
    trainer = _Trainer(config, train_pairs, eval_pairs, out_dir, progress, eval_progress)
    return trainer.run()


__all__ = [
    "TrainingResult",
    "global_batches",
    "learning_rate_factor",
    "micro_batches",
    "train_reward_model",
    "warmup_steps",
]
