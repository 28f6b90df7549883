"""rlhf.reward.scoring and rlhf.nn.packed_attention: a batch in one packed row, each context once.

The central check: packed, prefix-shared rewards equal the rewards of scoring the chosen and the
rejected sequence separately, to 1e-4 (in float32 they agree to ~1e-7), on a grouped-query-
attention Llama, a BERT encoder and the real stories260K, with multi-turn contexts, equal
replies, one reply a prefix of the other, and pairs cut to ``max_length``; gradients too; with
both ways of running the attention blocks (the CPU loop and the GPU's padded rows).
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from rlhf.data.pairs import PreferencePair
from rlhf.nn.packed_attention import PackedLayout, lower_right_causal_mask
from rlhf.nn.tiny import build_tiny_llama
from rlhf.reward import model as rm
from rlhf.reward import packed as packed_rows
from rlhf.reward.scoring import (
    EncodedPair,
    PairRewardModel,
    collate,
    encode_pairs,
    length_grouped_order,
    packs_exactly,
    score_pairs,
    truncate_pair,
    uses_prefix_sharing,
)
from tests.conftest import shared_path
from tests.models import build_tiny_bert

TOLERANCE = 1e-4


def pair(context, chosen, rejected, **fields) -> PreferencePair:
    if isinstance(context, str):
        context = [{"role": "user", "content": context}]
    return PreferencePair(context=context, chosen=chosen, rejected=rejected, **fields)


PAIRS = [
    pair("What is the capital of France?", "Paris.", "The capital of France is Paris."),
    pair(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Tell me a story."},
            {"role": "assistant", "content": "Once upon a time, there was a little girl."},
            {"role": "user", "content": "And then?"},
        ],
        "She loved to play outside in the park with her friends.",
        "The end.",
    ),
    pair("Hi", "Hello!", "Hello!"),  # equal replies
    pair("Count.", "1 2 3", "1 2 3 4 5 6"),  # one reply a prefix of the other
    pair("Please explain why the sky is blue, in detail. " * 6, "Light is scattered.", "No."),
    pair("How do I boil an egg?", "Put the egg in boiling water.", "I cannot help with that."),
]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return rm.load_reward_backbone(build_tiny_llama(tmp_path_factory.mktemp("llama") / "m"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return rm.load_reward_backbone(build_tiny_bert(tmp_path_factory.mktemp("bert") / "m"))


def separate_rewards(model, tokenizer, pairs, max_length=512):
    """Each reply's sequence (as encode_pairs cut it) through the plain model, one at a time."""
    chosen, rejected = [], []
    with torch.no_grad():
        for encoded in encode_pairs(tokenizer, pairs, max_length=max_length):
            for ids, out in ((encoded.chosen_ids, chosen), (encoded.rejected_ids, rejected)):
                out.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return torch.tensor(chosen), torch.tensor(rejected)


# --- equality with separate scoring -------------------------------------------------------------


