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
from collections.abc import Sequence
from typing import Any

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


def gate_precision_recall(
    flagged: Sequence[bool], unsafe: Sequence[bool], threshold: float = SAFETY_GATE
) -> dict[str, Any] | None:
    """Precision and recall of the gate's "unsafe" (``flagged``: σ(r) < threshold) against the
    replies' labels (``unsafe``); None when nothing is labelled. Llama 2 reports 0.89 / 0.55 for
    its safety reward model at 0.15 on its safety test set."""
    if not unsafe:
        return None
    true_positives = sum(f and u for f, u in zip(flagged, unsafe, strict=True))
    predicted, actual = sum(flagged), sum(unsafe)
    return {
        "threshold": threshold,
        "labelled_responses": len(unsafe),
        "unsafe": actual,
        "predicted_unsafe": predicted,
        "precision": true_positives / predicted if predicted else None,
        "recall": true_positives / actual if actual else None,
    }
