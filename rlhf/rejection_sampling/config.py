"""The settings of a rejection-sampling iteration, declared once (:mod:`rlhf.hyperparameters`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rlhf import hyperparameters
from rlhf.hyperparameters import ConfigError, Rule, setting


@dataclass
class RejectionSamplingConfig:
    """Which models, how many samples at which temperatures, and which prompts.

    The paper samples K up to 30 per prompt with the largest model and found the best
    temperature moving each round (T ≈ 1.2–1.3 for 10–100 samples); ``temperatures`` with more
    than one value is a sweep: every prompt is sampled at each, the report compares them (the
    best-of-N curves) and names the best, and the pool keeps each prompt's best whatever its
    temperature.
    """

    policy: str = setting("", help="the model that samples (a directory or hub id)")
    reward_helpfulness: str = setting("", help="the helpfulness reward model's directory")
    reward_safety: str = setting("", help="the safety reward model's directory")
    samples_per_prompt: int = setting(
        4, minimum=1, flag="samples", help="K: samples of each prompt (best-of-K)."
    )
    temperatures: list[float] = field(default_factory=lambda: [1.0])
    top_p: float = setting(1.0, minimum=0, above=True, maximum=1, flag="top_p")
    max_new_tokens: int = setting(128, minimum=1, flag="max_new_tokens")
    # A CPU's matrix products run faster on more rows, and a prompt's K rows share one copy of
    # its KV cache: SmolLM2 gave 1.20 samples/s at 8 prompts × 8 and 1.54 at 32 × 8, scoring
    # included (bench/rejection_sampling.py; 32 and 16 texts a scoring row). On a GPU with a
    # large policy, whose cache is repeated for the K rows, fewer may be needed to fit.
    prompt_batch_size: int = setting(
        32, minimum=1, flag="prompt_batch_size", help="Prompts sampled together (× K rows)."
    )
    # Texts per packed reward-model row: SmolLM2 scored 64 texts of ~170 tokens in 17.7 s at 8
    # (a row's activations fit a CPU's caches), 19.4 s at 16, 19.8 s at 32.
    reward_batch_size: int = setting(8, minimum=1, flag="reward_batch_size")
    reward_max_length: int = setting(
        512, minimum=2, flag="reward_max_length", help="Tokens per scored text."
    )
    eval_fraction: float = setting(
        0.0, minimum=0, maximum=1, flag="eval_fraction",
        help="Prompts held out by hash (rlhf.data.split.held_out): never sampled here.",
    )  # fmt: skip
    max_prompts: int | None = setting(
        None, minimum=1, flag="max_prompts",
        help="At most this many prompts per set (helpfulness, safety), in file order.",
    )  # fmt: skip
    iteration: int = setting(1, minimum=1, flag="iteration", help="Recorded in the pool.")
    seed: int = setting(0, minimum=0, flag="seed", help="Fixes every sample's seed.")
    cpu: bool = setting(False, help="sample on the CPU even where a GPU is present")

    def __post_init__(self) -> None:
        self.temperatures = list(self.temperatures)
        hyperparameters.validate(self)
        if not self.temperatures:
            raise ConfigError("temperatures", "must name at least one temperature")
        for temperature in self.temperatures:
            Rule("temperatures", float, None, minimum=0).check(temperature)
        for name in ("policy", "reward_helpfulness", "reward_safety"):
            if not getattr(self, name):
                raise ConfigError(name, "is required")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RejectionSamplingConfig:
        return hyperparameters.from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
