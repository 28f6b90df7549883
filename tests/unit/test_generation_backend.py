"""The generation backend of the model workers (model_worker.generation), on tiny random Llamas."""

from __future__ import annotations

import pytest

from model_worker import generation
from model_worker.generation import (
    GenerationRequest,
    HuggingFaceBackend,
    load_backend,
)
from rlhf.data.chat import format_prompt, response_text, truncate_left
from rlhf.nn.sampling import SamplingParams
from rlhf.nn.tiny import BUILTIN_CORPUS, build_tiny_llama, build_tokenizer

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "You are concise."},
    {"role": "user", "content": " What is the capital of France? "},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def ask(text: str, **params) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": text}], SamplingParams(**params))


@pytest.fixture(scope="module")
def backend(tiny_policy_dir):
    return HuggingFaceBackend(str(tiny_policy_dir), device="cpu", max_batch_size=3)


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    tokenizer = build_tokenizer(BUILTIN_CORPUS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-chat"), tokenizer=tokenizer, seed=1)


@pytest.fixture(scope="module")
def short_model_dir(tmp_path_factory):
    """Only 48 positions, and a tokenizer without a pad token."""
    tokenizer = build_tokenizer(BUILTIN_CORPUS)
    tokenizer.pad_token = None
    out = tmp_path_factory.mktemp("tiny-short")
    return build_tiny_llama(out, max_positions=48, tokenizer=tokenizer, seed=2)


# --- prompt formats ------------------------------------------------------------------------------


def test_plain_format_without_a_chat_template(backend):
    assert not backend.tokenizer.chat_template
    assert format_prompt(backend.tokenizer, CONVERSATION) == (
        "System: You are concise.\n\n"
        "User: What is the capital of France?\n\n"
        "Assistant: Paris.\n\n"
        "User: And of Italy?\n\n"
        "Assistant:"
    )


def test_chat_template_format_when_the_tokenizer_has_one(chat_model_dir):
    chat = HuggingFaceBackend(str(chat_model_dir), device="cpu")
    prompt = format_prompt(chat.tokenizer, CONVERSATION[1:])
    assert prompt == (
        "<s><|user|>\n What is the capital of France? </s><|assistant|>\nParis.</s>"
        "<|user|>\nAnd of Italy?</s><|assistant|>\n"
    )
    # The template writes BOS itself: the prompt must not get a second one.
    request = GenerationRequest(CONVERSATION[1:], SamplingParams(0, max_new_tokens=4))
    ids = chat.prompt_token_ids(request)
    assert ids[0] == chat.tokenizer.bos_token_id and ids[1] != chat.tokenizer.bos_token_id
    (result,) = chat.generate([request])
    assert result.prompt_tokens == len(ids)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("  Rome.\n\nUser: and Spain?\n\nAssistant: Madrid.", "Rome."),
        (" Rome is the capital.\nUser:", "Rome is the capital."),
        ("\n Just text, no turn marker. \n", "Just text, no turn marker."),
        ("", ""),
    ],
)
def test_response_text_stops_at_the_next_user_turn(raw, text):
    assert response_text(raw) == text


# --- the Hugging Face backend --------------------------------------------------------------------


def test_the_backend_is_named_and_loaded_for_inference(backend):
    assert backend.name == "huggingface"
    assert not backend.model.training


def test_results_come_back_in_order_and_match_generating_alone(backend):
    texts = ["Hello", "Tell me a story about a little girl in the park", "Why?", "Hi", "Paris"]
    requests = [
        ask(text, temperature=0.9 if i % 2 else 0, max_new_tokens=6 + i, seed=i)
        for i, text in enumerate(texts)
    ]
    results = backend.generate(requests)  # 5 requests in batches of at most 3, sorted by length
    assert len(results) == len(requests)
    for request, result in zip(requests, results, strict=True):
        (alone,) = backend.generate([request])
        assert (alone.text, alone.completion_tokens, alone.seed) == (
            result.text,
            result.completion_tokens,
            result.seed,
        )
        assert result.seed == request.params.seed


