"""What a worker reports when it had to cut a prompt or a response (model_worker).

A prompt longer than the model's context loses its oldest tokens; the result says how many, so
that the annotator can be told that the model never saw the beginning of the conversation.
"""

from __future__ import annotations

import pytest

from model_worker import generation
from model_worker.generation import GenerationRequest, HuggingFaceBackend
from model_worker.tasks import run_generation
from rlhf.data.chat import format_prompt
from rlhf.nn.sampling import SamplingParams
from rlhf.nn.tiny import BUILTIN_CORPUS, build_tiny_llama, build_tokenizer

POSITIONS = 48
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def short_model_dir(tmp_path_factory):
    """A tiny Llama with only 48 positions: a few sentences overflow it."""
    out = tmp_path_factory.mktemp("tiny-48")
    return build_tiny_llama(
        out, max_positions=POSITIONS, tokenizer=build_tokenizer(BUILTIN_CORPUS), seed=3
    )


@pytest.fixture(scope="module")
def short(short_model_dir):
    return HuggingFaceBackend(str(short_model_dir), device="cpu")


def ask(text: str) -> GenerationRequest:
    return GenerationRequest(
        [{"role": "user", "content": text}],
        SamplingParams(temperature=0, max_new_tokens=MAX_NEW_TOKENS),
    )


def full_length(backend, request: GenerationRequest) -> int:
    return len(backend.tokenizer(format_prompt(backend.tokenizer, request.messages))["input_ids"])


def test_a_prompt_that_fits_loses_nothing(short):
    request = ask("Hi")
    ids, dropped = short.fit_prompt(request)
    assert dropped == 0 and len(ids) == full_length(short, request)
    (result,) = short.generate([request])
    assert result.prompt_tokens_dropped == 0


def test_a_long_prompt_reports_how_many_tokens_were_cut_from_its_beginning(short):
    request = ask("word " * 200)
    total = full_length(short, request)
    ids, dropped = short.fit_prompt(request)
    assert len(ids) == POSITIONS - MAX_NEW_TOKENS
    assert dropped == total - len(ids) > 150  # BOS is kept, so it is not counted as dropped
    # In a batch with a short prompt, each result carries its own count.
    long_result, short_result = short.generate([request, ask("Hi")])
    assert (long_result.prompt_tokens_dropped, short_result.prompt_tokens_dropped) == (dropped, 0)
    assert long_result.prompt_tokens + long_result.prompt_tokens_dropped == total


def test_the_task_result_carries_the_finish_reason_and_the_dropped_count(short_model_dir):
    generation.release_loaded()
    try:
        results = run_generation(
            [
                {
                    "comparison": 7,
                    "slot": slot,
                    "model_version": 1,
                    "model_path": str(short_model_dir),
                    "messages": [{"role": "user", "content": text}],
                    "params": {"temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS, "seed": 1},
                }
                for slot, text in ((1, "word " * 200), (2, "Hi"))
            ]
        )
        backend = generation.load_backend(str(short_model_dir))
        expected = backend.generate([ask("word " * 200), ask("Hi")])
    finally:
        generation.release_loaded()
    by_slot = {r["slot"]: r for r in results}
    assert by_slot[1]["prompt_tokens_dropped"] == expected[0].prompt_tokens_dropped > 0
    assert by_slot[2]["prompt_tokens_dropped"] == 0
    for result, alone in zip((by_slot[1], by_slot[2]), expected, strict=True):
        assert result["finish_reason"] == alone.finish_reason
        assert result["finish_reason"] in {"stop", "length"}
        # "length" exactly when the response used its whole token budget without an EOS.
        if result["finish_reason"] == "length":
            assert result["completion_tokens"] == MAX_NEW_TOKENS
