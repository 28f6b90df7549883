"""The settings of a reward-model run, declared once (:mod:`rlhf.hyperparameters`).

The command line's flags, the platform's training form and API, and the checks of a run spec are
all derived from these declarations. This module imports no torch, so the platform may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf import hyperparameters, trainer_settings
from rlhf.data.pairs import KINDS
from rlhf.hyperparameters import ADVANCED, BASIC, ConfigError, setting
from rlhf.preferences import DEFAULT_MARGIN_TABLE, MARGIN_TABLES
from rlhf.trainer_settings import TrainerConfig


@dataclass
class RewardTrainingConfig(TrainerConfig):
    """Every setting of a reward-model run; the defaults are the paper's where it gives them.

    The paper trains 7B–70B models with an effective batch of 512 pairs, learning rate 1e-5
    (5e-6 for 70B), for one epoch over about a million pairs. The defaults here are for the
    small backbones and the few thousand pairs of a platform's first rounds, as measured: with
    the paper's 1e-5 and one epoch, MiniLM on HH-RLHF harmless-base barely moves (training loss
    0.693 → 0.688; every score σ(r) between 0.50 and 0.52, so the 0.15 safety gate never fires
    and best-of-K has nothing to choose); with 5e-5 and 3 epochs it reaches 61.9 % held-out
    accuracy and spreads its scores from 0.06 to 0.94 (10th–90th percentile). Set the paper's
    values for a 7B+ backbone. The settings every trainer has are declared in
    :mod:`rlhf.trainer_settings`, their defaults here.
    """

    kind: str = setting("helpfulness", choices=KINDS, help="which reward model")
    base_model: str = setting("", help="backbone directory or hub id (the policy, as in the paper)")
    learning_rate: float = trainer_settings.learning_rate(
        5e-5, help="For small backbones; Llama 2: 1e-5 at 7B–34B, 5e-6 at 70B."
    )
    micro_batch_size: int = trainer_settings.micro_batch_size(
        8, label="Batch size",
        help="Pairs per step and device; × accumulation × devices is the effective batch "
        "(Llama 2: 512 pairs).",
    )  # fmt: skip
    gradient_accumulation_steps: int = trainer_settings.gradient_accumulation_steps(1)
    max_length: int = trainer_settings.max_length(
        512, label="Max length", help="Tokens per text; longer contexts lose their oldest turns."
    )
    epochs: int = trainer_settings.epochs(
        3, help="Llama 2 trains one epoch over ~1M pairs; a few thousand need more."
    )
    max_steps: int | None = trainer_settings.max_steps(
        None, help="Stop after this many steps (may exceed an epoch); blank: no limit."
    )
    margin_table: str = setting(
        DEFAULT_MARGIN_TABLE, label="Margin table", choices=tuple(MARGIN_TABLES),
        flag="margin_table", form=BASIC,
        help="Loss margin per rating: small {1, 2/3, 1/3, 0}, large {3, 2, 1, 0}, none.",
    )  # fmt: skip
    eval_fraction: float = trainer_settings.eval_fraction(
        0.2, help="Share of prompts held out for evaluation (a prompt is never on both sides)."
    )
    seed: int = trainer_settings.seed(0, help="Fixes the split, the order and the new head.")
    warmup_ratio: float = trainer_settings.warmup_ratio(0.03, help="Llama 2: 3 %.")
    min_warmup_steps: int = trainer_settings.min_warmup_steps(5)
    min_lr_ratio: float = trainer_settings.min_lr_ratio(0.1)
    weight_decay: float = trainer_settings.weight_decay(0.0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_epsilon: float = trainer_settings.adam_epsilon(1e-5)
    max_grad_norm: float = trainer_settings.max_grad_norm(1.0)
    mixed_precision: str = trainer_settings.mixed_precision("auto")
    prefix_sharing: str = setting(
        "auto", label="Prefix sharing", choices=("auto", "on", "off"),
        flag="prefix_sharing", form=ADVANCED,
        help="Score chosen and rejected in one pass, the shared context once (decoders).",
    )  # fmt: skip
    # A reward is a deterministic function of the text.
    disable_dropout: bool = setting(True)
    eval_every: int = trainer_settings.eval_every(0, help="0: at the end.")
    eval_batch_size: int = setting(16, minimum=1)
    checkpoint_every: int = trainer_settings.checkpoint_every(0)
    keep_checkpoints: int = trainer_settings.keep_checkpoints(2)
    log_every: int = trainer_settings.log_every(1)
    cpu: bool = trainer_settings.cpu(False)


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


__all__ = ["ConfigError", "RewardEvalConfig", "RewardTrainingConfig"]
