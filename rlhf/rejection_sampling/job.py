"""The "rejection-sampling" stage of a job (:mod:`rlhf.runner`): one iteration.

Inputs by role: ``helpfulness_prompts`` and ``safety_prompts`` (prompt files,
:mod:`rlhf.data.prompts`; a safety prompt is judged by the safety reward model), and ``pool``
(the previous iteration's pool, optional). For each temperature of the config, every prompt not
held out is sampled K times (prefilled once) and each sample judged by the gated reward; every
sample is appended to ``samples.jsonl`` as its batch ends, so a resumed job skips what is done.
The pool (the previous one, each prompt's best kept) is written to ``pool.jsonl``: supervised
fine-tuning reads it (``python -m rlhf sft --data pool.jsonl``). The metrics: the best-of-N curve
per temperature (Fig. 7), the best temperature, the mean gated reward of the kept samples, the
share decided by the safety model, and what the pool gained.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhf.data.prompts import Prompt, split_prompt_files
from rlhf.jobs import JobContext, JobError, RunSpec, require_directories
from rlhf.rejection_sampling.best_of_n import best_of_n_curve
from rlhf.rejection_sampling.config import RejectionSamplingConfig
from rlhf.rejection_sampling.pool import Pool, Sample
from rlhf.rejection_sampling.sampling import RewardModel, judge, sample_groups, sample_seed

INPUT_ROLES = ("helpfulness_prompts", "safety_prompts", "pool")
SAMPLES_FILE = "samples.jsonl"
POOL_FILE = "pool.jsonl"
# A batch's progress while it decodes: its sampling counts for this share of it, its scoring for
# the rest (bench/rejection_sampling.py: scoring took under a tenth of the time), reported at
# most every PROGRESS_SECONDS.
SAMPLING_SHARE = 0.9
PROGRESS_SECONDS = 1.0


@dataclass
class Plan:
    config: RejectionSamplingConfig
    prompts: list[Prompt]
    held_out: int
    pool: Pool


def read_prompts(spec: RunSpec, config: RejectionSamplingConfig) -> tuple[list[Prompt], int]:
    """The prompts to sample (duplicates once), and how many were held out."""
    prompts, kept_back = split_prompt_files(
        spec.paths("helpfulness_prompts"),
        spec.paths("safety_prompts"),
        eval_fraction=config.eval_fraction,
        seed=config.seed,
        max_prompts=config.max_prompts,
    )
    return prompts, len(kept_back)


class RejectionSamplingStage:
    def prepare(self, spec: RunSpec) -> Plan:
        for role in spec.inputs:
            if role not in INPUT_ROLES:
                raise JobError(
                    f"inputs.{role}", f"is not an input of rejection sampling: {INPUT_ROLES}"
                )
        if not spec.paths("helpfulness_prompts") + spec.paths("safety_prompts"):
            raise JobError("inputs", "names no prompts (helpfulness_prompts, safety_prompts)")
        if len(spec.paths("pool")) > 1:
            raise JobError("inputs.pool", "names more than one pool")
        if spec.options:
            raise JobError(f"options.{next(iter(spec.options))}", "rejection sampling takes none")
        config = RejectionSamplingConfig.from_dict(spec.config)
        require_directories(config, ("policy", "reward_helpfulness", "reward_safety"))
        prompts, kept_back = read_prompts(spec, config)
        if not prompts:
            raise JobError("inputs", "every prompt is held out: lower eval_fraction")
        try:
            pool = Pool.load(spec.paths("pool")[0]) if spec.paths("pool") else Pool()
        except ValueError as error:
            raise JobError("inputs.pool", str(error)) from None
        return Plan(config, prompts, kept_back, pool)

    def train(self, plan: Plan, context: JobContext) -> dict[str, Any]:
        return run_iteration(plan, context)


def done_samples(path: Path) -> dict[tuple[float, str], list[Sample]]:
    """The samples a resumed job wrote already, by (temperature, prompt key)."""
    done: dict[tuple[float, str], list[Sample]] = defaultdict(list)
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                sample = Sample(**json.loads(line))
                done[(sample.temperature, sample.key)].append(sample)
    return done


def append_samples(path: Path, samples: list[Sample]) -> None:
    with path.open("a", encoding="utf-8") as out:
        for sample in samples:
            out.write(json.dumps(asdict(sample), ensure_ascii=False) + "\n")


def summary(plan: Plan, by_temperature: dict[float, dict[str, list[float]]]) -> dict[str, Any]:
    """The best-of-N curve and the kept samples' rewards, per temperature."""
    report = {}
    for temperature, groups in by_temperature.items():
        rewards = list(groups.values())
        best = [max(group) for group in rewards]
        report[repr(temperature)] = {
            "prompts": len(rewards),
            "best_of_k_mean": statistics.fmean(best),
            "best_of_k_stderr": statistics.stdev(best) / len(best) ** 0.5 if len(best) > 1 else 0.0,
            "curve": best_of_n_curve(rewards),
        }
    return report


