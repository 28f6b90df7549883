"""Generation backends: turn conversations into sampled responses, many at a time.

A worker gets :class:`GenerationRequest` s (a conversation and its :class:`SamplingParams`) and
returns one :class:`GenerationResult` per request, in the same order. The default backend,
:class:`HuggingFaceBackend`, runs any Hugging Face causal language model with the batched
sampler of :mod:`rlhf.nn.sampling`; :func:`load_backend` keeps one loaded per worker process.

Prompts are written in the one chat format of :mod:`rlhf.data.chat` (the tokenizer's chat
template, else the plain format), the one the reward models score.

This module imports neither Django nor the database: requests carry all they need.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from model_worker import hub
from rlhf.data.chat import completion_text, encode_prompt
from rlhf.nn.sampling import SamplingParams, sample


@dataclass(frozen=True)
class GenerationRequest:
    """A conversation (``{"role", "content"}`` dicts, last one the user's) to respond to."""

    messages: list[dict[str, str]]
    params: SamplingParams


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int  # tokens the model was given (after any truncation)
    completion_tokens: int  # tokens generated, the EOS that ended the response included
    latency_ms: int
    finish_reason: str  # "stop" (EOS) or "length" (max_new_tokens reached)
    seed: int  # the seed actually used: rerunning with it gives the same response
    # Tokens cut from the beginning of the prompt to fit the model: what it never saw.
    prompt_tokens_dropped: int = 0


class GenerationBackend(Protocol):
    """What the generation tasks need from an engine.

    ``generate`` gets a whole group of requests for one model at once and returns their results
    in order; how it batches them is its own business. A faster engine plugs in by implementing
    this protocol, e.g. a ``VLLMBackend`` wrapping ``vllm.LLM(model_path)`` whose ``generate``
    formats prompts with :func:`format_prompt`, maps each :class:`SamplingParams` to
    ``vllm.SamplingParams(temperature=…, top_p=…, max_tokens=…, seed=…)`` and reads text, token
    counts and finish reasons from the ``RequestOutput`` s; then :func:`load_backend` (or the
    worker's configuration) returns it instead of :class:`HuggingFaceBackend` on GPU workers.
    Seeds must be honoured and reported, since responses record them.
    """

    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


# --- prompt text ---------------------------------------------------------------------------------


# --- the Hugging Face backend --------------------------------------------------------------------


class HuggingFaceBackend:
    """Any ``AutoModelForCausalLM`` directory or hub id, sampled in batches by rlhf.nn.sampling.

    The tokenizer and model are loaded once, in eval mode: bfloat16 on a CUDA device that
    supports it, float32 otherwise. ``generate`` tokenizes all prompts, sorts them by length
    (so that each batch pads little), runs batches of at most ``max_batch_size`` and returns the
    results in the requests' order. A prompt longer than ``max_position_embeddings -
    max_new_tokens`` loses its oldest tokens (BOS is kept); ``prompt_tokens`` counts what the
    model was given and ``prompt_tokens_dropped`` what it lost, so that annotators can be told.
    ``latency_ms`` is the wall time of the whole batch the request was part of (sampling and
    detokenising), attributed in full to each request of that batch: in a batch, every response
    arrives when the batch ends.
    """

    name = "huggingface"

    def __init__(self, model_path: str, *, device: str | None = None, max_batch_size: int = 64):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.model_path = str(model_path)
        self.max_batch_size = max_batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        dtype = torch.float32
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype)
        self.model = model.to(self.device).eval()
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        fitted = [self.fit_prompt(r) for r in requests]
        prompts = [ids for ids, _ in fitted]
        dropped = [count for _, count in fitted]
        by_length = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
        results: list[GenerationResult | None] = [None] * len(requests)
        for start in range(0, len(by_length), self.max_batch_size):
            chunk = by_length[start : start + self.max_batch_size]
            batch = self.run_batch(requests, prompts, chunk, dropped)
            for i, result in zip(chunk, batch, strict=True):
                results[i] = result
        return results

    def run_batch(
        self, requests, prompts, chunk: list[int], dropped: list[int]
    ) -> list[GenerationResult]:
        began = time.perf_counter()
        completions = sample(
            self.model,
            self.tokenizer,
            [prompts[i] for i in chunk],
            [requests[i].params for i in chunk],
        )
        texts = [self.completion_text(c.token_ids) for c in completions]
        latency_ms = round((time.perf_counter() - began) * 1000)
        return [
            GenerationResult(
                text=text,
                prompt_tokens=len(prompts[i]),
                completion_tokens=len(completion.token_ids),
                latency_ms=latency_ms,
                finish_reason=completion.finish_reason,
                seed=completion.seed,
                prompt_tokens_dropped=dropped[i],
            )
            for i, completion, text in zip(chunk, completions, texts, strict=True)
        ]

    def prompt_token_ids(self, request: GenerationRequest) -> list[int]:
        """The request's prompt as token ids, cut from the left to leave room for the answer."""
        return self.fit_prompt(request)[0]

    def fit_prompt(self, request: GenerationRequest) -> tuple[list[int], int]:
        """The prompt's token ids that fit the model, and how many were cut from its left."""
        if self.max_positions is None:
            return encode_prompt(self.tokenizer, request.messages)
        room = self.max_positions - request.params.max_new_tokens
        if room < 1:
            raise ValueError(
                f"max_new_tokens={request.params.max_new_tokens} leaves no room for a prompt "
                f"in {self.max_positions} positions"
            )
        return encode_prompt(self.tokenizer, request.messages, room)

    def completion_text(self, token_ids: list[int]) -> str:
        return completion_text(self.tokenizer, token_ids)


# --- one loaded model per process ----------------------------------------------------------------

_loaded: dict[str, HuggingFaceBackend] = {}
_loading = threading.Lock()


def load_backend(model_path: str) -> HuggingFaceBackend:
    """The backend for ``model_path``, loaded once per process and kept while it is asked for.

    Only the most recently used model stays loaded: asking for another path drops the current
    one before loading the new one, so that a worker's memory holds one model at a time.
    """
    key = str(model_path)
    with _loading:
        backend = _loaded.get(key)
        if backend is None:
            hub.ensure_available(key)  # an unreachable hub: one short failure, not minutes
            release_loaded()
            backend = HuggingFaceBackend(key)
            _loaded[key] = backend
        return backend


def release_loaded() -> None:
    """Drop the loaded model, returning its memory (and its GPU memory) before another loads."""
    _loaded.clear()
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
