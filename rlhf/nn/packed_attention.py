"""Attention over packed rows: many sequences in one row, without padding, each seeing its own keys.

A packed batch puts the tokens of all its sequences one after the other in a single row of N
tokens, so the per-token work of a transformer (embeddings, projections, MLPs, norms: most of
its FLOPs) runs on real tokens only. Attention must then keep the sequences apart. Each
:class:`AttentionBlock` says which queries attend to which keys:

    keys      token ranges of the packed row, in order: (prefix, rejected tail) for a rejected
              reply that shares its context with the chosen one, or one range
    queries   a range of packed tokens that are the last ``len(queries)`` keys
    causal    a query sees the keys up to itself (aligned at the end: the keys before the
              queries are all visible); else every key of the block

Two blocks per pair score a decoder's pair with its shared context computed once: the chosen
sequence (prefix and chosen reply) attending causally to itself, and the rejected reply's
tokens attending to the prefix and to themselves. An encoder's sequence is one bidirectional
block. The reward reads one token per sequence (the last of a decoder, ``[CLS]`` of an encoder),
so in the last layer only that query is computed (``reward_blocks``); the other positions of
the last layer's attention output are zero and never read.

The attention function is registered with ``transformers`` as ``"pairwise_packed"``; models that
route attention through ``ALL_ATTENTION_FUNCTIONS`` (Llama, Mistral, Qwen, BERT, … in
transformers 5) call it with the ``packed_layout`` keyword, which their forward passes down.
:func:`packed_attention_of` switches a model to it for the duration of a forward. Two ways to
run the blocks, the same numbers:

- on CPUs, a loop of exact-length ``scaled_dot_product_attention`` calls, one per block (no
  padding anywhere);
- on GPUs, one call over the blocks gathered into padded rows with a boolean mask (a loop would
  be bound by kernel launches).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from rlhf.nn.attention_interface import attention_of

ATTENTION_NAME = "pairwise_packed"
CAUSAL_CHUNK = 128  # queries per SDPA call in a long causal block on CPUs (_causal_attention)


@dataclass(frozen=True)
class AttentionBlock:
    """Queries of the packed row and the keys they attend to (see the module docstring)."""

    keys: tuple[range, ...]
    queries: range
    causal: bool

    @property
    def key_count(self) -> int:
        return sum(len(part) for part in self.keys)


@dataclass(frozen=True)
class PackedLayout:
    """How the N tokens of a packed row attend: ``blocks`` in every layer but the last,
    ``reward_blocks`` (one query each, the token the reward reads) in ``last_layer``.

    ``blocks``' queries cover the N tokens once, in order; ``last_layer`` is set by the model
    wrapper (None: every layer runs ``blocks``).
    """

    num_tokens: int
    blocks: tuple[AttentionBlock, ...]
    reward_blocks: tuple[AttentionBlock, ...]
    last_layer: int | None = None
    padded: bool | None = None  # None: padded rows on GPUs, the exact-length loop on CPUs
    _plans: dict = field(default_factory=dict, compare=False, repr=False)  # built once per batch

    def for_model(self, last_layer: int | None, padded: bool | None = None) -> PackedLayout:
        return replace(self, last_layer=last_layer, padded=padded, _plans={})


# --- the attention function ---------------------------------------------------------------------


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (1, heads, N, head_dim)
    key: torch.Tensor,  # (1, kv_heads, N, head_dim)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    packed_layout: PackedLayout | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The ``transformers`` attention interface over a packed row: ``(1, N, heads, head_dim)``."""
    if packed_layout is None:
        raise ValueError(f"the {ATTENTION_NAME!r} attention needs a packed_layout")
    layout = packed_layout
    last = layout.last_layer is not None and getattr(module, "layer_idx", None) == layout.last_layer
    blocks = layout.reward_blocks if last else layout.blocks
    padded = layout.padded if layout.padded is not None else query.device.type != "cpu"
    if padded:
        output = _attend_padded(query, key, value, blocks, layout, last, scaling, dropout)
    else:
        output = _attend_looped(query, key, value, blocks, layout, last, scaling, dropout)
    # output: (heads, queries of the blocks, head_dim)
    if last:  # only the reward tokens were computed: put them in place, zeros elsewhere
        selected = _reward_positions(layout, query.device)
        full = output.new_zeros(output.shape[0], layout.num_tokens, output.shape[2])
        output = full.index_copy(1, selected, output)
    return output.transpose(0, 1).unsqueeze(0), None


