"""The batched sampler (rlhf.nn.sampling) on tiny random Llamas and the real stories260K model."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.nn.sampling import SamplingParams, left_pad, prefill, sample, sample_top_p
from tests.conftest import GOLDEN_STORY as GOLDEN
from tests.conftest import shared_path

PROMPTS = [
    "Once upon a time",
    "The cat",
    "A long prompt about many things that happened yesterday in the big park near the river",
    "Hi",
    "Tom and Lily went to the store to buy",
    "x",
    "She said hello to the dog and",
    "One day",
]


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def tiny(tiny_policy_dir):
    return load(tiny_policy_dir)


@pytest.fixture(scope="module")
def stories():
    return load(shared_path("models/stories260K-hf"))


@pytest.fixture(scope="module")
def gpt2(tiny):
    """Another architecture: learned absolute positions, no grouped-query attention."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny[1]
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config).eval()
    return model, tokenizer


@pytest.fixture(params=["tiny", "stories", "gpt2"])
def any_model(request):
    return request.getfixturevalue(request.param)


def encode(tokenizer, texts):
    return [tokenizer(text)["input_ids"] for text in texts]


def tokens(completions):
    return [c.token_ids for c in completions]


def hf_greedy(model, ids, max_new_tokens):
    input_ids = torch.tensor([ids])
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
    )
    return output[0, len(ids) :].tolist()


# --- SamplingParams ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": -0.1},
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"top_p": 0},
        {"top_p": -0.5},
        {"top_p": 1.01},
        {"max_new_tokens": 0},
        {"max_new_tokens": 2.5},
        {"seed": -1},
        {"seed": 2**63},
    ],
)
def test_invalid_sampling_params_are_refused(fields):
    with pytest.raises(ValueError):
        SamplingParams(**fields)


def test_sampling_params_defaults_and_edges():
    assert SamplingParams() == SamplingParams(0.7, 0.9, 256, None)
    SamplingParams(temperature=0, top_p=1.0, max_new_tokens=1, seed=0)  # all accepted


def test_sample_checks_its_arguments(tiny):
    model, tokenizer = tiny
    assert sample(model, tokenizer, [], []) == []
    with pytest.raises(ValueError, match="SamplingParams"):
        sample(model, tokenizer, [[1, 5]], [])
    with pytest.raises(ValueError, match="at least one token"):
        sample(model, tokenizer, [[]], [SamplingParams()])


# --- top-p and temperature -----------------------------------------------------------------------


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).repeat(5, 1)  # ranks: 1, 2, 0
    top_p = torch.tensor([0.6, 0.6, 1.0, 0.1, 1.0])
    uniform = torch.tensor([0.0, 0.99, 0.99, 0.99, 0.1], dtype=torch.float64)
    # p=0.6 keeps {1: 0.5, 2: 0.3}; u=0.99 lands on token 2, never on the cut token 0;
    # p=1 draws in vocabulary order (cumulative 0.2, 0.7, 1.0): u=0.99 lands on token 2, u=0.1
    # on token 0; p=0.1 keeps token 1 only.
    assert sample_top_p(logits, top_p, uniform).tolist() == [1, 2, 2, 1, 0]


def test_a_nucleus_beyond_the_top_candidates_is_found_by_a_full_sort(monkeypatch):
    """The same tokens whether the nucleus lies among the candidates or needs the full sort."""
    from rlhf.nn import sampling

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=generator)
    top_p = torch.tensor([0.3, 0.5, 0.7, 0.9, 0.95, 0.99])
    uniform = torch.rand(6, generator=generator, dtype=torch.float64)
    everything = sample_top_p(logits, top_p, uniform)  # 50 tokens: sorted whole
    # Nuclei of 1–4 tokens found among the top 4, of 5–8 among the top 8, the rest sorted.
    monkeypatch.setattr(sampling, "NUCLEUS_CANDIDATES", (4, 8))
    sizes = [(logits.softmax(-1).sort(descending=True).values.cumsum(-1)[i] < p).sum() + 1
             for i, p in enumerate(top_p.tolist())]  # fmt: skip
    assert min(sizes) <= 4 and any(4 < size <= 8 for size in sizes) and max(sizes) > 8
    assert sample_top_p(logits, top_p, uniform).tolist() == everything.tolist()


def test_the_nucleus_bound_holds_every_nucleus(monkeypatch):
    """Past the fixed candidates, the rows whose tokens of probability (1 - p) / 2V or more are
    few enough take that many candidates, and draw the tokens a full sort would give."""
    from rlhf.nn import sampling

    generator = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(8, 1000, generator=generator)  # peaked rows: small bounds
    top_p = torch.tensor([0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99])
    uniform = torch.rand(8, generator=generator, dtype=torch.float64)
    ranked = logits.softmax(-1).sort(descending=True).values
    sizes = (ranked.cumsum(-1) < top_p[:, None]).sum(-1) + 1  # (8,) each nucleus
    bound = sampling.nucleus_bound(logits.softmax(-1), top_p)
    assert int(sizes.max()) <= bound < 500  # every nucleus within; half the vocabulary at most
    monkeypatch.setattr(sampling, "NUCLEUS_CANDIDATES", ())
    by_bound = sample_top_p(logits, top_p, uniform)
    monkeypatch.setattr(sampling, "nucleus_bound", lambda probs, top_p: probs.shape[-1])
    assert by_bound.tolist() == sample_top_p(logits, top_p, uniform).tolist()  # sorted whole


