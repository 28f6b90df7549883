"""The settings every trainer has (:mod:`rlhf.nn.trainer`), declared once for all of them.

Each function is one setting's declaration (:func:`rlhf.hyperparameters.setting`): its label,
bounds, command-line flag and place on the form are fixed here, so that a setting is the same
in every stage that has it; its default, and its help where the stages tell it differently, are
the stage's own. A stage's config declares its fields with them, where they stand among its
own (the order of its flags and its form):

    @dataclass
    class SFTConfig(TrainerConfig):
        learning_rate: float = trainer_settings.learning_rate(2e-5, help="Llama 2: 2e-5.")
        ...

:class:`TrainerConfig` gives such a config its checks and its JSON form. Torch-free: the
platform builds its forms from these configs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

from rlhf import hyperparameters
from rlhf.hyperparameters import ADVANCED, BASIC, ConfigError, setting

# --- the data and the batches -------------------------------------------------------------------


def micro_batch_size(default: int, *, label: str, help: str) -> Any:
    """Items per step and device; what an item is (a pair, a packed row) is the stage's."""
    return setting(default, label=label, help=help, minimum=1, flag="batch_size", form=BASIC)


def gradient_accumulation_steps(default: int) -> Any:
    return setting(
        default, label="Gradient accumulation", minimum=1, flag="gradient_accumulation", form=BASIC
    )


def max_length(default: int, *, label: str, help: str) -> Any:
    return setting(default, label=label, help=help, minimum=2, flag="max_length", form=BASIC)


def epochs(default: int, *, help: str = "") -> Any:
    return setting(default, label="Epochs", help=help, minimum=1, flag="epochs", form=BASIC)


def max_steps(default: int | None, *, help: str) -> Any:
    return setting(default, label="Max steps", help=help, minimum=1, flag="max_steps", form=BASIC)


def eval_fraction(default: float, *, help: str) -> Any:
    return setting(
        default, label="Held-out fraction", help=help, minimum=0, maximum=1,
        flag="eval_fraction", form=BASIC,
    )  # fmt: skip


def seed(default: int, *, help: str) -> Any:
    return setting(default, label="Seed", help=help, minimum=0, flag="seed", form=BASIC)


# --- the optimizer and its schedule -------------------------------------------------------------


def learning_rate(default: float, *, help: str) -> Any:
    """The maximum learning rate, reached at the end of the warm-up."""
    return setting(
        default, label="Learning rate", help=help, minimum=0, above=True, flag="lr", form=BASIC
    )


def warmup_ratio(default: float, *, help: str = "") -> Any:
    return setting(
        default, label="Warm-up ratio", help=help, minimum=0, maximum=1,
        flag="warmup_ratio", form=ADVANCED,
    )  # fmt: skip


def min_warmup_steps(default: int) -> Any:
    return setting(default, minimum=0)


def min_lr_ratio(default: float) -> Any:
    """Where the cosine ends, as a fraction of the maximum learning rate."""
    return setting(
        default, label="Final LR ratio", minimum=0, maximum=1, flag="min_lr_ratio", form=ADVANCED,
        help=f"Cosine decay to {default * 100:g} % of the max.",
    )  # fmt: skip


def weight_decay(default: float, *, help: str = "") -> Any:
    return setting(
        default, label="Weight decay", help=help, minimum=0, flag="weight_decay", form=ADVANCED
    )


def adam_epsilon(default: float) -> Any:
    return setting(default, minimum=0, above=True)


def max_grad_norm(default: float) -> Any:
    return setting(
        default, label="Gradient clipping", minimum=0, above=True, flag="max_grad_norm",
        form=ADVANCED,
    )  # fmt: skip


# --- where it runs, what it reports and keeps ---------------------------------------------------


def mixed_precision(default: str) -> Any:
    return setting(
        default, label="Mixed precision", choices=("auto", "no", "bf16", "fp16"),
        flag="mixed_precision", form=ADVANCED, help="auto: bf16 on CUDA, none on CPU.",
    )  # fmt: skip


def eval_every(default: int, *, help: str) -> Any:
    return setting(
        default, label="Evaluate every (steps)", help=help, minimum=0, flag="eval_every",
        form=ADVANCED,
    )  # fmt: skip


def checkpoint_every(default: int) -> Any:
    return setting(
        default, minimum=0, flag="checkpoint_every", help="Steps between checkpoints (0: none)."
    )


def keep_checkpoints(default: int) -> Any:
    return setting(default, minimum=1)


def log_every(default: int) -> Any:
    return setting(default, minimum=1)


def cpu(default: bool) -> Any:
    return setting(default, help="train on the CPU even where a GPU is present")


# --- the config ---------------------------------------------------------------------------------


class TrainerConfig:
    """What a trainer's config dataclass has beside its fields: the checks (of every setting,
    and of ``adam_betas``, a pair of numbers in [0, 1]), and its JSON form, ``adam_betas`` a list
    there and a tuple here."""

    adam_betas: tuple[float, float]  # a field of each config, its default the stage's

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
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """A config from JSON-like values; unknown keys and bad values raise ConfigError."""
        return hyperparameters.from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["adam_betas"] = list(self.adam_betas)
        return values


__all__ = ["TrainerConfig"]