def _attend_looped(query, key, value, blocks, layout, last, scaling, dropout):
    """One exact-length SDPA call per block; the queries' outputs concatenated in block order.

    The states are cut once, with ``split``, at every edge of a block's ranges, and each block
    takes its pieces: slicing them out one by one would cost a zero-filled (N, …) gradient per
    slice in the backward pass.
    """
    plan = layout._plans.get("pieces")
    if plan is None:
        plan = layout._plans["pieces"] = _piece_plan(layout)
    sizes, key_pieces, query_pieces = plan
    key_parts, value_parts = key.split(sizes, dim=2), value.split(sizes, dim=2)
    if last:  # one query per block: gathered at once
        reward_query = query.index_select(2, _reward_positions(layout, query.device))
    else:
        query_parts = query.split(sizes, dim=2)
    gqa = query.shape[1] != key.shape[1]
    outputs = []
    for number, block in enumerate(blocks):
        if last:
            block_query = reward_query[:, :, number : number + 1]
        else:
            block_query = _joined(query_parts, query_pieces[number])
        block_key = _joined(key_parts, key_pieces[last][number])
        block_value = _joined(value_parts, key_pieces[last][number])
        attend = _causal_attention if block.causal else _full_attention
        outputs.append(attend(block_query, block_key, block_value, scaling, dropout, gqa)[0])
    return torch.cat(outputs, dim=1)


def _full_attention(query, key, value, scaling, dropout, gqa):
    """Every query sees every key."""
    return F.scaled_dot_product_attention(
        query, key, value, scale=scaling, dropout_p=dropout, enable_gqa=gqa
    )


def _causal_attention(query, key, value, scaling, dropout, gqa):
    """The queries (the last Q of the K keys) see the keys up to themselves, computed in chunks
    of :data:`CAUSAL_CHUNK` queries, each over the keys it can see.

    The CPU's SDPA kernel masks a causal block but, below 512 keys, still computes the whole
    Q × K square; chunk c of the queries only needs the keys up to its last query, so the
    chunks together compute a little over half of it (measured: 24 % less time for a 512-token
    block, forward and backward).
    """
    queries, keys = query.shape[2], key.shape[2]
    outputs = []
    # The queries split, not sliced one by one: a slice's backward fills a zero gradient of the
    # whole block (the keys, overlapping prefixes, are sliced).
    for number, chunk in enumerate(query.split(CAUSAL_CHUNK, dim=2)):
        size = chunk.shape[2]
        visible = keys - queries + number * CAUSAL_CHUNK + size  # up to the chunk's last query
        square = visible == size  # SDPA's own causal case (the first chunk, Q = K)
        mask = None  # a single query sees every visible key
        if size > 1 and not square:
            mask = lower_right_causal_mask(size, visible, query.device)
        outputs.append(
            F.scaled_dot_product_attention(
                chunk,
                key[:, :, :visible],
                value[:, :, :visible],
                attn_mask=mask,
                is_causal=square and visible > 1,
                scale=scaling,
                dropout_p=dropout,
                enable_gqa=gqa,
            )
        )
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)


def _reward_positions(layout: PackedLayout, device) -> torch.Tensor:
    """(reward blocks,) the packed position of each reward block's one query."""
    positions = layout._plans.get(("reward", device))
    if positions is None:
        starts = [block.queries.start for block in layout.reward_blocks]
        positions = layout._plans[("reward", device)] = torch.tensor(starts, device=device)
    return positions


def _joined(parts: tuple[torch.Tensor, ...], indices: list[int]) -> torch.Tensor:
    return parts[indices[0]] if len(indices) == 1 else torch.cat([parts[i] for i in indices], 2)


