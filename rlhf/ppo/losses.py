"""PPO's losses (Schulman et al. 2017): the clipped policy loss, the clipped value loss and the
policy's entropy, each a mean over the batch's response tokens (every token weighs the same,
whatever its response's length).

Shapes: (B, T) with a (B, T) response mask, as in :mod:`.rewards`; logits (B, T, V). Values at
masked positions are not read. Losses are computed in at least float32.
"""

from __future__ import annotations

import torch

from rlhf.ppo.rewards import masked_mean

CLIP = 0.2  # ε of the policy loss (Llama 2) and of the value loss


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = CLIP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, clip_fraction), both scalars::

        ρ_t  = exp(log π(y_t) − log π_old(y_t))
        L    = mean_t max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε, 1 + ε))
        clip_fraction = mean_t 1[−A_t·clip(ρ_t, 1 − ε, 1 + ε) > −A_t·ρ_t]

    The max is the pessimistic bound: the clip binds (and the token's gradient is 0) only where
    it lowers the objective — ρ > 1 + ε with A > 0, or ρ < 1 − ε with A < 0 — which is what
    clip_fraction counts. At ρ = 1 ± ε exactly, nothing is clipped. ``logprobs`` (with grad),
    ``old_logprobs`` and ``mask``: (B, T); ``advantages``: (B, T), or (B, 1) for one advantage
    per response (GRPO, RLOO) broadcast over its tokens.
    """
    if logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and "
            f"mask {tuple(mask.shape)} differ"
        )
    keep = mask.bool()
    dtype = torch.promote_types(
        torch.promote_types(logprobs.dtype, old_logprobs.dtype), torch.float32
    )
    # 0 where masked before the exp: padding's log-probs can be anything, ±inf included.
    log_ratio = torch.where(keep, logprobs.to(dtype) - old_logprobs.to(dtype), 0)
    ratio = torch.exp(log_ratio)
    advantages = advantages.to(dtype)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), keep)
    clip_fraction = masked_mean((clipped > unclipped).to(dtype), keep)
    return loss, clip_fraction.detach()


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = CLIP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, clip_fraction), both scalars::

        V_clip = V_old + clip(V − V_old, −ε, ε)
        L      = ½·mean_t max((V_t − R_t)², (V_clip,t − R_t)²)
        clip_fraction = mean_t 1[(V_clip,t − R_t)² > (V_t − R_t)²]

    The value head may move at most ε from the values it had at sampling time before its
    error stops counting in its favour. ``values`` (with grad), ``old_values``, ``returns``
    (from :func:`rlhf.ppo.advantages.gae`) and ``mask``: (B, T).
    """
    if not values.shape == old_values.shape == returns.shape == mask.shape:
        raise ValueError(
            f"values {tuple(values.shape)}, old_values {tuple(old_values.shape)}, returns "
            f"{tuple(returns.shape)} and mask {tuple(mask.shape)} differ"
        )
    keep = mask.bool()
    dtype = torch.promote_types(values.dtype, torch.float32)
    values, old_values, returns = values.to(dtype), old_values.to(dtype), returns.to(dtype)
    values_clipped = old_values + (values - old_values).clamp(-clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), keep)
    clip_fraction = masked_mean((clipped > unclipped).to(dtype), keep)
    return loss, clip_fraction.detach()


def token_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """The entropy of each position's distribution, from its log-softmax (…, V)::

        H_t = −Σ_v p_v·log p_v,   p = exp(log_probs)

    Tokens of probability 0 (logits of −inf) contribute 0. Shape (…)."""
    probs = log_probs.exp()
    return -torch.where(probs > 0, probs * log_probs, 0).sum(dim=-1)


def logprobs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(token) at each position and, if asked, the position's :func:`token_entropy`
    (without gradient), from one log-softmax of the (…, V) ``logits`` (upcast to float32)::

        log p_t = z_t,y_t − logsumexp(z_t)

    ``tokens`` (…); both results (…)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (…, V)
    taken = log_probs.gather(-1, tokens[..., None]).squeeze(-1)
    return taken, token_entropy(log_probs.detach()) if with_entropy else None


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The policy's mean entropy per response token, a scalar: :func:`token_entropy` of the
    logits' log-softmax, averaged over the (B, T) ``mask``. ``logits`` z: (B, T, V), upcast to at
    least float32 (chunk long batches)."""
    if logits.shape[:-1] != mask.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match mask {tuple(mask.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = torch.where(mask.bool()[..., None], logits.to(dtype), 0)  # padding: any finite row
    return masked_mean(token_entropy(torch.log_softmax(z, dim=-1)), mask)


__all__ = [
    "CLIP",
    "clipped_policy_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "logprobs_and_entropy",
    "token_entropy",
]
