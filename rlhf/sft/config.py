"""The settings of a supervised fine-tuning run, declared once (:mod:`rlhf.hyperparameters`).

The command line's flags, the platform's training form and API, and the checks of a run spec are
all derived from these declarations. This module imports no torch, so the platform may use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rlhf import hyperparameters
from rlhf.hyperparameters import ADVANCED, BASIC, ConfigError, setting

# Which assistant turns of a conversation count in the loss (rlhf.sft.data.encode_example):
# "all" of them, or only the "last" one (Ghost Attention zeroes the loss on earlier turns).
TRAIN_ON = ("all", "last")


@dataclass
class SFTConfig:
    """Every setting of an SFT run; the defaults are the paper's where it gives them.

    Llama 2 fine-tunes with a cosine schedule from 2e-5, weight decay 0.1, 2 epochs, batches
    of 64 packed rows of 4,096 tokens. A *row* here is the same: examples packed one after the
    other up to ``max_length`` tokens, none attending to another. The smaller default rows and
    batch suit small models and the few thousand conversations of a first run.
    """

    base_model: str = setting("", help="the model fine-tuned: a directory or hub id")
    learning_rate: float = setting(
        2e-5, label="Learning rate", help="Llama 2: 2e-5.",
        minimum=0, above=True, flag="lr", form=BASIC,
    )  # fmt: skip
    micro_batch_size: int = setting(
        4, label="Batch size (rows)", minimum=1, flag="batch_size", form=BASIC,
        help="Packed rows of max_length tokens per step and device; × accumulation × devices "
        "is the effective batch (Llama 2: 64 rows of 4,096 tokens).",
    )  # fmt: skip
    gradient_accumulation_steps: int = setting(
        1, label="Gradient accumulation", minimum=1, flag="gradient_accumulation", form=BASIC
    )
    max_length: int = setting(
        1024, label="Row length", minimum=2, flag="max_length", form=BASIC,
        help="Tokens per packed row; a longer conversation keeps its first max_length tokens.",
    )  # fmt: skip
    epochs: int = setting(2, label="Epochs", minimum=1, flag="epochs", form=BASIC)
    max_steps: int | None = setting(
        None, label="Max steps", minimum=1, flag="max_steps", form=BASIC,
        help="Stop after this many steps (may exceed the epochs); blank: no limit.",
    )  # fmt: skip
    train_on: str = setting(
        "all", label="Assistant turns trained on", choices=TRAIN_ON, flag="train_on",
        form=ADVANCED,
        help="all: every assistant turn counts in the loss; last: only the last one. A "
        "record's own train_on wins.",
    )  # fmt: skip
    eval_fraction: float = setting(
        0.1, label="Held-out fraction", minimum=0, maximum=1, flag="eval_fraction", form=BASIC,
        help="Share of prompts held out (split by the first user turn: a prompt is never on "
        "both sides).",
    )  # fmt: skip
    seed: int = setting(
        0, label="Seed", minimum=0, flag="seed", form=BASIC, help="Fixes the split and the order."
    )
    warmup_ratio: float = setting(
        0.03, label="Warm-up ratio", minimum=0, maximum=1, flag="warmup_ratio", form=ADVANCED
    )
    min_warmup_steps: int = setting(5, minimum=0)
    min_lr_ratio: float = setting(
        0.1, label="Final LR ratio", minimum=0, maximum=1, flag="min_lr_ratio", form=ADVANCED,
        help="Cosine decay to 10 % of the max.",
    )  # fmt: skip
    weight_decay: float = setting(
        0.1, label="Weight decay", minimum=0, flag="weight_decay", form=ADVANCED,
        help="Llama 2: 0.1.",
    )  # fmt: skip
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_epsilon: float = setting(1e-5, minimum=0, above=True)
    max_grad_norm: float = setting(
        1.0, label="Gradient clipping", minimum=0, above=True, flag="max_grad_norm", form=ADVANCED
    )
    mixed_precision: str = setting(
        "auto", label="Mixed precision", choices=("auto", "no", "bf16", "fp16"),
        flag="mixed_precision", form=ADVANCED, help="auto: bf16 on CUDA, none on CPU.",
    )  # fmt: skip
    eval_every: int = setting(
        0, label="Evaluate every (steps)", minimum=0, flag="eval_every", form=ADVANCED,
        help="0: before training and at the end only.",
    )  # fmt: skip
    checkpoint_every: int = setting(
        0, minimum=0, flag="checkpoint_every", help="Steps between checkpoints (0: none)."
    )
    keep_checkpoints: int = setting(2, minimum=1)
    log_every: int = setting(1, minimum=1)
    cpu: bool = setting(False, help="train on the CPU even where a GPU is present")

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field."""
        hyperparameters.validate(self)
        if len(self.adam_betas) != 2:
            raise ConfigError("adam_betas", "must be two numbers")
        for beta in self.adam_betas:
            hyperparameters.Rule("adam_betas", float, None, minimum=0, maximum=1).check(beta)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SFTConfig:
        """A config from JSON-like values; unknown keys and bad values raise ConfigError."""
        return hyperparameters.from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["adam_betas"] = list(self.adam_betas)
        return values


__all__ = ["TRAIN_ON", "ConfigError", "SFTConfig"]
