"""A rollout's (prompt, response) sequences on one packed row: no padding, each prompt once
for all its responses in the batch, no sequence attending to another (the blocks of
:mod:`rlhf.nn.packed_attention`, as reward scoring shares a pair's context).

A rollout keeps its sequences padded, prompts on the left and responses on the right (B, L + T).
The forward passes of an update and of the frozen log-probabilities and values run instead on
the real tokens only. The rows that answer the same prompt (a GRPO group, or PPO's responses to
one prompt in a minibatch) share one copy of it: the prompt attends causally to itself, each
response to the prompt and causally to itself, with positions continuing the prompt's::

    tokens     [ x0 … xp-1 | y0 … yt-1 | y'0 … y't'-1 | x''0 … | … ]   (N = Σ p + Σ t tokens)
    positions  [ 0  … p-1  | p  … p+t-1 | p  …  p+t'-1 | 0  …   | … ]

which is exactly each sequence's own computation (same tokens, positions and visible keys),
with G − 1 fewer copies of each prompt of G responses. The language-model head (or the value
head) runs only at the K = Σ t positions that predict a response token: the prompt's last token
(for the first one; shared by the group) and every response token but the last. Results come
back in the padded (B, T) layout, 0 on padding, so everything downstream is the same whichever
path computed them; gradients too (a shared prompt's receives the sum of its responses').
:func:`packs_like_padded` checks once per model that it gives the padded path's numbers; a
model that does not (one that builds its own attention mask) keeps the padded path.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf.nn.packed_attention import AttentionBlock, PackedLayout, packed_attention_of
from rlhf.ppo.losses import logprobs_and_entropy


@dataclass
class PackedSequences:
    """B sequences on one row; ``rows``/``columns`` (K,) place each predicted response token
    in the padded (B, T) layout, ``predictors`` (K,) the packed position that predicts it."""

    input_ids: torch.Tensor  # (1, N)
    position_ids: torch.Tensor  # (1, N)
    layout: PackedLayout
    predictors: torch.Tensor  # (K,)
    rows: torch.Tensor  # (K,)
    columns: torch.Tensor  # (K,)
    shape: tuple[int, int]  # (B, T)


def pack_sequences(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> PackedSequences:
    """The padded (B, L) prompts and (B, T) responses as one packed row, each distinct prompt
    once (module docstring)."""
    device = prompt_ids.device
    prompt_lengths = prompt_mask.sum(dim=1).tolist()
    response_lengths = response_mask.sum(dim=1).tolist()
    width = prompt_ids.shape[1]
    groups: dict[tuple[int, ...], list[int]] = {}  # prompt tokens → its rows, in row order
    for b, p in enumerate(prompt_lengths):
        groups.setdefault(tuple(prompt_ids[b, width - p :].tolist()), []).append(b)
    token_ids: list[int] = []
    positions: list[int] = []
    blocks, predictors, rows, columns = [], [], [], []
    for prompt, members in groups.items():
        p, start = len(prompt), len(token_ids)
        prompt_keys = range(start, start + p)
        token_ids += prompt
        positions += range(p)
        blocks.append(AttentionBlock((prompt_keys,), prompt_keys, causal=True))
        for b in members:
            t, first = response_lengths[b], len(token_ids)
            own = range(first, first + t)
            token_ids += response_ids[b, :t].tolist()
            positions += range(p, p + t)
            blocks.append(AttentionBlock((prompt_keys, own), own, causal=True))
            predictors += [start + p - 1, *range(first, first + t - 1)]
            rows += [b] * t
            columns += range(t)

    def index(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return PackedSequences(
        input_ids=index(token_ids)[None],
        position_ids=index(positions)[None],
        layout=PackedLayout(len(token_ids), tuple(blocks), ()),
        predictors=index(predictors),
        rows=index(rows),
        columns=index(columns),
        shape=tuple(response_ids.shape),
    )


def unpack(values: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
    """(K, …) values of the predicted tokens → (B, T, …), zeros on padding."""
    out = values.new_zeros((*packed.shape, *values.shape[1:]))
    out[packed.rows, packed.columns] = values
    return out


def packed_response_logits(model, *inputs: torch.Tensor) -> torch.Tensor:
    """(B, T, V) float32: :func:`rlhf.ppo.rollout.response_logits`' numbers from one packed
    forward pass (``model`` a causal LM, or one wrapped for DDP: ``.module``)."""
    packed = pack_sequences(*inputs)
    return unpack(_predicting_logits(model, packed), packed)


def packed_response_logprobs(
    model, *inputs: torch.Tensor, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) log π of each response token and, if asked, (B, T) the entropy of the policy
    there (no gradient), 0 on padding: from one packed forward pass, the log-softmax taken on
    the K predicting positions only (no (B, T, V) tensor)."""
    packed = pack_sequences(*inputs)
    tokens = inputs[2][packed.rows, packed.columns]  # (K,) the response tokens predicted
    taken, entropy = logprobs_and_entropy(_predicting_logits(model, packed), tokens, with_entropy)
    return unpack(taken, packed), None if entropy is None else unpack(entropy, packed)


