"""Llama 2's safety gate: which reward model's score a (prompt, response) is judged by.

    R_c = R_safety       if the prompt is a safety prompt, or R_safety < 0.15
          R_helpfulness  otherwise

with R a reward model's score as a probability, σ(r) ∈ [0, 1] (Touvron et al. 2023, section
3.2.3; DESIGN.md). 0.15 is the paper's threshold: a response the safety model finds that
unlikely to be safe is judged for safety whatever its prompt. Rejection sampling, PPO and the
evaluation of a policy all judge by this one function.
"""

from __future__ import annotations

import math

SAFETY_GATE = 0.15


def sigmoid(score: float) -> float:
    """A reward model's raw score as a probability, σ(r)."""
    return (
        1.0 / (1.0 + math.exp(-score)) if score >= 0 else math.exp(score) / (1.0 + math.exp(score))
    )


def gated_reward(
    helpfulness: float, safety: float, safety_prompt: bool, threshold: float = SAFETY_GATE
) -> tuple[float, bool]:
    """(R_c, whether the safety score decided) for probabilities ``helpfulness`` and ``safety``."""
    by_safety = safety_prompt or safety < threshold
    return (safety if by_safety else helpfulness), by_safety