def test_tiny_top_p_and_tiny_temperature_are_greedy(tiny):
    model, tokenizer = tiny
    ids = encode(tokenizer, PROMPTS[:4])
    greedy = sample(model, tokenizer, ids, [SamplingParams(0, max_new_tokens=12)] * 4)
    nucleus = sample(model, tokenizer, ids, [SamplingParams(1.0, 1e-6, 12, seed=1)] * 4)
    cold = sample(model, tokenizer, ids, [SamplingParams(1e-4, 1.0, 12, seed=2)] * 4)
    assert tokens(nucleus) == tokens(greedy) == tokens(cold)


def test_temperature_and_seed_change_samples(tiny):
    model, tokenizer = tiny
    ids = encode(tokenizer, ["Once upon a time"])
    runs = {
        (temperature, seed): tokens(
            sample(model, tokenizer, ids, [SamplingParams(temperature, 1.0, 16, seed)])
        )[0]
        for temperature in (0.7, 1.5)
        for seed in (1, 2)
    }
    assert len({tuple(run) for run in runs.values()}) == 4


# --- determinism and batch independence ----------------------------------------------------------


def test_same_seed_same_tokens(tiny):
    model, tokenizer = tiny
    ids = encode(tokenizer, PROMPTS)
    params = [SamplingParams(1.0, 0.95, 20, seed=7)] * len(ids)
    first = sample(model, tokenizer, ids, params)
    assert tokens(sample(model, tokenizer, ids, params)) == tokens(first)
    assert [c.seed for c in first] == [7] * len(ids)
    # Same seed, different prompts: the rows still differ (the seed is not the whole story).
    assert len({tuple(t) for t in tokens(first)}) > 1


def test_log_probabilities_come_only_when_asked_for_and_leave_the_tokens_alone(tiny):
    model, tokenizer = tiny
    ids = encode(tokenizer, PROMPTS[:2])
    params = [SamplingParams(1.0, 0.95, 12, seed=3)] * len(ids)
    plain = sample(model, tokenizer, ids, params)
    scored = sample(model, tokenizer, ids, params, with_logprobs=True)
    assert tokens(scored) == tokens(plain) and all(c.logprobs == [] for c in plain)
    for completion in scored:
        assert len(completion.logprobs) == len(completion.token_ids)
        assert all(value < 0 for value in completion.logprobs)


def test_each_decoding_step_is_reported_and_leaves_the_tokens_alone(tiny):
    model, tokenizer = tiny
    ids = encode(tokenizer, PROMPTS[:2])
    params = [SamplingParams(1.0, 0.95, 12, seed=3)] * len(ids)
    reported = []
    watched = sample(model, tokenizer, ids, params, on_step=lambda *step: reported.append(step))
    assert tokens(watched) == tokens(sample(model, tokenizer, ids, params))
    longest = max(len(c.token_ids) for c in watched)
    # After each step that fed the model: every step but the last one.
    assert reported == [(step, 12) for step in range(1, longest)]


def test_a_missing_seed_is_drawn_reported_and_reproducible(tiny):
    model, tokenizer = tiny
    ids = encode(tokenizer, PROMPTS[:3])
    drawn = sample(model, tokenizer, ids, [SamplingParams(1.0, 0.9, 16)] * 3)
    seeds = [c.seed for c in drawn]
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)
    again = sample(model, tokenizer, ids, [SamplingParams(1.0, 0.9, 16, seed=s) for s in seeds])
    assert tokens(again) == tokens(drawn)


