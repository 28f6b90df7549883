"""The settings of a supervised fine-tuning run, declared once (:mod:`rlhf.hyperparameters`).

The command line's flags, the platform's training form and API, and the checks of a run spec are
all derived from these declarations. This module imports no torch, so the platform may use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf import trainer_settings
from rlhf.hyperparameters import ADVANCED, ConfigError, setting
from rlhf.trainer_settings import TrainerConfig

# Which assistant turns of a conversation count in the loss (rlhf.sft.data.encode_example):
# "all" of them, or only the "last" one (Ghost Attention zeroes the loss on earlier turns).
TRAIN_ON = ("all", "last")


@dataclass
class SFTConfig(TrainerConfig):
    """Every setting of an SFT run; the defaults are the paper's where it gives them.

    Llama 2 fine-tunes with a cosine schedule from 2e-5, weight decay 0.1, 2 epochs, batches
    of 64 packed rows of 4,096 tokens. A *row* here is the same: examples packed one after the
    other up to ``max_length`` tokens, none attending to another. The smaller default rows and
    batch suit small models and the few thousand conversations of a first run. The settings
    every trainer has are declared in :mod:`rlhf.trainer_settings`, their defaults here.
    """

    base_model: str = setting("", help="the model fine-tuned: a directory or hub id")
    learning_rate: float = trainer_settings.learning_rate(2e-5, help="Llama 2: 2e-5.")
    micro_batch_size: int = trainer_settings.micro_batch_size(
        4, label="Batch size (rows)",
        help="Packed rows of max_length tokens per step and device; × accumulation × devices "
        "is the effective batch (Llama 2: 64 rows of 4,096 tokens).",
    )  # fmt: skip
    gradient_accumulation_steps: int = trainer_settings.gradient_accumulation_steps(1)
    max_length: int = trainer_settings.max_length(
        1024, label="Row length",
        help="Tokens per packed row; a longer conversation keeps its first max_length tokens.",
    )  # fmt: skip
    epochs: int = trainer_settings.epochs(2)
    max_steps: int | None = trainer_settings.max_steps(
        None, help="Stop after this many steps (may exceed the epochs); blank: no limit."
    )
    train_on: str = setting(
        "all", label="Assistant turns trained on", choices=TRAIN_ON, flag="train_on",
        form=ADVANCED,
        help="all: every assistant turn counts in the loss; last: only the last one. A "
        "record's own train_on wins.",
    )  # fmt: skip
    eval_fraction: float = trainer_settings.eval_fraction(
        0.1, help="Share of prompts held out (split by the first user turn: a prompt is never "
        "on both sides).",
    )  # fmt: skip
    seed: int = trainer_settings.seed(0, help="Fixes the split and the order.")
    warmup_ratio: float = trainer_settings.warmup_ratio(0.03)
    min_warmup_steps: int = trainer_settings.min_warmup_steps(5)
    min_lr_ratio: float = trainer_settings.min_lr_ratio(0.1)
    weight_decay: float = trainer_settings.weight_decay(0.1, help="Llama 2: 0.1.")
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_epsilon: float = trainer_settings.adam_epsilon(1e-5)
    max_grad_norm: float = trainer_settings.max_grad_norm(1.0)
    mixed_precision: str = trainer_settings.mixed_precision("auto")
    eval_every: int = trainer_settings.eval_every(0, help="0: before training and at the end only.")
    checkpoint_every: int = trainer_settings.checkpoint_every(0)
    keep_checkpoints: int = trainer_settings.keep_checkpoints(2)
    log_every: int = trainer_settings.log_every(1)
    cpu: bool = trainer_settings.cpu(False)


__all__ = ["TRAIN_ON", "ConfigError", "SFTConfig"]