def test_a_decoder_shares_the_prefix_and_an_encoder_does_not(llama, bert):
    assert uses_prefix_sharing(llama[0])
    assert not uses_prefix_sharing(bert[0])


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_prefix_shared_rewards_equal_separate_scoring(llama, batch_size):
    model, tokenizer = llama
    expected_chosen, expected_rejected = separate_rewards(model, tokenizer, PAIRS)
    chosen, rejected = score_pairs(model, tokenizer, PAIRS, batch_size=batch_size)
    torch.testing.assert_close(chosen, expected_chosen, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(rejected, expected_rejected, atol=TOLERANCE, rtol=0)
    assert (chosen - rejected).abs().max() > 1e-3  # the rewards do differ: a real comparison
    assert chosen[2].item() == pytest.approx(rejected[2].item(), abs=TOLERANCE)  # equal replies


def test_prefix_shared_rewards_equal_score_texts_for_pairs_that_fit(llama):
    model, tokenizer = llama
    chosen, rejected = score_pairs(model, tokenizer, PAIRS)
    contexts = [p.context for p in PAIRS]
    texts_chosen = rm.score_texts(model, tokenizer, contexts, [p.chosen for p in PAIRS])
    texts_rejected = rm.score_texts(model, tokenizer, contexts, [p.rejected for p in PAIRS])
    torch.testing.assert_close(chosen, texts_chosen, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(rejected, texts_rejected, atol=TOLERANCE, rtol=0)


def test_truncated_pairs_too(llama):
    model, tokenizer = llama
    expected = separate_rewards(model, tokenizer, PAIRS, max_length=24)
    shared = score_pairs(model, tokenizer, PAIRS, batch_size=3, max_length=24)
    for got, want in zip(shared, expected, strict=True):
        torch.testing.assert_close(got, want, atol=TOLERANCE, rtol=0)


@pytest.fixture(params=["looped", "padded"])
def attention_runs(request, monkeypatch):
    """Both ways of running the attention blocks: the CPU loop and the GPU's padded rows."""
    padded = request.param == "padded"
    for_model = PackedLayout.for_model
    monkeypatch.setattr(
        PackedLayout, "for_model", lambda self, last_layer: for_model(self, last_layer, padded)
    )
    return request.param


@pytest.mark.parametrize("backbone", ["llama", "bert"])
def test_packed_rewards_and_gradients_equal_the_models_own_padded_forward(
    request, backbone, attention_runs
):
    """Training sees the same function: rewards and the gradients of a loss agree."""
    model, tokenizer = request.getfixturevalue(backbone)
    encoded = encode_pairs(tokenizer, PAIRS, max_length=rm.usable_length(model, 512))
    results = []
    for packed in (True, False):
        wrapper = PairRewardModel(model, packed=packed)
        model.zero_grad()
        chosen, rejected = wrapper(**wrapper.collate(encoded, pad_token_id=tokenizer.pad_token_id))
        (chosen - 2 * rejected).sum().backward()
        gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((chosen.detach(), rejected.detach(), gradient))
    model.zero_grad()
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (results[0][0] - results[0][1]).abs().max() > 1e-3  # rewards that differ


def test_packed_rows_hold_no_padding_and_each_context_once(llama, bert):
    encoded = encode_pairs(llama[1], PAIRS)
    shared = PairRewardModel(llama[0]).collate(encoded, pad_token_id=0)
    assert shared["input_ids"].shape == (1, sum(p.packed_length for p in encoded))
    encoded = encode_pairs(bert[1], PAIRS, max_length=rm.usable_length(bert[0], 512))
    separate = PairRewardModel(bert[0]).collate(encoded, pad_token_id=0)
    tokens = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in encoded)
    assert separate["input_ids"].shape == (1, tokens)


def test_a_model_whose_packed_forward_differs_falls_back_to_padded_rows(llama, monkeypatch):
    """If attention ignored the packed layout, sequences would see each other: the check at
    construction notices, and the model scores padded rows, still exactly."""
    model, tokenizer = llama
    assert packs_exactly(model)
    monkeypatch.setattr(packed_rows, "packed_attention_of", lambda model: nullcontext())
    assert not packs_exactly(model)
    wrapper = PairRewardModel(model)
    assert not wrapper.packed
    expected = separate_rewards(model, tokenizer, PAIRS)
    for got, want in zip(score_pairs(wrapper, tokenizer, PAIRS), expected, strict=True):
        torch.testing.assert_close(got, want, atol=TOLERANCE, rtol=0)


def test_on_the_real_stories260k_and_harmless_base():
    from rlhf.data.pairs import load_pairs

    model, tokenizer = rm.load_reward_backbone(shared_path("models/stories260K-hf"))
    data = shared_path("data/hh-rlhf/harmless-base/test.jsonl.gz")
    pairs = load_pairs(data, kind="safety")[:24]
    expected = separate_rewards(model, tokenizer, pairs, max_length=192)
    shared = score_pairs(model, tokenizer, pairs, batch_size=8, max_length=192)
    for got, want in zip(shared, expected, strict=True):
        torch.testing.assert_close(got, want, atol=TOLERANCE, rtol=0)
    encoded = encode_pairs(tokenizer, pairs, max_length=192)
    packed = sum(p.packed_length for p in encoded)
    separate = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in encoded)
    assert packed < 0.8 * separate  # the shared context really is computed once


def test_an_encoder_scores_both_replies_as_separate_sequences(bert):
    model, tokenizer = bert
    chosen, rejected = score_pairs(model, tokenizer, PAIRS, batch_size=4)
    contexts = [p.context for p in PAIRS]
    texts_chosen = rm.score_texts(model, tokenizer, contexts, [p.chosen for p in PAIRS])
    torch.testing.assert_close(chosen, texts_chosen, atol=TOLERANCE, rtol=0)
    expected = separate_rewards(model, tokenizer, PAIRS, max_length=rm.usable_length(model, 512))
    torch.testing.assert_close(rejected, expected[1], atol=TOLERANCE, rtol=0)


# --- inputs -------------------------------------------------------------------------------------


def visibility(layout: PackedLayout, reward_layer: bool = False) -> list[list[int]]:
    """The (N, N) matrix of which query sees which key, from the layout's blocks."""
    seen = [[0] * layout.num_tokens for _ in range(layout.num_tokens)]
    for block in layout.reward_blocks if reward_layer else layout.blocks:
        keys = [k for part in block.keys for k in part]
        allowed = lower_right_causal_mask(len(block.queries), len(keys), "cpu")
        if not block.causal:
            allowed = torch.ones_like(allowed)
        for row, query in enumerate(block.queries):
            for column, key in enumerate(keys):
                seen[query][key] = int(allowed[row, column])
    return seen