def seeds_for(plan: Plan, prompt: Prompt, temperature: float) -> list[int]:
    config = plan.config
    return [
        sample_seed(config.seed, config.iteration, prompt.key, temperature, index)
        for index in range(config.samples_per_prompt)
    ]


# --- the stage's work, with its models loaded ----------------------------------------


def load_models(plan: Plan):
    """The policy (float32 on CPUs, bf16 on a GPU that has it) and both reward models."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.nn.devices import use_cpu
    from rlhf.reward.model import load_reward_model

    config = plan.config
    device = torch.device("cpu" if use_cpu(config.cpu) else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    policy = AutoModelForCausalLM.from_pretrained(config.policy, dtype=dtype or torch.float32)
    policy.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(config.policy)
    judges = []
    for path in (config.reward_helpfulness, config.reward_safety):
        model, reward_tokenizer, _ = load_reward_model(path)
        judges.append(RewardModel(model.to(device), reward_tokenizer))
    return policy, tokenizer, judges[0], judges[1]


def run_iteration(plan: Plan, context: JobContext) -> dict[str, Any]:
    config, events, out = plan.config, context.events, context.spec.output_dir
    done = done_samples(out / SAMPLES_FILE)
    events.write(
        "log",
        message=f"iteration {config.iteration}: {len(plan.prompts):,} prompts ({plan.held_out:,} "
        f"held out), K = {config.samples_per_prompt}, temperatures {config.temperatures}; the "
        f"pool holds {len(plan.pool):,}"
        + (f"; resuming, {len(done):,} groups done" if done else ""),
    )
    policy, tokenizer, helpfulness, safety = load_models(plan)
    rewards: dict[float, dict[str, list[float]]] = defaultdict(dict)
    offered: list[Sample] = []
    total = len(plan.prompts) * len(config.temperatures)
    finished = 0
    for temperature in config.temperatures:
        for start in range(0, len(plan.prompts), config.prompt_batch_size):
            batch = plan.prompts[start : start + config.prompt_batch_size]
            todo = [p for p in batch if (temperature, p.key) not in done]
            samples = [s for p in batch for s in done.get((temperature, p.key), [])]
            if todo:
                on_step = _decoding_progress(events.write, finished, len(batch), total)
                new = _sample_batch(
                    plan, policy, tokenizer, helpfulness, safety, todo, temperature, on_step
                )
                append_samples(out / SAMPLES_FILE, new)
                samples += new
            for sample in samples:
                rewards[temperature].setdefault(sample.key, []).append(sample.reward)
            offered += samples
            finished += len(batch)
            events.write("progress", fraction=finished / total)
    counts = plan.pool.offer(offered)
    plan.pool.save(out / POOL_FILE)
    curves = summary(plan, rewards)
    best_temperature = max(curves, key=lambda t: curves[t]["best_of_k_mean"])
    kept = plan.pool.samples()
    events.write(
        "log",
        message=f"pool: {counts['new']:,} new prompts, {counts['improved']:,} improved, "
        f"{counts['kept']:,} kept their earlier best; best temperature {best_temperature}",
    )
    return {
        "iteration": config.iteration,
        "prompts": len(plan.prompts),
        "held_out_prompts": plan.held_out,
        "samples": len(offered),
        "temperatures": curves,
        "best_temperature": float(best_temperature),
        "pool": {
            **counts,
            "size": len(kept),
            "mean_reward": statistics.fmean(s.reward for s in kept),
            "by_safety_share": statistics.fmean(s.by_safety for s in kept),
            "path": str(out / POOL_FILE),
        },
    }


def _decoding_progress(
    write: Callable[..., None], finished: int, batch: int, total: int
) -> Callable[[int, int], None]:
    """A decoding step's callback: the "progress" event of a batch of ``batch`` prompts after
    ``finished`` of ``total``, at most every :data:`PROGRESS_SECONDS`."""
    last = time.monotonic()

    def on_step(step: int, steps: int) -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_SECONDS:
            last = time.monotonic()
            write("progress", fraction=(finished + batch * SAMPLING_SHARE * step / steps) / total)

    return on_step


def _sample_batch(plan, policy, tokenizer, helpfulness, safety, prompts, temperature, on_step):
    config = plan.config
    groups = sample_groups(
        policy,
        tokenizer,
        prompts,
        [seeds_for(plan, prompt, temperature) for prompt in prompts],
        temperature=temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        on_step=on_step,
    )
    judged = judge(
        helpfulness,
        safety,
        prompts,
        groups,
        batch_size=config.reward_batch_size,
        max_length=config.reward_max_length,
    )
    return [
        Sample(
            prompt=prompt.context,
            response=j.response,
            reward=j.reward,
            helpfulness=j.helpfulness,
            safety=j.safety,
            by_safety=j.by_safety,
            safety_prompt=prompt.safety_prompt,
            iteration=config.iteration,
            model=config.policy,
            temperature=temperature,
            seed=j.seed,
        )
        for prompt, group in zip(prompts, judged, strict=True)
        for j in group
    ]
