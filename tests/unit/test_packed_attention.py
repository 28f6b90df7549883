"""rlhf.nn.packed_attention on its own: the blocks of a packed row against attention written out.

Long causal blocks run in chunks of queries on CPUs (``_causal_attention``); these blocks are
longer than a chunk, so the chunks' edges are crossed, with grouped-query attention.
"""

from __future__ import annotations

import pytest
import torch

from rlhf.nn.packed_attention import CAUSAL_CHUNK, AttentionBlock, PackedLayout, packed_attention

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8


def blocks_of_a_row() -> tuple[int, tuple[AttentionBlock, ...]]:
    """A row of N tokens: a causal sequence of 2½ chunks; a pair whose rejected reply (a
    chunk and a half) attends to a shared prefix and to itself; a bidirectional sequence; one
    token on its own."""
    long = 2 * CAUSAL_CHUNK + CAUSAL_CHUNK // 2
    tail = CAUSAL_CHUNK + CAUSAL_CHUNK // 2
    blocks, start = [], 0
    sequence = range(start, start + long)
    blocks.append(AttentionBlock((sequence,), sequence, causal=True))
    start = sequence.stop
    prefix, chosen = range(start, start + 40), range(start + 40, start + 40 + tail)
    blocks.append(
        AttentionBlock(
            (range(prefix.start, chosen.stop),), range(prefix.start, chosen.stop), causal=True
        )
    )
    rejected = range(chosen.stop, chosen.stop + tail)
    blocks.append(AttentionBlock((prefix, rejected), rejected, causal=True))
    encoder = range(rejected.stop, rejected.stop + 30)
    blocks.append(AttentionBlock((encoder,), encoder, causal=False))
    single = range(encoder.stop, encoder.stop + 1)
    blocks.append(AttentionBlock((single,), single, causal=True))
    return single.stop, tuple(blocks)


def written_out(query, key, value, blocks, num_tokens) -> torch.Tensor:
    """softmax(q kᵀ / √d + mask) v over the whole row, the mask built key by key from the
    blocks: (1, N, heads, head_dim)."""
    allowed = torch.zeros(num_tokens, num_tokens, dtype=torch.bool)
    for block in blocks:
        keys = [i for part in block.keys for i in part]
        hidden_before = len(keys) - len(block.queries)  # the queries are the last keys
        for number, position in enumerate(block.queries):
            visible = keys[: hidden_before + number + 1] if block.causal else keys
            allowed[position, visible] = True
    repeat = HEADS // KV_HEADS
    key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
    scores = query @ key.transpose(-1, -2) / HEAD_DIM**0.5
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (weights @ value).transpose(1, 2)


def one_block(queries: int, prefix: int) -> tuple[int, tuple[AttentionBlock, ...]]:
    """A causal block of ``queries`` tokens that also see ``prefix`` keys before them (those
    computed by a block of their own, as a pair's shared context is)."""
    tail = range(prefix, prefix + queries)
    if not prefix:
        return queries, (AttentionBlock((tail,), tail, causal=True),)
    context = range(prefix)
    blocks = (
        AttentionBlock((context,), context, causal=True),
        AttentionBlock((context, tail), tail, causal=True),
    )
    return prefix + queries, blocks


def check_against_written_out(num_tokens, blocks, padded: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    states = [
        torch.randn(1, heads, num_tokens, HEAD_DIM, generator=generator, dtype=torch.float64)
        for heads in (HEADS, KV_HEADS, KV_HEADS)
    ]
    layout = PackedLayout(num_tokens, blocks, ()).for_model(None, padded=padded)
    outputs, gradients = [], []
    for attend in (
        lambda q, k, v: packed_attention(torch.nn.Module(), q, k, v, None, packed_layout=layout)[0],
        lambda q, k, v: written_out(q, k, v, blocks, num_tokens),
    ):
        leaves = [state.clone().requires_grad_() for state in states]
        output = attend(*leaves)
        (output * torch.linspace(-1, 1, output.numel()).view_as(output)).sum().backward()
        outputs.append(output.detach())
        gradients.append([leaf.grad for leaf in leaves])
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-10, rtol=1e-10)
    for got, want in zip(*gradients, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("padded", [False, True], ids=["cpu-loop", "padded-rows"])
def test_packed_attention_and_its_gradients_equal_attention_written_out(padded):
    check_against_written_out(*blocks_of_a_row(), padded)


@pytest.mark.parametrize("prefix", [0, 40])
@pytest.mark.parametrize("queries", [2, CAUSAL_CHUNK - 1, CAUSAL_CHUNK, CAUSAL_CHUNK + 1, 257])
def test_a_causal_block_cut_at_every_kind_of_chunk_edge(queries, prefix):
    """Chunks that end exactly at the block's end, one query past it, a block of two."""
    check_against_written_out(*one_block(queries, prefix), padded=False)