def _piece_plan(layout: PackedLayout):
    """The sizes of the pieces the N tokens are cut into (at every edge of every block's
    ranges), and each block's key and query pieces."""
    edges = {0, layout.num_tokens}
    for block in layout.blocks:
        for part in (*block.keys, block.queries):
            edges.update((part.start, part.stop))
    for block in layout.reward_blocks:  # their single queries are gathered, not cut out
        for part in block.keys:
            edges.update((part.start, part.stop))
    edges = sorted(edges)
    first_piece = {start: number for number, start in enumerate(edges[:-1])}

    def pieces(parts: tuple[range, ...]) -> list[int]:
        found = []
        for part in parts:
            if not part:  # a pair whose replies share no context: no prefix keys
                continue
            number = first_piece[part.start]
            while edges[number] < part.stop:
                found.append(number)
                number += 1
        return found

    sizes = [stop - start for start, stop in zip(edges, edges[1:], strict=False)]
    key_pieces = {  # by "is the last layer"
        False: [pieces(block.keys) for block in layout.blocks],
        True: [pieces(block.keys) for block in layout.reward_blocks],
    }
    query_pieces = [pieces((block.queries,)) for block in layout.blocks]
    return sizes, key_pieces, query_pieces


def lower_right_causal_mask(queries: int, keys: int, device) -> torch.Tensor:
    """(queries, keys) bool: query i sees keys up to ``keys - queries + i`` (the queries are the
    last keys)."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)


def _attend_padded(query, key, value, blocks, layout, last, scaling, dropout):
    """All blocks in one SDPA call: gathered into (blocks, max queries) x (blocks, max keys)
    rows, padding masked out; the real queries' outputs gathered back in block order."""
    plan = layout._plans.get(("padded", last, query.device))
    if plan is None:
        plan = layout._plans[("padded", last, query.device)] = _gather_plan(blocks, query.device)
    query_index, key_index, mask, output_index = plan

    def rows_of(states, index):  # (1, heads, N, d) -> (rows, heads, width, d)
        picked = states[0].index_select(1, index.flatten())
        return picked.unflatten(1, index.shape).transpose(0, 1)

    block_query = rows_of(query, query_index)
    block_key, block_value = rows_of(key, key_index), rows_of(value, key_index)
    if block_key.shape[1] != block_query.shape[1]:  # grouped-query attention: repeat the heads
        repeats = block_query.shape[1] // block_key.shape[1]
        block_key = block_key.repeat_interleave(repeats, dim=1)
        block_value = block_value.repeat_interleave(repeats, dim=1)
    output = F.scaled_dot_product_attention(
        block_query, block_key, block_value, attn_mask=mask, scale=scaling, dropout_p=dropout
    )  # (rows, heads, width, d)
    output = output.transpose(0, 1).flatten(1, 2)  # (heads, rows * width, d)
    return output.index_select(1, output_index)


def _gather_plan(blocks: Sequence[AttentionBlock], device) -> tuple[torch.Tensor, ...]:
    query_width = max(len(block.queries) for block in blocks)
    key_width = max(block.key_count for block in blocks)
    query_index = torch.zeros(len(blocks), query_width, dtype=torch.long)
    key_index = torch.zeros(len(blocks), key_width, dtype=torch.long)
    # Padding queries see key 0 only: a row with no visible key would be NaN.
    mask = torch.zeros(len(blocks), 1, query_width, key_width, dtype=torch.bool)
    mask[:, :, :, 0] = True
    output_index = []
    for row, block in enumerate(blocks):
        queries, keys = len(block.queries), block.key_count
        query_index[row, :queries] = torch.tensor(block.queries)
        key_index[row, :keys] = torch.tensor([i for part in block.keys for i in part])
        if block.causal:
            mask[row, 0, :queries, :keys] = lower_right_causal_mask(queries, keys, "cpu")
        else:
            mask[row, 0, :queries, :keys] = True
        output_index += range(row * query_width, row * query_width + queries)
    tensors = (query_index, key_index, mask, torch.tensor(output_index))
    return tuple(tensor.to(device) for tensor in tensors)


def packed_attention_of(model) -> AbstractContextManager[None]:
    """Within the block, ``model`` runs its attention through :func:`packed_attention` (no mask
    is built: the packed layout is the mask)."""
    return attention_of(model, ATTENTION_NAME, packed_attention)


__all__ = [
    "ATTENTION_NAME",
    "AttentionBlock",
    "PackedLayout",
    "lower_right_causal_mask",
    "packed_attention",
    "packed_attention_of",
]