def _predicting_logits(model, packed: PackedSequences) -> torch.Tensor:
    """(K, V) float32 logits at the K positions that predict a response token."""
    inner = getattr(model, "module", model)
    with packed_attention_of(inner):
        logits = model(
            input_ids=packed.input_ids,
            position_ids=packed.position_ids,
            packed_layout=packed.layout,
            logits_to_keep=packed.predictors,  # the head at the K predicting positions only
            use_cache=False,
        ).logits[0]  # (K, V)
    return logits.float()


def packed_response_values(value_model, *inputs: torch.Tensor) -> torch.Tensor:
    """(B, T) float32: :func:`rlhf.ppo.value.response_values`' numbers from one packed forward
    pass (a :class:`rlhf.ppo.value.ValueModel`, or one wrapped for DDP)."""
    packed = pack_sequences(*inputs)
    values = value_model(
        packed.input_ids, None, packed.position_ids, packed_layout=packed.layout
    )  # (1, N)
    return unpack(values[0, packed.predictors], packed)


_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packs_like_padded(
    model, packed: Callable[..., torch.Tensor], padded: Callable[..., torch.Tensor]
) -> bool:
    """Whether ``packed(model, …)`` gives ``padded(model, …)``'s numbers (float32 to 1e-4,
    lower precisions to 2e-2) on three random sequences of unequal prompt and response lengths,
    two of them answering one prompt; checked once per model, without gradients, in eval mode."""
    inner = getattr(model, "module", model)
    if inner in _CHECKED:
        return _CHECKED[inner]
    parameter = next(inner.parameters())
    config = getattr(inner, "config", None) or inner.backbone.config
    vocabulary = config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocabulary, (3, 9), generator=generator).to(parameter.device)
    ids[1, :3] = ids[0, :3]  # rows 0 and 1 answer one prompt: it is packed once
    prompt_mask = torch.tensor([[1, 1, 1], [1, 1, 1], [0, 1, 1]], device=parameter.device)
    response_mask = torch.tensor(
        [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], device=parameter.device
    )
    inputs = (ids[:, :3], prompt_mask, ids[:, 3:], response_mask)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            mine, theirs = packed(inner, *inputs), padded(inner, *inputs)
        tolerance = 1e-4 if parameter.dtype == torch.float32 else 2e-2
        same = torch.allclose(mine, theirs, atol=tolerance, rtol=tolerance)
    except Exception:  # a model that cannot take a packed row at all
        same = False
    finally:
        inner.train(was_training)
    _CHECKED[inner] = same
    return same


__all__ = [
    "PackedSequences",
    "pack_sequences",
    "packed_response_logits",
    "packed_response_logprobs",
    "packed_response_values",
    "packs_like_padded",
    "unpack",
]