def test_the_packed_row_and_its_attention_written_out():
    # Pair 1: prefix [10 11], chosen tail [20 21], rejected tail [30].
    # Pair 2: prefix [12], chosen tail [22], rejected tail [31 32].
    first = EncodedPair([10, 11, 20, 21], [10, 11, 30], shared_length=2)
    second = EncodedPair([12, 22], [12, 31, 32], shared_length=1)
    batch = collate([first, second], pad_token_id=0, prefix_sharing=True)
    assert batch["input_ids"][0].tolist() == [10, 11, 20, 21, 30, 12, 22, 31, 32]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 2, 0, 1, 1, 2]
    assert batch["chosen_index"].tolist() == [3, 6]
    assert batch["rejected_index"].tolist() == [4, 8]
    assert visibility(batch["packed_layout"]) == [
        [1, 0, 0, 0, 0, 0, 0, 0, 0],  # prefix: causal
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0],  # chosen: the prefix and itself
        [1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0, 0],  # rejected: the prefix and itself, never the chosen tail
        [0, 0, 0, 0, 0, 1, 0, 0, 0],  # the second pair sees nothing of the first
        [0, 0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 1, 0],
        [0, 0, 0, 0, 0, 1, 0, 1, 1],
    ]
    # The last layer computes only the reward tokens' queries, with the same keys.
    reward_rows = visibility(batch["packed_layout"], reward_layer=True)
    full_rows = visibility(batch["packed_layout"])
    for token in range(9):
        expected = full_rows[token] if token in (3, 4, 6, 8) else [0] * 9
        assert reward_rows[token] == expected


def test_an_encoders_packed_row_reads_each_sequences_first_token():
    pair_one = EncodedPair([101, 7, 8, 102], [101, 7, 9, 9, 102], shared_length=2)
    batch = collate([pair_one], pad_token_id=0, prefix_sharing=False, reward_token="first")
    assert batch["input_ids"][0].tolist() == [101, 7, 8, 102, 101, 7, 9, 9, 102]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4]
    assert batch["chosen_index"].tolist() == [0]
    assert batch["rejected_index"].tolist() == [4]
    seen = visibility(batch["packed_layout"])
    assert seen[2] == [1, 1, 1, 1, 0, 0, 0, 0, 0]  # both ways within its sequence
    assert seen[5] == [0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_truncation_keeps_the_two_replies_on_the_same_context():
    lead = 1  # BOS
    chosen = [1, 5, 6, 7, 8, 9, 40, 41]
    rejected = [1, 5, 6, 7, 8, 9, 50]
    cut_chosen, cut_rejected = truncate_pair(chosen, rejected, max_length=6, lead=lead)
    assert cut_chosen == [1, 7, 8, 9, 40, 41]  # two context tokens gone, BOS kept
    assert cut_rejected == [1, 7, 8, 9, 50]  # the same two: the contexts stay equal
    # A reply longer than max_length alone: the context goes, then the reply's start.
    long_chosen, short_rejected = truncate_pair(
        [1, 5, 6] + list(range(60, 70)), [1, 5, 6, 80], 6, lead
    )
    assert long_chosen == [1, 65, 66, 67, 68, 69]
    assert short_rejected == [1, 80]
    assert truncate_pair(chosen, rejected, max_length=8, lead=lead) == (chosen, rejected)


def test_encoded_pairs_keep_one_token_of_each_reply(llama):
    _, tokenizer = llama
    equal, prefix = encode_pairs(tokenizer, [PAIRS[2], PAIRS[3]])
    assert equal.chosen_ids == equal.rejected_ids
    assert equal.shared_length == len(equal.chosen_ids) - 1
    assert prefix.shared_length < len(prefix.chosen_ids)


def test_length_grouped_order_is_a_deterministic_permutation_with_little_padding():
    lengths = [
        int(x) for x in torch.randint(5, 500, (1000,), generator=torch.Generator().manual_seed(0))
    ]
    order = length_grouped_order(lengths, 8, seed=3)
    assert sorted(order) == list(range(1000))
    assert order == length_grouped_order(lengths, 8, seed=3)
    assert order != length_grouped_order(lengths, 8, seed=4)

    def padding(indices):
        batches = [indices[i : i + 8] for i in range(0, len(indices), 8)]
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )

    shuffled = list(range(1000))
    import random

    random.Random(0).shuffle(shuffled)
    assert padding(order) < 0.1 * padding(shuffled)
