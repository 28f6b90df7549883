"""Reward-model losses and pairwise metrics: small pure functions on reward tensors.

Rewards are tensors of one scalar per pair, shape ``(B,)`` (any shape works as long as
chosen and rejected match). The loss is computed in at least float32, whatever the rewards'
dtype (bf16 rewards under mixed precision are upcast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"unknown reduction {reduction!r}; use one of {REDUCTIONS}")


def _difference(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen and rejected rewards differ in shape: {tuple(chosen_rewards.shape)} "
            f"vs {tuple(rejected_rewards.shape)}"
        )
    dtype = torch.promote_types(chosen_rewards.dtype, torch.float32)
    return chosen_rewards.to(dtype) - rejected_rewards.to(dtype)


def margin_ranking_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margins: torch.Tensor | float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The Llama 2 reward-model loss with a margin (Touvron et al. 2023, eq. 2)::

        L = -log σ(r_c − r_r − m) = softplus(−(r_c − r_r − m)) = log(1 + exp(r_r + m − r_c))

    ``margins`` (a number or a tensor broadcast against the rewards; None means 0, the plain
    Bradley-Terry loss) comes from the rating's strength, see
    :func:`rlhf.preferences.margin_for_rating`: a pair rated "significantly better" must be
    separated by a larger reward gap before its loss vanishes. Computed as
    ``-F.logsigmoid(x)``, finite for any finite x (|x| = 1e4 included), with gradients
    ∂L/∂r_c = −σ(−x) ≤ 0, ∂L/∂r_r = +σ(−x) ≥ 0 and ∂L/∂m = +σ(−x), where x = r_c − r_r − m.
    ``reduction``: "mean" (default), "sum", or "none" (one loss per pair).
    """
    difference = _difference(chosen_rewards, rejected_rewards)
    if margins is not None:
        margins = torch.as_tensor(margins, dtype=difference.dtype, device=difference.device)
        difference = difference - margins
    return _reduce(-F.logsigmoid(difference), reduction)


def preference_probability(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> torch.Tensor:
    """Bradley-Terry probability that the chosen reply is preferred: ``σ(r_c − r_r)``, per pair."""
    return torch.sigmoid(_difference(chosen_rewards, rejected_rewards))


def pairwise_accuracy(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """The share of pairs the rewards rank right: ``mean(1[r_c > r_r] + ½·1[r_c = r_r])``.

    A tie counts one half, the expected score of breaking it at random: a model that gives every
    reply the same reward scores 0.5, chance. ``reduction="none"`` gives the per-pair score
    (1, ½ or 0) for accuracy by bucket or batch; "sum" the number of pairs ranked right.
    """
    difference = _difference(chosen_rewards, rejected_rewards)
    correct = (difference > 0).to(difference.dtype) + 0.5 * (difference == 0).to(difference.dtype)
    return _reduce(correct, reduction)


__all__ = ["REDUCTIONS", "margin_ranking_loss", "pairwise_accuracy", "preference_probability"]
