"""Advantages: GAE with a value head (PPO), and the group baselines that need none (GRPO, RLOO).

Token-level tensors are (B, T) with a (B, T) response mask, as in :mod:`.rewards`. Group
baselines take one score per response, (P·K,), K responses to each of P prompts, prompt i's
group in rows i·K … i·K + K − 1 (the order a sampler that repeats each prompt K times gives).
No gradient is meant to flow through any of them: pass detached tensors.
"""

from __future__ import annotations

import torch

GRPO_EPS = 1e-4  # added to the group's standard deviation, as TRL's GRPOTrainer does


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each row's response tokens::

        δ_t = r_t + γ·V_{t'} − V_t          t' the next response token; V = 0 after the last
        A_t = δ_t + γ·λ·A_{t'}              (A = 0 after the last)
        R_t = A_t + V_t                     the value head's target

    ``rewards``, ``values``, ``mask``: (B, T). Masked positions are skipped (not read; any
    layout of the mask works, left padding included) and come back as 0 in both
    (advantages, returns), each (B, T). λ = 1 gives Monte Carlo returns, λ = 0 one-step TD.
    """
    if not rewards.shape == values.shape == mask.shape or rewards.dim() != 2:
        raise ValueError(
            f"expected rewards, values, mask all (B, T); got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    rewards, values, keep = rewards.to(dtype), values.to(dtype), mask.bool()
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(rewards.shape[0])  # (B,) V_{t'}
    next_advantage = rewards.new_zeros(rewards.shape[0])  # (B,) A_{t'}
    for t in reversed(range(rewards.shape[1])):
        here = keep[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(here, advantage, 0)
        next_value = torch.where(here, values[:, t], next_value)
        next_advantage = torch.where(here, advantage, next_advantage)
    returns = torch.where(keep, advantages + values, 0)
    return advantages, returns


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(P·K,) → (P, K), in at least float32."""
    if group_size < 2:
        raise ValueError(f"a group needs at least 2 responses, got group_size={group_size}")
    if scores.dim() != 1 or scores.numel() % group_size:
        raise ValueError(
            f"expected scores (P·K,) with K={group_size}; got shape {tuple(scores.shape)}"
        )
    return scores.to(torch.promote_types(scores.dtype, torch.float32)).view(-1, group_size)


def grpo_advantages(
    scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = GRPO_EPS
) -> torch.Tensor:
    """GRPO's advantage (Shao et al. 2024, DeepSeekMath), one per response, (P·K,) → (P·K,)::

        A_i = (r_i − mean_g) / (std_g + eps)      g: the K responses to r_i's prompt

    std_g is the sample standard deviation (divide by K − 1), as in TRL's GRPOTrainer, so the
    numbers match that reference; eps = 1e-4 likewise. A group of equal scores gives zeros, not
    NaN. ``scale=False`` only subtracts the group mean (Dr. GRPO's variant).
    """
    groups = _groups(scores, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True, correction=1) + eps)
    return centred.reshape(-1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024), one per response, (P·K,) → (P·K,)::

        A_i = r_i − (1/(K−1))·Σ_{j≠i in g} r_j = K/(K−1)·(r_i − mean_g)

    The baseline of each response is the mean of the other K − 1 in its group, so it does not
    depend on the response it judges; a group's advantages sum to 0.
    """
    groups = _groups(scores, group_size)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


__all__ = ["GRPO_EPS", "gae", "grpo_advantages", "rloo_advantages"]
