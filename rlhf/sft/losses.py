"""The SFT loss: cross-entropy on the tokens that count, none on the others.

Positions are aligned: ``logits[i]`` is the model's prediction of ``targets[i]`` (for a causal
LM, the logits at token t predict token t + 1: :func:`causal_lm_loss` shifts a sequence's
labels into place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf.sft.data import IGNORE_INDEX


def masked_token_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    reduction: str = "mean",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """The cross-entropy of the counted targets.

    With ``z_i`` the logits (V,) of position i, ``y_i`` its target and ``m_i = [y_i ≠ −100]``::

        ℓ_i = m_i · (logsumexp(z_i) − z_i[y_i])          (reduction="none", 0 where not counted)
        L   = Σ_i ℓ_i                                     (reduction="sum")
        L   = Σ_i ℓ_i / Σ_i m_i                           (reduction="mean": NaN if none counts)

    ``logits`` (..., V) and ``targets`` (...) of the same leading shape; computed in float32.
    """
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', not {reduction!r}")
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_targets = targets.reshape(-1)
    losses = F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index, reduction="none")
    if reduction == "none":
        return losses.reshape(targets.shape)
    total = losses.sum()
    if reduction == "sum":
        return total
    return total / (flat_targets != ignore_index).sum()


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
    """:func:`masked_token_cross_entropy` of a sequence: ``logits`` (..., T, V) at each token and
    ``labels`` (..., T) in the Hugging Face convention (``labels[t]``: the token t if it counts),
    so the logits at t − 1 are scored against ``labels[t]``."""
    return masked_token_cross_entropy(logits[..., :-1, :], labels[..., 1:], **kwargs)


__all__ = ["IGNORE_INDEX", "causal_lm_loss", "masked_token_cross_entropy"]
