"""Throughput of batched generation against one ``model.generate`` call per prompt.

What is measured
----------------
For each model, N user prompts (from ../shared/data/oasst, else a built-in list) are answered
with the same sampling parameters (temperature, top-p, max new tokens) in two ways:

    batched    model_worker.generation.HuggingFaceBackend.generate(all N requests): prompts
               sorted by length, left-padded, one prefill and one forward pass per step for the
               whole batch (rlhf.nn.sampling)
    baseline   for each prompt in turn, Hugging Face ``model.generate(do_sample=True, …)`` with
               the same temperature and top-p (top-k disabled), the same max_new_tokens and the
               very same prompt token ids (plain format, truncated alike)

Both run on the CPU in float32 by default (``--device cuda``: on the GPU, in bfloat16 where
supported, the backend's choice, for both paths), with torch's thread count printed, after a
short warm-up of each. Timings include everything between a list of prompts and a list of
outputs; with ``--repeat R`` the two paths alternate R times and each path's fastest run counts
(the CPUs may be shared with other work).

Fairness: both paths stop a response at EOS, so they need not generate the same number of
tokens (and the batched loop keeps stepping, on padding, for rows that finished while others
run on; that costs it, not the baseline). The figure compared is therefore generated tokens per
second (EOS included in both counts); responses per second is shown beside it. The 20M model has
random weights, so EOS is unlikely and nearly every response runs to max_new_tokens in both
paths, making the two ratios equal.

Models
------
    stories   ../shared/models/stories260K-hf (260K parameters, pretrained; skipped if absent)
    20m       a random ~20M-parameter Llama built here by rlhf.nn.tiny (llama_20m_config)

Usage: python bench/generation.py [--prompts 64] [--max-new-tokens 64] [--models stories,20m]
           [--temperature 0.7] [--top-p 0.9] [--threads T] [--device cpu] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("PAIRWISE_ASSETS", ROOT.parent / "shared"))
STORIES = SHARED / "models" / "stories260K-hf"
OASST = SHARED / "data" / "oasst" / "prompt_lottery_en_250_text.jsonl"

BUILTIN_PROMPTS = [
    "Tell me a story about a dragon who is afraid of the dark.",
    "What is the capital of France?",
    "Explain how a bicycle stays upright.",
    "Write a short poem about the sea.",
    "How do I boil an egg?",
    "Why is the sky blue?",
    "Give me three ideas for a birthday party.",
    "What does a cat like to eat?",
]


@dataclass
class Run:
    seconds: float
    responses: int
    tokens: int

    @property
    def responses_per_s(self) -> float:
        return self.responses / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def load_prompts(count: int) -> tuple[list[str], str]:
    if OASST.exists():
        texts = [json.loads(line) for line in OASST.read_text().splitlines() if line.strip()]
        source = str(OASST)
    else:
        texts, source = BUILTIN_PROMPTS, "built-in prompts (../shared absent)"
    return [texts[i % len(texts)] for i in range(count)], source


def requests_for(prompts: list[str], args) -> list:
    from model_worker.generation import GenerationRequest
    from rlhf.nn.sampling import SamplingParams

    return [
        GenerationRequest(
            messages=[{"role": "user", "content": text}],
            params=SamplingParams(
                temperature=args.temperature,
                top_p=args.top_p,
                max_new_tokens=args.max_new_tokens,
                seed=i,
            ),
        )
        for i, text in enumerate(prompts)
    ]


def run_batched(backend, requests) -> Run:
    synchronize(backend.device)
    began = time.perf_counter()
    results = backend.generate(requests)  # returns Python lists: the GPU is done by then
    seconds = time.perf_counter() - began
    return Run(seconds, len(results), sum(r.completion_tokens for r in results))


def run_baseline(backend, requests) -> Run:
    """One ``model.generate`` per prompt, with the backend's own prompt token ids."""
    import torch

    model, tokenizer = backend.model, backend.tokenizer
    prompts = [backend.prompt_token_ids(r) for r in requests]
    tokens = 0
    synchronize(backend.device)
    began = time.perf_counter()
    for i, (ids, request) in enumerate(zip(prompts, requests, strict=True)):
        torch.manual_seed(i)
        input_ids = torch.tensor([ids], device=backend.device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                temperature=request.params.temperature,
                top_p=request.params.top_p,
                top_k=0,
                max_new_tokens=request.params.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        tokens += output.shape[1] - input_ids.shape[1]
    synchronize(backend.device)
    return Run(time.perf_counter() - began, len(requests), tokens)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_dirs(names: list[str], workdir: Path):
    from rlhf.nn.tiny import build_tiny_llama, llama_20m_config

    for name in names:
        if name == "stories":
            if not STORIES.exists():
                print(f"skipping stories: {STORIES} is absent (set PAIRWISE_ASSETS)")
                continue
            yield "stories260K", STORIES
        elif name == "20m":
            yield (
                "llama-20M (random)",
                build_tiny_llama(workdir / "llama-20m", **llama_20m_config()),
            )
        else:
            raise SystemExit(f"unknown model {name!r}: choose from stories, 20m")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--models", default="stories,20m")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs of each")
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    from model_worker.generation import HuggingFaceBackend

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts, source = load_prompts(args.prompts)
    print(f"prompts: {args.prompts} from {source}")
    print(
        f"sampling: temperature {args.temperature}, top_p {args.top_p}, "
        f"max_new_tokens {args.max_new_tokens}; torch threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for label, path in model_dirs(args.models.split(","), Path(workdir)):
            backend = HuggingFaceBackend(str(path), device=args.device, max_batch_size=args.prompts)
            params = sum(p.numel() for p in backend.model.parameters())
            print(f"{label}: {backend.device}, {backend.model.dtype}")
            requests = requests_for(prompts, args)
            prompt_tokens = [len(backend.prompt_token_ids(r)) for r in requests]
            warmup = requests_for(
                prompts[:2], argparse.Namespace(**{**vars(args), "max_new_tokens": 4})
            )
            backend.generate(warmup)
            run_baseline(backend, warmup)
            runs = [
                (run_batched(backend, requests), run_baseline(backend, requests))
                for _ in range(args.repeat)
            ]  # alternated, so that a burst of other load hits both paths alike
            batched = min((b for b, _ in runs), key=lambda run: run.seconds)
            baseline = min((b for _, b in runs), key=lambda run: run.seconds)
            rows.append((label, params, prompt_tokens, batched, baseline))

    print()
    header = (
        f"{'model':<20} {'params':>11} {'path':<9} {'seconds':>8} {'responses/s':>12} "
        f"{'tokens/s':>9} {'tokens/resp':>11}"
    )
    print(header)
    print("-" * len(header))
    for label, params, _, batched, baseline in rows:
        for name, run in (("batched", batched), ("baseline", baseline)):
            print(
                f"{label:<20} {params:>11,} {name:<9} {run.seconds:>8.2f} "
                f"{run.responses_per_s:>12.2f} {run.tokens_per_s:>9.1f} "
                f"{run.tokens / run.responses:>11.1f}"
            )
    print()
    print(
        f"load average at the end {os.getloadavg()[0]:.2f} (other processes on these CPUs slow "
        "both paths, the many small operations of the baseline and of tiny models most)"
    )
    for label, _, prompt_tokens, batched, baseline in rows:
        tokens_ratio = batched.tokens_per_s / baseline.tokens_per_s
        responses_ratio = batched.responses_per_s / baseline.responses_per_s
        mean_prompt = sum(prompt_tokens) / len(prompt_tokens)
        print(
            f"{label}: speed-up batched/baseline {tokens_ratio:.1f}x in generated tokens/s "
            f"({responses_ratio:.1f}x in responses/s); prompt tokens min/mean/max "
            f"{min(prompt_tokens)}/{mean_prompt:.0f}/{max(prompt_tokens)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
