"""The settings of a reward-model run, declared once (:mod:`rlhf.hyperparameters`).

The command line's flags, the platform's training form and API, and the checks of a run spec are
all derived from these declarations. This module imports no torch, so the platform may use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rlhf import hyperparameters
from rlhf.data.pairs import KINDS
from rlhf.hyperparameters import ADVANCED, BASIC, ConfigError, setting
from rlhf.preferences import DEFAULT_MARGIN_TABLE, MARGIN_TABLES


@dataclass
class RewardTrainingConfig:
    """Every setting of a reward-model run; the defaults are the paper's where it gives them.

    The paper trains with an effective batch of 512 pairs, learning rate 1e-5 (5e-6 for 70B);
    the smaller default batch suits the platform's first few thousand pairs.
    """

    kind: str = setting("helpfulness", choices=KINDS, help="which reward model")
    base_model: str = setting("", help="backbone directory or hub id (the policy, as in the paper)")
    learning_rate: float = setting(
        1e-5, label="Learning rate", help="Llama 2: 1e-5 (5e-6 at 70B).",
        minimum=0, above=True, flag="lr", form=BASIC,
    )  # fmt: skip
    micro_batch_size: int = setting(
        8, label="Batch size", minimum=1, flag="batch_size", form=BASIC,
        help="Pairs per step and device; × accumulation × devices is the effective batch "
        "(Llama 2: 512 pairs).",
    )  # fmt: skip
    gradient_accumulation_steps: int = setting(
        1, label="Gradient accumulation", minimum=1, flag="gradient_accumulation", form=BASIC
    )
    max_length: int = setting(
        512, label="Max length", minimum=2, flag="max_length", form=BASIC,
        help="Tokens per text; longer contexts lose their oldest turns.",
    )  # fmt: skip
    epochs: int = setting(
        1, label="Epochs", minimum=1, flag="epochs", form=BASIC,
        help="Llama 2 trains one epoch: more over-fits.",
    )  # fmt: skip
    max_steps: int | None = setting(
        None, label="Max steps", minimum=1, flag="max_steps", form=BASIC,
        help="Stop after this many steps (may exceed an epoch); blank: no limit.",
    )  # fmt: skip
    margin_table: str = setting(
        DEFAULT_MARGIN_TABLE, label="Margin table", choices=tuple(MARGIN_TABLES),
        flag="margin_table", form=BASIC,
        help="Loss margin per rating: small {1, 2/3, 1/3, 0}, large {3, 2, 1, 0}, none.",
    )  # fmt: skip
    eval_fraction: float = setting(
        0.2, label="Held-out fraction", minimum=0, maximum=1, flag="eval_fraction", form=BASIC,
        help="Share of prompts held out for evaluation (a prompt is never on both sides).",
    )  # fmt: skip
    seed: int = setting(
        0, label="Seed", minimum=0, flag="seed", form=BASIC,
        help="Fixes the split, the order and the new head.",
    )  # fmt: skip
    warmup_ratio: float = setting(
        0.03, label="Warm-up ratio", minimum=0, maximum=1, flag="warmup_ratio", form=ADVANCED,
        help="Llama 2: 3 %.",
    )  # fmt: skip
    min_warmup_steps: int = setting(5, minimum=0)
    min_lr_ratio: float = setting(
        0.1, label="Final LR ratio", minimum=0, maximum=1, flag="min_lr_ratio", form=ADVANCED,
        help="Cosine decay to 10 % of the max.",
    )  # fmt: skip
    weight_decay: float = setting(
        0.0, label="Weight decay", minimum=0, flag="weight_decay", form=ADVANCED
    )
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_epsilon: float = setting(1e-5, minimum=0, above=True)
    max_grad_norm: float = setting(
        1.0, label="Gradient clipping", minimum=0, above=True, flag="max_grad_norm", form=ADVANCED
    )
    mixed_precision: str = setting(
        "auto", label="Mixed precision", choices=("auto", "no", "bf16", "fp16"),
        flag="mixed_precision", form=ADVANCED, help="auto: bf16 on CUDA, none on CPU.",
    )  # fmt: skip
    prefix_sharing: str = setting(
        "auto", label="Prefix sharing", choices=("auto", "on", "off"),
        flag="prefix_sharing", form=ADVANCED,
        help="Score chosen and rejected in one pass, the shared context once (decoders).",
    )  # fmt: skip
    # A reward is a deterministic function of the text.
    disable_dropout: bool = setting(True)
    eval_every: int = setting(
        0, label="Evaluate every (steps)", minimum=0, flag="eval_every", form=ADVANCED,
        help="0: at the end.",
    )  # fmt: skip
    eval_batch_size: int = setting(16, minimum=1)
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
    def from_dict(cls, values: dict[str, Any]) -> RewardTrainingConfig:
        """A config from JSON-like values; unknown keys and bad values raise ConfigError."""
        return hyperparameters.from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["adam_betas"] = list(self.adam_betas)
        return values


@dataclass
class RewardEvalConfig:
    """The settings of an evaluation of a reward model (``eval-reward``, the "reward-eval"
    stage); unset ones come from the model's own training config."""

    kind: str | None = setting(
        None, choices=KINDS, flag="kind", help="Kind of the pairs whose records carry none "
        "(default: the model's)."
    )  # fmt: skip
    max_length: int | None = setting(
        None, minimum=2, flag="max_length", help="Tokens per text (default: the model's)."
    )
    batch_size: int = setting(16, minimum=1, flag="batch_size", help="Pairs per forward pass.")
    cpu: bool = setting(False, help="evaluate on the CPU even where a GPU is present")

    def __post_init__(self) -> None:
        hyperparameters.validate(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RewardEvalConfig:
        return hyperparameters.from_dict(cls, values)
