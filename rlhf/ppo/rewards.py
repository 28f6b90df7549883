"""PPO's reward, token by token (Llama 2, section 3.2.3; DESIGN.md)::

    R(x, y) = WHITEN(LOGIT(R_c(x, y))) − β·KL(π(·|x) ‖ π_0(·|x)),   β = 0.01

R_c is the gated score, a probability in [0, 1], from :func:`rlhf.reward.gate.gated_reward`
(callers gate; nothing here chooses between the reward models). LOGIT undoes the sigmoid so the
score is a log-odds again, WHITEN puts the batch's scores at mean 0 and variance 1, and the KL
term, estimated per sampled token, keeps the policy near π_0, the policy PPO started from.

Shapes: B responses, T token positions; ``mask`` (B, T) is 1 (True) on the response's tokens and
0 on the prompt and padding, in any layout (left or right padding). Values at masked positions
are never read, whatever they are (inf and NaN included). Results are in at least float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlhf.ppo.config import KL_ESTIMATORS

WHITEN_EPS = 1e-8  # inside the square root: whitening a constant gives zeros, not NaN
BETA = 0.01  # the KL coefficient of Llama 2


def _float(x: torch.Tensor, *others: torch.Tensor) -> torch.dtype:
    dtype = torch.promote_types(x.dtype, torch.float32)
    for other in others:
        dtype = torch.promote_types(dtype, other.dtype)
    return dtype


def _same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes differ: {shapes}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_{mask} x / |mask|``, the mean over the entries where ``mask`` is true (all without
    one). An empty mask gives 0. Masked-out entries are not read: inf or NaN there is harmless."""
    if mask is None:
        return x.mean()
    keep = mask.bool()
    return torch.where(keep, x, 0).sum() / keep.sum().clamp(min=1)


def logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The inverse of the sigmoid, ``log(p / (1 − p))``, with p clamped to [eps, 1 − eps] so that
    scores of exactly 0 or 1 give ±13.8 (for eps 1e-6), not ±inf."""
    p = p.to(_float(p)).clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


def whiten(
    x: torch.Tensor, shift_mean: bool = True, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``(x − μ) / sqrt(σ² + 1e-8)``, μ and σ² the mean and the (biased, divide-by-n) variance
    of the entries where ``mask`` is true (all of them without a mask), over the whole tensor.

    ``shift_mean=False`` adds μ back: the variance is normalised, the mean kept (for rewards that
    should keep their sign on average). Masked-out entries come back as 0 and do not count in
    μ or σ². ``x``: any shape; ``mask``: the same shape.
    """
    x = x.to(_float(x))
    if mask is not None:
        _same_shape(x=x, mask=mask)
    mean = masked_mean(x, mask)
    centred = x - mean
    variance = masked_mean(centred * centred, mask)
    whitened = centred * torch.rsqrt(variance + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened if mask is None else torch.where(mask.bool(), whitened, 0)


def kl_per_token(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """A one-sample estimate of KL(π ‖ π_0) at each sampled token, (B, T) → (B, T).

    With y_t drawn from π, ``logprobs`` = log π(y_t), ``ref_logprobs`` = log π_0(y_t) and
    r = π_0(y_t) / π(y_t) = exp(ref − logp) (J. Schulman, "Approximating KL divergence", 2020):

    - ``"k1"``: ``log π − log π_0 = −log r``. Unbiased (E_π[−log r] is the KL by definition) but
      high-variance, and negative at every token π_0 likes more than π does.
    - ``"k3"``: ``(r − 1) − log r``. Also unbiased, since E_π[r − 1] = Σ π_0 − 1 = 0, and never
      negative (log r ≤ r − 1), with a lower variance while π stays near π_0; it grows like r
      where π_0 ≫ π. Computed as ``expm1(d) − d``, d = ref − logp, for precision near 0.

    Both are exactly 0 where the log-probabilities agree. Masking is the caller's (see
    :func:`sequence_rewards`).
    """
    _same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    dtype = _float(logprobs, ref_logprobs)
    log_ratio = ref_logprobs.to(dtype) - logprobs.to(dtype)  # log r
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use one of {KL_ESTIMATORS}")


def normalized_scores(gated_scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``WHITEN(LOGIT(R_c))`` over the batch, (B,) → (B,): the score term of Llama 2's reward,
    from the gated scores R_c ∈ [0, 1] (:func:`rlhf.reward.gate.gated_reward`, one per response).
    The statistics are the batch's: gather the scores of all processes first to whiten them
    together."""
    return whiten(logit(gated_scores, eps))


def missing_eos(
    response_ids: torch.Tensor, mask: torch.Tensor, eos_token_id: int | Sequence[int]
) -> torch.Tensor:
    """(B,) bool: True for each response with no end-of-sequence token among its response tokens
    (it ran into the length limit). ``response_ids`` and ``mask``: (B, T); an EOS in the padding
    (pad = EOS is common) does not count. ``eos_token_id``: one id or several."""
    _same_shape(response_ids=response_ids, mask=mask)
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    eos = torch.tensor(ids, dtype=response_ids.dtype, device=response_ids.device)
    return ~(torch.isin(response_ids, eos) & mask.bool()).any(dim=-1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask → (B,) long: the position of each row's last response token."""
    width = mask.shape[-1]
    return width - 1 - mask.bool().flip(-1).long().argmax(dim=-1)


def sequence_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    beta: float = BETA,
    truncated: torch.Tensor | None = None,
    truncation_penalty: float = 0.0,
) -> torch.Tensor:
    """Per-token rewards, (B, T)::

        r_t = −β·KL_t + 1[t = last(i)]·(s_i − c·1[truncated_i])   on response tokens
        r_t = 0                                                     elsewhere

    ``scores`` s: (B,), one already-normalised score per response (:func:`normalized_scores`);
    ``kl``: (B, T) from :func:`kl_per_token`; ``mask``: (B, T), every row with at least one
    response token (ValueError otherwise); ``truncated``: (B,) bool, the responses that hit the
    length limit without EOS (:func:`missing_eos`), None for none; c = ``truncation_penalty``,
    subtracted in the units of the whitened score (standard deviations of the batch), after
    whitening so that it is not normalised away.
    """
    _same_shape(kl=kl, mask=mask)
    if kl.dim() != 2 or tuple(scores.shape) != (kl.shape[0],):
        raise ValueError(
            f"expected scores (B,) and kl, mask (B, T); got {tuple(scores.shape)}, "
            f"{tuple(kl.shape)}"
        )
    keep = mask.bool()
    if not keep.any(dim=-1).all():
        raise ValueError("a row of the mask has no response token")
    dtype = _float(kl, scores)
    final = scores.to(dtype)
    if truncated is not None:
        if tuple(truncated.shape) != tuple(scores.shape):
            raise ValueError(f"truncated {tuple(truncated.shape)} vs scores {tuple(scores.shape)}")
        final = final - truncation_penalty * truncated.to(dtype)
    rewards = torch.where(keep, -beta * kl.to(dtype), 0)
    return rewards.scatter_add(1, last_token_index(keep)[:, None], final[:, None])


__all__ = [
    "BETA",
    "KL_ESTIMATORS",
    "WHITEN_EPS",
    "kl_per_token",
    "last_token_index",
    "logit",
    "masked_mean",
    "missing_eos",
    "normalized_scores",
    "sequence_rewards",
    "whiten",
]
