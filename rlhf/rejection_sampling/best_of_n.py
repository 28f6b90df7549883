"""The best-of-N curve (Llama 2, Fig. 7): how the reward of the best of N samples grows with N.

From K scored samples of a prompt, the expected maximum (and median) of N of them drawn at random
without replacement, for N = 1 … K, computed exactly from the order statistics rather than from
the first N samples (which would depend on their order). With the scores sorted ascending,
s_1 ≤ … ≤ s_K, the i-th is the j-th smallest of a random N-subset with probability

    P(i, j) = C(i−1, j−1) · C(K−i, N−j) / C(K, N)

so E[max of N] = Σ_i P(i, N) · s_i, and the median of N is the (N+1)/2-th smallest (odd N) or the
mean of the N/2-th and N/2+1-th (even N). E[max of N] never decreases with N; at N = K it is the
best sample, at N = 1 the mean. The curve averages over prompts, with standard errors.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def expected_order_statistic(scores: Sequence[float], n: int, j: int) -> float:
    """E[the j-th smallest of n of ``scores`` drawn without replacement] (1 ≤ j ≤ n ≤ K)."""
    k = len(scores)
    if not 1 <= j <= n <= k:
        raise ValueError(f"need 1 <= j <= n <= K, got j={j}, n={n}, K={k}")
    ranked = sorted(scores)
    subsets = math.comb(k, n)
    return (
        sum(
            math.comb(i - 1, j - 1) * math.comb(k - i, n - j) * ranked[i - 1]
            for i in range(j, k - (n - j) + 1)
        )
        / subsets
    )


def expected_max(scores: Sequence[float], n: int) -> float:
    return expected_order_statistic(scores, n, n)


def expected_median(scores: Sequence[float], n: int) -> float:
    if n % 2:
        return expected_order_statistic(scores, n, (n + 1) // 2)
    lower = expected_order_statistic(scores, n, n // 2)
    return (lower + expected_order_statistic(scores, n, n // 2 + 1)) / 2


def _mean_and_error(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, error


def best_of_n_curve(groups: Sequence[Sequence[float]]) -> list[dict[str, float]]:
    """For N = 1 … K (K: the smallest group), the mean over prompts of the expected best and
    median reward of N samples, each with its standard error over prompts."""
    if not groups or not all(groups):
        raise ValueError("need at least one prompt, each with at least one scored sample")
    curve = []
    for n in range(1, min(len(group) for group in groups) + 1):
        best, best_error = _mean_and_error([expected_max(g, n) for g in groups])
        median, median_error = _mean_and_error([expected_median(g, n) for g in groups])
        curve.append(
            {
                "n": n,
                "max": best,
                "max_stderr": best_error,
                "median": median,
                "median_stderr": median_error,
            }
        )
    return curve