def test_token_counts_latency_and_finish_reasons_are_recorded(backend):
    requests = [ask(f"Question number {i}?", temperature=1.0, max_new_tokens=5) for i in range(4)]
    results = backend.generate(requests)
    tokenizer = backend.tokenizer
    for request, result in zip(requests, results, strict=True):
        prompt = format_prompt(tokenizer, request.messages)
        assert result.prompt_tokens == len(tokenizer(prompt)["input_ids"])
        assert 1 <= result.completion_tokens <= 5
        assert result.finish_reason in {"stop", "length"}
        if result.completion_tokens < 5:
            assert result.finish_reason == "stop"  # ended by EOS before the limit
        assert isinstance(result.latency_ms, int) and result.latency_ms >= 0
        assert isinstance(result.seed, int)
        assert isinstance(result.text, str) and result.text == result.text.strip()
    # Batches of 3: the first three (sorted by length, all equal here) share one batch's time.
    assert len({r.latency_ms for r in results[:3]}) == 1


def test_a_drawn_seed_reproduces_the_response(backend):
    request = ask("Tell me a story", temperature=1.0, max_new_tokens=8)
    (first,) = backend.generate([request])
    repeat = ask("Tell me a story", temperature=1.0, max_new_tokens=8, seed=first.seed)
    (again,) = backend.generate([repeat])
    assert again.text == first.text


def test_long_prompts_are_truncated_from_the_left_keeping_bos(short_model_dir):
    short = HuggingFaceBackend(str(short_model_dir), device="cpu")
    long_request = ask("word " * 200, temperature=0, max_new_tokens=8)
    ids = short.prompt_token_ids(long_request)
    assert len(ids) == 48 - 8
    assert ids[0] == short.tokenizer.bos_token_id
    full = short.tokenizer(format_prompt(short.tokenizer, long_request.messages))["input_ids"]
    assert ids[1:] == full[-(48 - 8 - 1) :]  # the newest tokens, the "Assistant:" cue included
    (result,) = short.generate([long_request, ask("Hi", max_new_tokens=8)])[:1]
    assert result.prompt_tokens == 40
    assert 1 <= result.completion_tokens <= 8
    with pytest.raises(ValueError, match="no room"):
        short.prompt_token_ids(ask("Hi", max_new_tokens=48))


def test_nul_characters_never_reach_the_text(backend):
    ids = backend.tokenizer("a\x00b", add_special_tokens=False)["input_ids"]
    assert backend.tokenizer.decode(ids) == "a\x00b"  # a byte-level model can emit a NUL
    assert backend.completion_text(ids) == "ab"  # which PostgreSQL text cannot store


def test_truncate_left():
    assert truncate_left([1, 2, 3], 5, bos_id=1) == [1, 2, 3]
    assert truncate_left([1, 2, 3, 4, 5], 3, bos_id=1) == [1, 4, 5]
    assert truncate_left([7, 2, 3, 4, 5], 3, bos_id=1) == [3, 4, 5]
    assert truncate_left([1, 2, 3, 4, 5], 3, bos_id=None) == [3, 4, 5]


def test_a_missing_pad_token_is_set(short_model_dir):
    short = HuggingFaceBackend(str(short_model_dir), device="cpu")
    assert short.tokenizer.pad_token == short.tokenizer.eos_token


# --- one model per process -----------------------------------------------------------------------


def test_load_backend_keeps_the_most_recent_model_only(tiny_policy_dir, chat_model_dir):
    generation.release_loaded()
    first = load_backend(str(tiny_policy_dir))
    assert load_backend(str(tiny_policy_dir)) is first  # loaded once
    other = load_backend(str(chat_model_dir))
    assert other is not first and other.model_path == str(chat_model_dir)
    assert list(generation._loaded) == [str(chat_model_dir)]  # the first one was dropped
    again = load_backend(str(tiny_policy_dir))
    assert again is not first and again.model_path == str(tiny_policy_dir)  # loaded anew
    (result,) = again.generate([ask("Hello", max_new_tokens=3)])
    assert result.completion_tokens >= 1
    generation.release_loaded()


def test_carriage_returns_become_newlines(backend):
    ids = backend.tokenizer("one\r\ntwo\rthree", add_special_tokens=False)["input_ids"]
    assert backend.completion_text(ids) == "one\ntwo\nthree"
