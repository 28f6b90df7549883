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
  (:func:`rlhf.reward.training.micro_batches`);
- the loss is the mean over the counted tokens of the global batch, each token weighing the
  same (a long answer weighs more than a short one):
  ``Σ ℓ / (counted tokens of the global batch)``, ℓ the token losses of
  :func:`rlhf.sft.losses.masked_token_cross_entropy`, whatever the number of processes or how
  the rows fall into micro-batches;
- AdamW (β 0.9, 0.95, ε 1e-5; weight decay on the weight matrices, none on norms and biases);
  the learning rate warms up linearly, then decays on a cosine to ``min_lr_ratio`` of its
  maximum, reached at the last step (:func:`rlhf.reward.training.learning_rate_factor`, the
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
--multi_gpu … -m rlhf sft …``, gloo on CPUs, ``--use_fsdp`` on GPUs); the code is the same.
"""

from __future__ import annotations

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

from rlhf.files import normalize_permissions
from rlhf.nn.devices import use_cpu
from rlhf.reward.training import learning_rate_factor, micro_batches, warmup_steps
from rlhf.sft.config import ConfigError, SFTConfig
from rlhf.sft.data import EncodedExample, SFTExample, encode_example, examples_digest
from rlhf.sft.packing import pack_rows

METADATA_FILE = "pairwise_sft.json"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINTS_DIR = "checkpoints"
ProgressCallback = Callable[[dict[str, Any]], None]


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


def _mixed_precision(config: SFTConfig) -> str:
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


def _encoded(tokenizer, examples, config, max_length) -> tuple[list[EncodedExample], int]:
    """The examples that keep a counted token within ``max_length``, and how many did not."""
    encoded = [
        encode_example(tokenizer, example, train_on=config.train_on, max_length=max_length)
        for example in examples
    ]
    kept = [example for example in encoded if example.target_count]
    return kept, len(encoded) - len(kept)


class _Trainer:
    """One run's state; :func:`train_sft` is its public face."""

    def __init__(self, config: SFTConfig, train_examples, eval_examples, out_dir, progress):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlhf.reward.model import usable_length
        from rlhf.sft.packing import PackedCausalLM, packs_exactly

        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        self.accelerator = Accelerator(
            cpu=use_cpu(config.cpu), mixed_precision=_mixed_precision(config)
        )
        set_seed(config.seed)
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
        self.world = self.accelerator.num_processes
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
        self.warmup = warmup_steps(config, self.steps)
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
            fused=True,  # one kernel for all parameters (see rlhf.reward.training)
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: learning_rate_factor(step, self.steps, self.warmup, config.min_lr_ratio),
        )
        # The scheduler is not prepared: accelerate would step it once per process.
        self.model, self.optimizer = self.accelerator.prepare(PackedCausalLM(model), optimizer)
        self.scheduler = scheduler
        self.accelerator.register_for_checkpointing(scheduler)
        self.history: list[dict[str, float]] = []
        self.before: dict[str, Any] | None = None
        self.step = 0

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
            "before": self.before,
            "config": self.config.to_dict(),
            "data": self.data_digest,
            "world_size": self.world,
        }

    def save_checkpoint(self) -> None:
        folder = self.out_dir / CHECKPOINTS_DIR / f"step-{self.step}"
        self.accelerator.save_state(str(folder))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            normalize_permissions(folder)
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

    def resume(self) -> bool:
        """Continue from the latest checkpoint in ``out_dir``, if this run wrote one."""
        checkpoint = _latest_checkpoint(self.out_dir)
        if checkpoint is None:
            return False
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
        self.step, self.history, self.before = record["step"], record["history"], record["before"]
        self.log(f"resumed from {checkpoint} at step {self.step} of {self.steps}")
        return True

    # -- training --

    def _losses(self, examples: Sequence[EncodedExample], weights: Sequence[float]):
        """Σ of the weighted token losses of one packed micro-batch."""
        from rlhf.sft.packing import collate

        batch = collate(examples, weights).to(self.accelerator.device)
        losses = self.model(**batch.inputs)
        return (losses * batch.weights).sum()

    def _slots(self, batch_rows: Sequence[int], rows: list[list[int]], size: int, accumulation):
        """This process's micro-batches of (examples, weights), from rows of ``rows``."""
        slots = micro_batches(
            batch_rows, size, accumulation, self.world, self.accelerator.process_index
        )
        for slot in slots:
            examples, weights = [], []
            for row, weight in slot:
                for index in rows[row]:
                    examples.append(index)
                    weights.append(weight)
            yield examples, weights

    def train_step(self, batch_rows: Sequence[int]) -> float:
        import torch

        config = self.config
        targets = sum(self.train_set[i].target_count for row in batch_rows for i in self.rows[row])
        slots = list(
            self._slots(
                batch_rows, self.rows, config.micro_batch_size, config.gradient_accumulation_steps
            )
        )
        self.model.train()
        loss_sum = torch.zeros((), device=self.accelerator.device)
        for position, (indices, weights) in enumerate(slots):
            last = position == len(slots) - 1
            sync = self.accelerator.no_sync(self.model) if not last else nullcontext()
            with sync:
                weighted = self._losses([self.train_set[i] for i in indices], weights)
                # DDP and FSDP average gradients over processes: × world makes it a sum, and
                # ÷ targets the mean over the global batch's counted tokens.
                self.accelerator.backward(weighted * self.world / targets)
            loss_sum += weighted.detach()
        self.accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return (self.accelerator.reduce(loss_sum, reduction="sum") / targets).item()

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

    def _processes(self) -> str:
        if self.world == 1:
            return f"1 process ({self.accelerator.device})"
        return f"{self.world} processes ({self.accelerator.state.backend or '?'})"

    def run(self) -> SFTResult:
        config = self.config
        if not self.resume():
            self.before = self.evaluate()
            if self.before is not None:
                self.emit({"event": "eval", "step": 0, "metrics": self.before})
        self.log(
            f"{len(self.train_set):,} training examples, {len(self.eval_set):,} held out; "
            f"{self.steps} steps of {self.rows_per_step} row{'s' * (self.rows_per_step != 1)} "
            f"of up to {self.max_length} tokens on {self._processes()}"
        )
        started = time.perf_counter()
        examples = tokens = 0
        while self.step < self.steps:
            learning_rate = self.scheduler.get_last_lr()[0]  # the rate this step uses
            batch_rows = self.batches[self.step]
            loss = self.train_step(batch_rows)
            self.step += 1
            self.history.append({"step": self.step, "loss": loss, "learning_rate": learning_rate})
            taken = [i for row in batch_rows for i in self.rows[row]]
            examples += len(taken)
            tokens += sum(len(self.train_set[i]) for i in taken)
            elapsed = time.perf_counter() - started
            if self.step % config.log_every == 0 or self.step == self.steps:
                self.emit(
                    {
                        "event": "step",
                        "step": self.step,
                        "total_steps": self.steps,
                        "loss": loss,
                        "learning_rate": learning_rate,
                        "examples_per_second": examples / elapsed if elapsed else 0.0,
                        "tokens_per_second": tokens / elapsed if elapsed else 0.0,
                    }
                )
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.save_checkpoint()
            if config.eval_every and self.step % config.eval_every == 0 and self.step < self.steps:
                self.emit({"event": "eval", "step": self.step, "metrics": self.evaluate()})
        seconds = time.perf_counter() - started
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
            examples_per_second=examples / seconds if seconds else 0.0,
            tokens_per_second=tokens / seconds if seconds else 0.0,
        )

    def save_model(self, metrics: dict[str, Any]) -> None:
        state = self.accelerator.get_state_dict(self.model)  # gathers FSDP shards everywhere
        if self.accelerator.is_main_process:
            inner = self.accelerator.unwrap_model(self.model).model
            weights = {
                name.removeprefix("model."): tensor
                for name, tensor in state.items()
                if name.startswith("model.")
            }
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
