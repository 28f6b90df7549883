"""Supervised fine-tuning on conversations, the Llama 2 way, on one CPU or many GPUs.

    config = SFTConfig(base_model="path/to/policy")
    result = train_sft(config, train_examples, eval_examples, "out/sft")

What one run does (Touvron et al. 2023, section 3.1; :mod:`rlhf.sft.data` says which tokens
count):

- the examples are tokenized with their loss mask and packed into rows of ``max_length`` tokens
  (:func:`rlhf.sft.packing.pack_rows`), each epoch in a new random order drawn with seed
  ``seed + epoch``; a row's examples never attend to one another;
- a step takes a *global batch* of ``micro_batch_size × gradient_accumulation_steps ×
  processes`` rows (an epoch's last batch may hold fewer; batches never span two epochs);
  every process takes its share of the same global batches
  (:func:`rlhf.nn.trainer.micro_batches`);
- the loss is the mean over the counted tokens of the global batch, each token weighing the
  same (a long answer weighs more than a short one):
  ``Σ ℓ / (counted tokens of the global batch)``, ℓ the token losses of
  :func:`rlhf.sft.losses.masked_token_cross_entropy`, whatever the number of processes or how
  the rows fall into micro-batches;
- AdamW (β 0.9, 0.95, ε 1e-5; weight decay on the weight matrices, none on norms and biases);
  the learning rate warms up linearly, then decays on a cosine to ``min_lr_ratio`` of its
  maximum, reached at the last step (:func:`rlhf.nn.trainer.learning_rate_factor`, the
  reward models' schedule); gradients clipped to ``max_grad_norm``;
- mixed precision (bf16 autocast) on GPUs, float32 on CPUs;
- the held-out loss (mean over the held-out examples' counted tokens) and perplexity
  ``exp(loss)`` before training, every ``eval_every`` steps and at the end;
- a checkpoint every ``checkpoint_every`` steps (``accelerate``'s ``save_state`` plus the step,
  the loss history and the evaluation before training), from which a run started again with
  the same config and data resumes exactly where it stopped;
- the model saved with ``save_pretrained``, with its tokenizer and ``pairwise_sft.json``: the
  config, the data's hashes, the metrics before and after, the loss history.

Distributed runs go through ``accelerate`` as the reward models' do (``accelerate launch
--multi_gpu … -m rlhf sft …``, gloo on CPUs, ``--use_fsdp`` on GPUs); the code is the same:
the loop, the optimizer, the checkpoints and the progress events are the ones every trainer
shares (:mod:`rlhf.nn.trainer`); what is fine-tuning's own is here.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.files import normalize_permissions
from rlhf.nn.trainer import ProgressCallback, Trainer, micro_batches, rate
from rlhf.sft.config import ConfigError, SFTConfig
from rlhf.sft.data import EncodedExample, SFTExample, encode_example, examples_digest
from rlhf.sft.packing import pack_rows

METADATA_FILE = "pairwise_sft.json"


# --- the rows and the batches -------------------------------------------------------------------


def schedule(
    lengths: Sequence[int],
    capacity: int,
    rows_per_step: int,
    *,
    epochs: int,
    seed: int,
    max_steps: int | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """``(rows, batches)``: the rows of every epoch (example indices) and each step's global
    batch (row indices). Epoch e packs the examples shuffled with seed ``seed + e``; its rows
    are cut into batches of ``rows_per_step``. ``epochs`` epochs, or as many as ``max_steps``
    needs (then cut to it). The same on every process."""
    rows: list[list[int]] = []
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < max_steps if max_steps is not None else epoch < epochs:
        order = list(range(len(lengths)))
        random.Random(seed + epoch).shuffle(order)
        first = len(rows)
        rows += pack_rows(lengths, order, capacity)
        batches += [
            list(range(start, min(start + rows_per_step, len(rows))))
            for start in range(first, len(rows), rows_per_step)
        ]
        epoch += 1
    if max_steps is not None:
        batches = batches[:max_steps]
    return rows, batches


# --- the run ------------------------------------------------------------------------------------


@dataclass
class SFTResult:
    """What a run did: ``examples_trained`` counts the examples its steps took (repeats
    included), ``tokens_trained`` their tokens, ``targets_trained`` the counted ones among
    them; ``metrics`` holds the held-out ``before`` and ``after`` (None without held-out data)."""

    out_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    train_examples: int = 0
    examples_trained: int = 0
    tokens_trained: int = 0
    targets_trained: int = 0
    left_out: int = 0
    seconds: float = 0.0
    examples_per_second: float = 0.0
    tokens_per_second: float = 0.0

    def summary(self, step_limit: str | None = None) -> str:
        """``"trained 12 steps on 480 examples (2 epochs of 240), 61,440 tokens"``."""
        total, seen = self.train_examples, self.examples_trained
        epochs = seen / total if total else 0.0
        limit = f"; {step_limit} stopped it" if step_limit else ""
        return (
            f"trained {self.steps} steps on {seen:,} examples ({epochs:.3g} epochs of "
            f"{total:,}{limit}), {self.tokens_trained:,} tokens"
        )


def _encoded(tokenizer, examples, config, max_length) -> tuple[list[EncodedExample], int]:
    """The examples that keep a counted token within ``max_length``, and how many did not."""
    encoded = [
        encode_example(tokenizer, example, train_on=config.train_on, max_length=max_length)
        for example in examples
    ]
    kept = [example for example in encoded if example.target_count]
    return kept, len(encoded) - len(kept)


class _Trainer(Trainer):
    """One run's state; :func:`train_sft` is its public face."""

    def __init__(self, config: SFTConfig, train_examples, eval_examples, out_dir, progress):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlhf.reward.model import usable_length
        from rlhf.sft.packing import PackedCausalLM, packs_exactly

        super().__init__(config, out_dir, progress)
        self.log(f"loading the model {config.base_model}")
        self.tokenizer = AutoTokenizer.from_pretrained(config.base_model)
        model = AutoModelForCausalLM.from_pretrained(config.base_model, dtype=torch.float32)
        if not packs_exactly(model):
            raise ConfigError(
                "base_model",
                f"{type(model).__name__} does not compute the same on packed rows (its "
                "attention or its logits do not go through what packing replaces)",
            )
        self.max_length = usable_length(model, config.max_length)
        self.train_set, dropped = _encoded(self.tokenizer, train_examples, config, self.max_length)
        self.eval_set, dropped_eval = _encoded(
            self.tokenizer, eval_examples, config, self.max_length
        )
        self.left_out = dropped + dropped_eval
        if self.left_out:
            self.log(
                f"left out {self.left_out:,} conversations whose answers start past "
                f"{self.max_length} tokens"
            )
        if not self.train_set:
            raise ValueError("no training example has an answer token within max_length")
        self.data_digest = {
            "train": examples_digest(train_examples),
            "eval": examples_digest(eval_examples),
        }
        self.rows_per_step = (
            config.micro_batch_size * config.gradient_accumulation_steps * self.world
        )
        self.rows, self.batches = schedule(
            [len(example) for example in self.train_set],
            self.max_length,
            self.rows_per_step,
            epochs=config.epochs,
            seed=config.seed,
            max_steps=config.max_steps,
        )
        self.steps = len(self.batches)
        self.before: dict[str, Any] | None = None  # the held-out metrics before training
        self.prepare(PackedCausalLM(model))

    # -- checkpoints: the evaluation before training is kept with the rest --

    def state_record(self) -> dict[str, Any]:
        return {**super().state_record(), "before": self.before}

    def resume(self) -> dict[str, Any] | None:
        record = super().resume()
        if record is not None:
            self.before = record["before"]
        return record

    # -- training --

    def _losses(self, examples: Sequence[EncodedExample], weights: Sequence[float]):
        """Σ of the weighted token losses of one packed micro-batch."""
        from rlhf.sft.packing import collate

        batch = collate(examples, weights).to(self.accelerator.device)
        losses = self.model(**batch.inputs)
        return (losses * batch.weights).sum()

    def _slots(self, batch_rows: Sequence[int]):
        """This process's micro-batches of ``(examples, weights)`` of a global batch of rows."""
        config = self.config
        slots = micro_batches(
            batch_rows,
            config.micro_batch_size,
            config.gradient_accumulation_steps,
            self.world,
            self.accelerator.process_index,
        )
        for slot in slots:
            examples, weights = [], []
            for row, weight in slot:
                for index in self.rows[row]:
                    examples.append(self.train_set[index])
                    weights.append(weight)
            yield examples, weights

    def train_step(self, batch_rows: Sequence[int]) -> float:
        """One step on a global batch of rows; the loss is the mean over its counted tokens."""
        targets = sum(self.train_set[i].target_count for row in batch_rows for i in self.rows[row])
        slots = list(self._slots(batch_rows))
        return self.optimizer_step(slots, lambda slot: self._losses(*slot), targets)

    def units(self, batch_rows: Sequence[int]) -> dict[str, int]:
        taken = [i for row in batch_rows for i in self.rows[row]]
        return {"examples": len(taken), "tokens": sum(len(self.train_set[i]) for i in taken)}

    def evaluate(self) -> dict[str, Any] | None:
        """The held-out loss (mean over counted tokens) and perplexity; every process computes
        its share of the rows (the same number of forward passes each), summed."""
        import torch

        if not self.eval_set:
            return None
        lengths = [len(example) for example in self.eval_set]
        order = sorted(range(len(self.eval_set)), key=lambda i: -lengths[i])
        rows = pack_rows(lengths, order, self.max_length)
        size = self.config.micro_batch_size
        groups = [range(i, min(i + size, len(rows))) for i in range(0, len(rows), size)]
        totals = torch.zeros(2, device=self.accelerator.device)  # Σ losses, Σ counted tokens
        self.model.eval()
        with torch.no_grad():
            for number in range(math.ceil(len(groups) / self.world)):
                index = number * self.world + self.accelerator.process_index
                # Past the end, a weight-0 filler: every process runs as many forwards.
                weight = 1.0 if index < len(groups) else 0.0
                group = groups[index] if weight else groups[0]
                examples = [self.eval_set[i] for row in group for i in rows[row]]
                totals[0] += self._losses(examples, [weight] * len(examples)).float()
                totals[1] += weight * sum(example.target_count for example in examples)
        loss_sum, tokens = self.accelerator.reduce(totals, reduction="sum").tolist()
        loss = loss_sum / tokens
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "tokens": int(tokens),
            "examples": len(self.eval_set),
        }

    def run(self) -> SFTResult:
        if self.resume() is None:
            self.before = self.evaluate()
            if self.before is not None:
                self.emit({"event": "eval", "step": 0, "metrics": self.before})
        self.log(
            f"{len(self.train_set):,} training examples, {len(self.eval_set):,} held out; "
            f"{self.steps} steps of {self.rows_per_step} row{'s' * (self.rows_per_step != 1)} "
            f"of up to {self.max_length} tokens on {self.processes()}"
        )
        seconds, trained = self.train()
        after = self.evaluate()
        if after is not None:
            self.emit({"event": "eval", "step": self.step, "metrics": after})
        metrics = {"before": self.before, "after": after} if after is not None else {}
        self.save_model(metrics)
        taken = [i for batch in self.batches for row in batch for i in self.rows[row]]
        return SFTResult(
            out_dir=self.out_dir,
            metrics=metrics,
            history=self.history,
            steps=self.steps,
            train_examples=len(self.train_set),
            examples_trained=len(taken),
            tokens_trained=sum(len(self.train_set[i]) for i in taken),
            targets_trained=sum(self.train_set[i].target_count for i in taken),
            left_out=self.left_out,
            seconds=seconds,
            examples_per_second=rate(trained["examples"], seconds),
            tokens_per_second=rate(trained["tokens"], seconds),
        )

    def save_model(self, metrics: dict[str, Any]) -> None:
        unwrapped = self.unwrapped_weights()
        if unwrapped is not None:
            inner, weights = unwrapped
            self.out_dir.mkdir(parents=True, exist_ok=True)
            inner.save_pretrained(self.out_dir, state_dict=weights)
            self.tokenizer.save_pretrained(self.out_dir)
            metadata = {
                "base_model": self.config.base_model,
                "config": self.config.to_dict(),
                "data": {
                    "train_examples": len(self.train_set),
                    "eval_examples": len(self.eval_set),
                    "left_out": self.left_out,
                    "sha256": self.data_digest,
                },
                "metrics": metrics,
                "history": self.history,
                "world_size": self.world,
            }
            text = json.dumps(metadata, indent=2)
            (self.out_dir / METADATA_FILE).write_text(text + "\n", encoding="utf-8")
            normalize_permissions(self.out_dir)
            self.log(f"saved the model to {self.out_dir}")
        self.accelerator.wait_for_everyone()


def train_sft(
    config: SFTConfig,
    train_examples: Sequence[SFTExample],
    eval_examples: Sequence[SFTExample],
    out_dir: str | Path,
    *,
    progress: ProgressCallback | None = None,
) -> SFTResult:
    """Fine-tune ``config.base_model`` (see the module docstring) and save it in ``out_dir``.

    ``progress`` receives, on the main process, events ``{"event": "log", "message"}``,
    ``{"event": "step", "step", "total_steps", "loss", "learning_rate",
    "examples_per_second", "tokens_per_second"}`` and ``{"event": "eval", "step", "metrics"}``
    (step 0: before training). A run whose ``out_dir`` holds a checkpoint of the same config and
    data continues from it.
    """
    config.validate()
    if not config.base_model:
        raise ConfigError("base_model", "is required")
    if not train_examples:
        raise ValueError("no training examples")
    trainer = _Trainer(config, list(train_examples), list(eval_examples), out_dir, progress)
    return trainer.run()


__all__ = ["METADATA_FILE", "SFTResult", "schedule", "train_sft"]
