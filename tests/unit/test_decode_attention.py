"""The one-query decoding attention with each prompt's keys shared by its K rows
(rlhf.nn.decode_attention) against PyTorch's SDPA over each row's whole cache."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from rlhf.nn import decode_attention, sampling
from rlhf.nn.decode_attention import SharedPrefix
from rlhf.nn.sampling import SamplingParams, left_pad, sample
from tests.unit.test_sampling import PROMPTS, encode, load


class Layer(torch.nn.Module):
    layer_idx = 0


def test_prefix_and_own_keys_merge_into_one_softmax():
    """3 prompts × K=2 rows, 4 query heads on 2 key heads, prompts left-padded to 5 tokens,
    3 own tokens per row: the same output as SDPA over [prompt keys, own keys] with the padding
    masked and the key heads repeated."""
    generator = torch.Generator().manual_seed(0)
    prompts, group, heads, kv_heads, dim = 3, 2, 4, 2, 8
    prompt_keys = torch.randn(prompts, kv_heads, 5, dim, generator=generator)
    prompt_values = torch.randn(prompts, kv_heads, 5, dim, generator=generator)
    own_keys = torch.randn(prompts * group, kv_heads, 3, dim, generator=generator)
    own_values = torch.randn(prompts * group, kv_heads, 3, dim, generator=generator)
    query = torch.randn(prompts * group, heads, 1, dim, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    cache = SimpleNamespace(layers=[SimpleNamespace(keys=prompt_keys, values=prompt_values)])
    prefix = SharedPrefix.of(cache, mask, group)

    output, _ = decode_attention.decode_attention(
        Layer(), query, own_keys, own_values, None, scaling=0.3, shared_prefix=prefix
    )  # (B, 1, H, D)

    keys = torch.cat([prompt_keys.repeat_interleave(group, 0), own_keys], dim=2)
    values = torch.cat([prompt_values.repeat_interleave(group, 0), own_values], dim=2)
    visible = torch.cat([mask.repeat_interleave(group, 0), torch.ones(6, 3, dtype=torch.long)], 1)
    expected = F.scaled_dot_product_attention(
        query,
        keys.repeat_interleave(2, 1),
        values.repeat_interleave(2, 1),
        attn_mask=visible.bool()[:, None, None, :],
        scale=0.3,
    )  # fmt: skip  (B, H, 1, D)
    torch.testing.assert_close(output, expected.transpose(1, 2), atol=1e-6, rtol=1e-5)


def test_it_refuses_what_it_does_not_compute():
    query = torch.zeros(2, 2, 2, 4)  # two queries per row
    with pytest.raises(ValueError, match="one query per row"):
        decode_attention.decode_attention(Layer(), query, query, query, None)
    with pytest.raises(ValueError, match="plain attention"):
        prefix = SharedPrefix((query,), (query,), torch.zeros(2, 1, 1, 2), 1)
        decode_attention.decode_attention(
            Layer(), query[:, :, :1], query, query, None, shared_prefix=prefix, sliding_window=4
        )


@pytest.fixture(scope="module")
def tiny(tiny_policy_dir):
    return load(tiny_policy_dir)


@pytest.mark.parametrize("group", [1, 3])
def test_steps_give_the_model_s_own_logits(tiny, group):
    """Prompts of different lengths, K rows each: every decoding step's logits through the
    shared prefix equal those of the model's own attention over the repeated, masked cache."""
    model, tokenizer = tiny
    assert decode_attention.supported(model)
    ids = encode(tokenizer, PROMPTS[:3])
    input_ids, mask = left_pad(ids, 0, "cpu")
    steps = 6
    generator = torch.Generator().manual_seed(1)
    fed = torch.randint(3, len(tokenizer), (steps, len(ids) * group), generator=generator)
    positions = mask.sum(dim=1).repeat_interleave(group)
    logits = {}
    with torch.inference_mode():
        for kind in (sampling.ModelSteps, sampling.SharedPrefixSteps):
            cache, _ = sampling.prefill(model, input_ids, mask, input_ids.shape[1] + steps)
            stepper = kind(model, cache, mask, group, positions, steps)
            with stepper.attention():
                logits[kind] = [stepper.feed(fed[step], step) for step in range(steps)]
    for own, shared in zip(*logits.values(), strict=True):
        torch.testing.assert_close(shared, own, atol=2e-5, rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # restored after the steps


def test_sampling_draws_the_same_tokens_either_way(tiny, monkeypatch):
    model, tokenizer = tiny
    ids = encode(tokenizer, PROMPTS[:4])
    params = [SamplingParams(1.0, 0.9, 16, seed=row) for row in range(len(ids) * 4)]
    shared = sample(model, tokenizer, ids, params, group_size=4, with_logprobs=True)
    monkeypatch.setattr(decode_attention, "supported", lambda model: False)
    own = sample(model, tokenizer, ids, params, group_size=4, with_logprobs=True)
    assert shared == own
    for a, b in zip(shared, own, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
