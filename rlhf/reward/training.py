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
  step (:func:`rlhf.nn.trainer.learning_rate_factor`); gradients clipped to ``max_grad_norm``;
  one epoch;
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
code is the same. The loop, the optimizer, the checkpoints and the progress events are the ones
every trainer shares (:mod:`rlhf.nn.trainer`); what is a reward model's own is here.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.data.pairs import PreferencePair, margins
from rlhf.nn.trainer import (
    ProgressCallback,
    Trainer,
    learning_rate_factor,
    micro_batches,
    rate,
    warmup_steps,
)
from rlhf.reward.config import ConfigError, RewardTrainingConfig

EvalProgressCallback = Callable[[int, int], None]  # (pairs scored, held-out pairs)


# --- the schedule and the batches ---------------------------------------------------------------


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


class _Trainer(Trainer):
    """One run's state; :func:`train_reward_model` is its public face."""

    def __init__(self, config, train_pairs, eval_pairs, out_dir, progress, eval_progress=None):
        import torch

        from rlhf.reward.model import load_reward_backbone, usable_length
        from rlhf.reward.scoring import PairRewardModel, encode_pairs

        self.eval_progress = eval_progress
        self.train_pairs, self.eval_pairs = list(train_pairs), list(eval_pairs)
        if not self.train_pairs:
            raise ValueError("no training pairs")
        super().__init__(config, out_dir, progress)
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
        self.global_batch_size = (
            config.micro_batch_size * config.gradient_accumulation_steps * self.world
        )
        self.steps = total_steps(config, len(self.train_pairs), self.global_batch_size)
        # Packed batches hold no padding: their pairs need not be of similar lengths.
        lengths = None if wrapper.packed else [self._length(pair) for pair in self.encoded]
        self.batches = global_batches(
            len(self.encoded), self.global_batch_size, self.steps, config.seed, lengths=lengths
        )
        self.data_digest = {
            "train": pairs_digest(self.train_pairs),
            "eval": pairs_digest(self.eval_pairs),
        }
        self.prepare(wrapper)

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

    def _weighted_loss(self, micro_batch: Sequence[tuple[int, float]]):
        """Σ weight × margin ranking loss of a micro-batch of ``(pair index, weight)``."""
        import torch

        from rlhf.reward.losses import margin_ranking_loss

        indices = [index for index, _ in micro_batch]
        weights = torch.tensor([w for _, w in micro_batch], device=self.accelerator.device)
        chosen, rejected = self._forward([self.encoded[i] for i in indices])
        batch_margins = self.margins[indices].to(self.accelerator.device)
        losses = margin_ranking_loss(chosen, rejected, batch_margins, reduction="none")
        return (losses * weights).sum()

    def train_step(self, global_batch: Sequence[int]) -> float:
        """One step on a global batch of pair indices; the loss is the mean over its pairs."""
        config = self.config
        slots = micro_batches(
            global_batch,
            config.micro_batch_size,
            config.gradient_accumulation_steps,
            self.world,
            self.accelerator.process_index,
        )
        return self.optimizer_step(slots, self._weighted_loss, len(global_batch))

    def units(self, global_batch: Sequence[int]) -> dict[str, int]:
        return {"pairs": len(global_batch)}

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

    def run(self) -> TrainingResult:
        self.resume()
        self.log(
            f"{len(self.train_pairs)} training pairs, {len(self.eval_pairs)} held out; "
            f"{self.steps} steps of {self.global_batch_size} pairs on {self.processes()}; "
            f"prefix sharing {'on' if self.prefix_sharing else 'off'}"
        )
        seconds, trained = self.train()
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
            pairs_per_second=rate(trained["pairs"], seconds),
            pairs_trained=len(taken),
            distinct_pairs_trained=len(set(taken)),
        )

    def save_model(self, metrics: dict[str, Any] | None) -> None:
        from rlhf.reward.model import save_reward_model

        unwrapped = self.unwrapped_weights()
        if unwrapped is not None:
            inner, weights = unwrapped
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


# learning_rate_factor, micro_batches and warmup_steps live in rlhf.nn.trainer; they are
# importable from here too, where the reward models' tests and benchmarks first found them.
__all__ = [
    "TrainingResult",
    "global_batches",
    "learning_rate_factor",
    "micro_batches",
    "train_reward_model",
    "warmup_steps",
]
