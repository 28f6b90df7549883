"""Attention for one decoding step on a CPU, each prompt's keys read once for its K samples.

When K completions of one prompt are sampled together (best-of-K, GRPO's groups), their rows
share the prompt: its keys and values are computed once by prefill (:class:`SharedPrefix`) and
each row's cache holds only its own new tokens. A row's single query attends to both parts,

    prefix  q · K_promptᵀ · scaling + bias  (B/K, H_kv, K·G, P)   the group's K·G query heads
                                                                  against the prompt's keys
    own     q · K_ownᵀ · scaling            (B, H_kv, G, S)       against its own S new keys

each part's weights exp(score − its maximum) summed against its values, and the two parts
rescaled to their common maximum and divided by their total weight: exactly a softmax over the
keys of both (the "cascade" form of FlashInfer and Hydragen). The prompt's keys are read once
per group, not once per row, and no cache is repeated K times; the bias is 0 on the prompt's
tokens and -inf on its left padding. Grouped-query attention copies nothing: the G query heads
that share a key head are that head's G rows.

PyTorch's CPU ``scaled_dot_product_attention`` would run a one-query step through its flash
kernel, tiled for long queries: with a small head about twice the two matrix products here,
and most of a step of a small model.

The implementation is registered with ``transformers`` as ``"pairwise_decode"``; within
:func:`decode_attention_of` a model runs its attention through it, and the caller passes the
:class:`SharedPrefix` to the model's forward as ``shared_prefix=`` (the model hands its extra
keywords to the attention function, as it does ``packed_layout``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from rlhf.nn.attention_interface import attention_of

ATTENTION_NAME = "pairwise_decode"
# Attention variants some models ask for through the interface's keywords (a sliding window,
# logit soft-capping, attention sinks): not this plain attention (:func:`supported` keeps such
# models out; the function refuses them if one comes).
OTHER_ATTENTION = ("sliding_window", "softcap", "s_aux")


@dataclass(frozen=True)
class SharedPrefix:
    """The prompts' keys and values of every layer, one row per prompt, and their padding."""

    keys: tuple[torch.Tensor, ...]  # per layer (B/K, H_kv, P, D)
    values: tuple[torch.Tensor, ...]  # per layer (B/K, H_kv, P, D)
    bias: torch.Tensor  # (B/K, 1, 1, P) float32: 0 on prompt tokens, -inf on left padding
    group_size: int  # K rows per prompt

    @classmethod
    def of(cls, cache, mask: torch.Tensor, group_size: int) -> SharedPrefix:
        """From a prefill's cache (its ``layers``' ``keys`` and ``values``) and the (B/K, P)
        mask of real prompt tokens."""
        keys = tuple(layer.keys for layer in cache.layers)
        values = tuple(layer.values for layer in cache.layers)
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        bias = bias.masked_fill_(mask == 0, float("-inf"))[:, None, None, :]
        return cls(keys, values, bias, group_size)


def decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (B, H, 1, D)
    key: torch.Tensor,  # (B, H_kv, S, D) the rows' own new tokens
    value: torch.Tensor,  # (B, H_kv, S, D)
    attention_mask: None,
    scaling: float | None = None,
    dropout: float = 0.0,
    shared_prefix: SharedPrefix | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The ``transformers`` attention interface for one query per row: ``(B, 1, H, D)``."""
    batch, heads, queries, dim = query.shape
    if queries != 1 or shared_prefix is None or dropout:
        raise ValueError(f"{ATTENTION_NAME!r} attends one query per row to a shared_prefix")
    if any(kwargs.get(name) is not None for name in OTHER_ATTENTION):
        raise ValueError(f"{ATTENTION_NAME!r} is plain attention, not {kwargs}")
    scale = dim**-0.5 if scaling is None else scaling
    layer = module.layer_idx
    prefix = _attend(
        _by_group(query, shared_prefix.group_size, key.shape[1]),  # (B/K, H_kv, K·G, D)
        shared_prefix.keys[layer],
        shared_prefix.values[layer],
        scale,
        shared_prefix.bias,
    )
    prefix = tuple(_by_row(part, shared_prefix.group_size) for part in prefix)
    own = _attend(query.view(batch, key.shape[1], -1, dim), key, value, scale)  # (B, H_kv, G, …)
    output = _merge(prefix, own).to(query.dtype)  # (B, H_kv, G, D)
    return output.reshape(batch, 1, heads, dim), None


def _attend(query, key, value, scale: float, bias=None) -> tuple[torch.Tensor, ...]:
    """Attention of (N, H_kv, Q, D) queries to (N, H_kv, L, D) keys, in float32 and not yet
    normalised: the (N, H_kv, Q, D) sum of values weighted by exp(score − m), that weight's
    (N, H_kv, Q) total and the scores' (N, H_kv, Q) maximum m."""
    scores = torch.matmul(query, key.transpose(-1, -2)).float().mul_(scale)  # (N, H_kv, Q, L)
    if bias is not None:
        scores += bias
    peak = scores.amax(dim=-1)  # (N, H_kv, Q)
    weights = scores.sub_(peak[..., None]).exp_()
    return torch.matmul(weights.to(value.dtype), value).float(), weights.sum(dim=-1), peak


def _merge(first, second) -> torch.Tensor:
    """Two unnormalised attentions over disjoint keys (:func:`_attend`) as one softmax over all
    of them: each part rescaled to the common maximum, then divided by the total weight."""
    (out_a, total_a, peak_a), (out_b, total_b, peak_b) = first, second
    peak = torch.maximum(peak_a, peak_b)
    scale_a, scale_b = torch.exp(peak_a - peak), torch.exp(peak_b - peak)  # (…, Q) each
    total = total_a * scale_a + total_b * scale_b
    return (out_a * (scale_a / total)[..., None]).add_(out_b * (scale_b / total)[..., None])


def _by_group(query: torch.Tensor, group_size: int, kv_heads: int) -> torch.Tensor:
    """(B, H, 1, D) queries -> (B/K, H_kv, K·G, D): a prompt's K rows' heads of one key head."""
    batch, heads, _, dim = query.shape
    grouped = query.view(batch // group_size, group_size, kv_heads, heads // kv_heads, dim)
    return grouped.transpose(1, 2).reshape(batch // group_size, kv_heads, -1, dim)


def _by_row(tensor: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B/K, H_kv, K·G, …) -> (B, H_kv, G, …), the inverse of :func:`_by_group`'s layout."""
    prompts, kv_heads, rows = tensor.shape[:3]
    split = tensor.view(prompts, kv_heads, group_size, rows // group_size, *tensor.shape[3:])
    return split.transpose(1, 2).reshape(prompts * group_size, kv_heads, *split.shape[3:])


def supported(model) -> bool:
    """Whether ``model`` can decode this way: its attention goes through the ``transformers``
    interface (sdpa or eager), with no variant of :data:`OTHER_ATTENTION` configured, on a CPU.
    """
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if any(getattr(config, name, None) for name in ("sliding_window", "attn_logit_softcapping")):
        return False
    return next(model.parameters()).device.type == "cpu"


def decode_attention_of(model) -> AbstractContextManager[None]:
    """Within the block, ``model`` runs its attention through :func:`decode_attention`."""
    return attention_of(model, ATTENTION_NAME, decode_attention)


__all__ = ["ATTENTION_NAME", "SharedPrefix", "decode_attention", "decode_attention_of", "supported"]
