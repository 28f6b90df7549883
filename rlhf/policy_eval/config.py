"""The settings of a policy evaluation, declared once (:mod:`rlhf.hyperparameters`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rlhf import hyperparameters
from rlhf.hyperparameters import ConfigError, setting


@dataclass
class PolicyEvalConfig:
    policy: str = setting("", help="the policy evaluated (a directory)")
    reward_helpfulness: str = setting("", help="the helpfulness reward model's directory")
    reward_safety: str = setting("", help="the safety reward model's directory")
    reference: str = setting("", help="a reference policy: KL(policy ‖ reference) is reported")
    compare_with: str = setting("", help="a second policy: the win rate of the first over it")
    temperature: float = setting(0.7, minimum=0, flag="temperature")
    top_p: float = setting(0.9, minimum=0, above=True, maximum=1, flag="top_p")
    max_new_tokens: int = setting(128, minimum=1, flag="max_new_tokens")
    prompt_batch_size: int = setting(16, minimum=1, flag="prompt_batch_size")
    reward_batch_size: int = setting(16, minimum=1, flag="reward_batch_size")
    reward_max_length: int = setting(512, minimum=2, flag="reward_max_length")
    eval_fraction: float = setting(
        0.0, minimum=0, maximum=1, flag="eval_fraction",
        help="Evaluate only the prompts held out at this fraction (the side rejection sampling "
        "and training never see, by the same hash); 0: every prompt.",
    )  # fmt: skip
    max_prompts: int | None = setting(
        None, minimum=1, flag="max_prompts", help="At most this many prompts per set."
    )
    seed: int = setting(0, minimum=0, flag="seed")
    cpu: bool = setting(False, help="evaluate on the CPU even where a GPU is present")

    def __post_init__(self) -> None:
        hyperparameters.validate(self)
        for name in ("policy", "reward_helpfulness", "reward_safety"):
            if not getattr(self, name):
                raise ConfigError(name, "is required")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PolicyEvalConfig:
        return hyperparameters.from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
