"""Comparing two policies on the same prompts: the win rate by a reward, with its confidence
interval.

For each prompt, policy A wins when its response's gated reward is higher than B's, ties count
half: win rate w = (wins + ties / 2) / n. The interval is Wilson's score interval at 95 %
(z = 1.96) around w — it stays inside [0, 1] and behaves for rates near 0 or 1, where the normal
approximation does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z_95 = 1.959963984540054


def wilson_interval(rate: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``rate`` observed on ``n`` trials."""
    if n == 0:
        return 0.0, 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, float]:
    """A's win rate over B, prompt by prompt (see the module docstring)."""
    if len(ours) != len(theirs) or not ours:
        raise ValueError("need the same, non-zero number of rewards for both policies")
    wins = sum(a > b for a, b in zip(ours, theirs, strict=True))
    ties = sum(a == b for a, b in zip(ours, theirs, strict=True))
    rate = (wins + ties / 2) / len(ours)
    low, high = wilson_interval(rate, len(ours))
    return {
        "prompts": len(ours),
        "wins": wins,
        "ties": ties,
        "losses": len(ours) - wins - ties,
        "win_rate": rate,
        "ci95_low": low,
        "ci95_high": high,
    }