@pytest.mark.parametrize("temperature", [0.0, 0.8, 1.3])
def test_a_row_does_not_depend_on_the_rest_of_its_batch(any_model, temperature):
    """Alone, or among 8 prompts of other lengths and parameters: exactly the same tokens."""
    model, tokenizer = any_model
    ids = encode(tokenizer, PROMPTS)
    params = [
        SamplingParams(temperature * (1 + i % 3 / 4), 0.8 + i % 3 / 10, 24 + 4 * i, seed=100 + i)
        for i in range(len(ids))
    ]
    batched = sample(model, tokenizer, ids, params)
    for i in range(len(ids)):
        alone = sample(model, tokenizer, [ids[i]], [params[i]])[0]
        assert alone == batched[i], f"row {i} differs alone and in the batch"
    # And in another company, in another order.
    order = [5, 2, 7, 0]
    shuffled = sample(model, tokenizer, [ids[i] for i in order], [params[i] for i in order])
    assert shuffled == [batched[i] for i in order]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_group_shares_its_prompt_s_prefill_and_samples_as_rows_would(any_model, temperature):
    """K samples of each prompt, the prompt prefilled once: each row's tokens are those it gets
    as a row of its own (its prompt repeated), whatever the group around it."""
    model, tokenizer = any_model
    ids = encode(tokenizer, PROMPTS[:3])
    group = 4
    params = [
        SamplingParams(temperature, 0.9, 12 + 2 * (row % group), seed=500 + row)
        for row in range(len(ids) * group)
    ]
    grouped = sample(model, tokenizer, ids, params, group_size=group)
    repeated = [prompt for prompt in ids for _ in range(group)]
    assert grouped == sample(model, tokenizer, repeated, params)
    if temperature > 0:  # the seeds differ: the samples of one prompt do too
        assert len({tuple(c.token_ids) for c in grouped[:group]}) > 1
    with pytest.raises(ValueError, match="group_size"):
        sample(model, tokenizer, ids, params, group_size=0)
    with pytest.raises(ValueError, match="3 prompts × 3"):
        sample(model, tokenizer, ids, params, group_size=3)


# --- agreement with Hugging Face generate --------------------------------------------------------


def test_greedy_equals_hf_generate(any_model):
    model, tokenizer = any_model
    ids = encode(tokenizer, PROMPTS[:5])
    ours = sample(model, tokenizer, ids, [SamplingParams(0, max_new_tokens=30)] * len(ids))
    for row, completion in zip(ids, ours, strict=True):
        expected = hf_greedy(model, row, 30)
        # HF stops at EOS too; both include the EOS token that ended the row.
        assert completion.token_ids == expected


def test_stories260k_greedy_reproduces_the_golden_text(stories):
    model, tokenizer = stories
    ids = tokenizer("Once upon a time")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    (completion,) = sample(model, tokenizer, [ids], [SamplingParams(0, max_new_tokens=60)])
    assert completion.finish_reason == "length" and len(completion.token_ids) == 60
    assert tokenizer.decode(ids + completion.token_ids, skip_special_tokens=True) == GOLDEN


# --- padding -------------------------------------------------------------------------------------


def test_left_padding_layout():
    input_ids, mask = left_pad([[1, 5, 6], [1], [1, 7]], pad_id=3, device="cpu")
    assert input_ids.tolist() == [[1, 5, 6], [3, 3, 1], [3, 1, 7]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_left_padded_rows_get_the_logits_of_their_unpadded_prompt(any_model):
    model, tokenizer = any_model
    ids = encode(tokenizer, PROMPTS)
    with torch.inference_mode():
        _, batched = prefill(model, *left_pad(ids, 0, "cpu"), capacity=64)
        for i, row in enumerate(ids):
            alone = model(input_ids=torch.tensor([row])).logits[0, -1]
            torch.testing.assert_close(batched[i], alone, atol=2e-5, rtol=1e-5)


# --- stopping ------------------------------------------------------------------------------------


def test_rows_stop_at_eos_and_the_others_run_on(tiny):
    """Make the 4th greedy token of prompt 0 an EOS: that row stops there, alone and batched."""
    model, tokenizer = tiny
    ids = encode(tokenizer, PROMPTS[:3])
    greedy = [SamplingParams(0, max_new_tokens=20, seed=0)] * 3
    plain = sample(model, tokenizer, ids, greedy)
    stop_token = plain[0].token_ids[3]
    first = plain[0].token_ids.index(stop_token)  # 3, or earlier if repeated
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop_token]
    try:
        stopped = sample(model, tokenizer, ids, greedy)
    finally:
        model.generation_config.eos_token_id = original
    assert stopped[0].token_ids == plain[0].token_ids[: first + 1]  # the EOS is included
    assert len(plain[0].token_ids) > first + 1
    assert stopped[0].finish_reason == "stop"
    for before, after in zip(plain[1:], stopped[1:], strict=True):
        # Rows that never emit the new EOS are unaffected by the finished one.
        if stop_token not in before.token_ids:
            assert after.token_ids == before.token_ids
            assert after.finish_reason == before.finish_reason


def test_each_row_stops_at_its_own_length(tiny):
    model, tokenizer = tiny
    ids = encode(tokenizer, ["Once upon a time"] * 3)
    limits = [1, 5, 9]
    params = [SamplingParams(1.0, 1.0, n, seed=3) for n in limits]
    completions = sample(model, tokenizer, ids, params)
    eos = tokenizer.eos_token_id
    for completion, limit in zip(completions, limits, strict=True):
        assert 1 <= len(completion.token_ids) <= limit
        assert eos not in completion.token_ids[:-1]  # nothing after an EOS
        if completion.token_ids[-1] == eos:
            assert completion.finish_reason == "stop"
        else:
            assert completion.finish_reason == "length" and len(completion.token_ids) == limit
    # Same seed and prompt: the shorter completions are prefixes of the longer ones.
    assert completions[2].token_ids[: len(completions[1].token_ids)] == completions[1].token_ids
