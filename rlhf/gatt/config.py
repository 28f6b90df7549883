"""The settings of a Ghost Attention run, declared once (:mod:`rlhf.hyperparameters`).

A GAtt run samples its data, then fine-tunes exactly as the SFT stage does: its config *is* an
SFT config (:class:`rlhf.sft.config.SFTConfig`: ``base_model``, the model fine-tuned, the
optimiser, ``eval_fraction``, ``seed``, …) with GAtt's own settings added, so the SFT settings
are declared in one place and their flags are the same. Two of them mean a little more here:
``seed`` also fixes the instructions drawn and every sample, and ``eval_fraction`` holds out
whole dialogues (by their first user turn), whose GAtt examples give the held-out loss and on
which adherence is measured before and after. ``train_on`` is "last" and only that: an example
counts its last turn only. Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rlhf.gatt.instructions import FAMILIES
from rlhf.hyperparameters import ConfigError, setting
from rlhf.sft.config import SFTConfig


@dataclass
class GAttConfig(SFTConfig):
    """SFT's settings, and which model samples, how, and which instructions.

    ``families`` (default: all of :data:`rlhf.gatt.instructions.FAMILIES`) are the constraint
    families an instruction combines; only rule-checkable ones can be filtered on and measured.
    """

    # GAtt's examples count their last turn only (each record says so): no flag to change it.
    train_on: str = setting("last", choices=("last",))
    policy: str = setting("", help="the model that samples the dialogues (the latest policy)")
    turns: int = setting(
        3, minimum=2, flag="turns",
        help="User turns sampled per dialogue at most (dialogues with fewer than 2 are left out).",
    )  # fmt: skip
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    max_families: int = setting(
        2, minimum=1, flag="max_families", help="An instruction combines 1 to this many families."
    )
    short_fraction: float = setting(
        0.5, minimum=0, maximum=1, flag="short_fraction",
        help="Share of instructions in their short form (Llama 2: half).",
    )  # fmt: skip
    temperature: float = setting(0.7, minimum=0, flag="temperature")
    top_p: float = setting(0.9, minimum=0, above=True, maximum=1, flag="top_p")
    max_new_tokens: int = setting(128, minimum=1, flag="max_new_tokens")
    filter_adherent: bool = setting(
        True, flag="filter_adherent",
        help="Resample a turn that breaks a rule-checkable instruction (up to max_resamples "
        "times), else drop its dialogue: a small policy often ignores even an instruction in "
        "its current turn.",
    )  # fmt: skip
    max_resamples: int = setting(4, minimum=0, flag="max_resamples")
    repair_rules: bool = setting(
        False, flag="repair_rules",
        help="Make a reply that breaks a rule-checkable instruction keep it (lower-cased; the "
        "word added at its start or end) instead of resampling it: a policy too small to keep "
        "such rules even in its current turn still gets data that keeps them.",
    )  # fmt: skip
    prompt_batch_size: int = setting(
        8, minimum=1, flag="prompt_batch_size", help="Dialogues sampled together."
    )
    max_eval_dialogues: int | None = setting(
        64, minimum=1, flag="max_eval_dialogues",
        help="Held-out dialogues used at most (held-out loss, adherence by turn).",
    )  # fmt: skip

    def validate(self) -> None:
        super().validate()
        self.families = list(self.families)
        if not self.families:
            raise ConfigError("families", "must name at least one constraint family")
        for name in self.families:
            if name not in FAMILIES:
                raise ConfigError(
                    "families", f"{name!r} is not a constraint family: {list(FAMILIES)}"
                )
        if len(set(self.families)) != len(self.families):
            raise ConfigError("families", "names a family twice")

    def sft_config(self) -> SFTConfig:
        """The SFT stage's part of these settings."""
        names = [f.name for f in dataclasses.fields(SFTConfig)]
        return SFTConfig(**{name: getattr(self, name) for name in names})


__all__ = ["ConfigError", "GAttConfig"]
