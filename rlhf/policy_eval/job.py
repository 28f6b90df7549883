"""The "policy-eval" stage of a job (:mod:`rlhf.runner`).

Inputs by role, each a list of prompt files (:mod:`rlhf.data.prompts`): ``helpfulness_prompts``,
``safety_prompts`` (harmful requests: their refusal rate is the one that should be high) and
``overrefusal_prompts`` (safe look-alikes such as XSTest's: their refusal rate is over-refusal;
records labelled "unsafe" are left out). With ``eval_fraction`` > 0 only the held-out side of
each set is evaluated (:func:`rlhf.data.split.held_out`, the hash the training stages split by).
Writes ``responses.jsonl`` (every prompt, response, rewards, refusal) and the metrics.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from rlhf.data.chat import completion_text, encode_prompt
from rlhf.data.prompts import Prompt, load_prompts
from rlhf.data.split import held_out
from rlhf.jobs import JobContext, JobError, RunSpec, require_directories
from rlhf.policy_eval.compare import win_rate
from rlhf.policy_eval.config import PolicyEvalConfig
from rlhf.policy_eval.refusal import is_refusal
from rlhf.rejection_sampling.sampling import RewardModel, judge, sample_seed
from rlhf.reward.gate import SAFETY_GATE, gate_precision_recall

PROMPT_SETS = ("helpfulness_prompts", "safety_prompts", "overrefusal_prompts")
RESPONSES_FILE = "responses.jsonl"


@dataclass
class EvalPlan:
    config: PolicyEvalConfig
    prompts: dict[str, list[Prompt]]  # by prompt set


def read_sets(spec: RunSpec, config: PolicyEvalConfig) -> dict[str, list[Prompt]]:
    sets = {}
    for role in PROMPT_SETS:
        prompts, seen = [], set()
        for path in spec.paths(role):
            for record in load_prompts(path):
                if role == "overrefusal_prompts" and record.label == "unsafe":
                    continue
                prompt = Prompt(record.context, role == "safety_prompts", record.category)
                if prompt.key in seen:
                    continue
                seen.add(prompt.key)
                if config.eval_fraction == 0 or held_out(
                    prompt.context, config.eval_fraction, config.seed
                ):
                    prompts.append(prompt)
        if prompts:
            sets[role] = prompts[: config.max_prompts]
    return sets


class PolicyEvalStage:
    def prepare(self, spec: RunSpec) -> EvalPlan:
        for role in spec.inputs:
            if role not in PROMPT_SETS:
                raise JobError(f"inputs.{role}", f"is not an input of an evaluation: {PROMPT_SETS}")
        if spec.options:
            raise JobError(f"options.{next(iter(spec.options))}", "an evaluation takes none")
        config = PolicyEvalConfig.from_dict(spec.config)
        require_directories(
            config, ("policy", "reward_helpfulness", "reward_safety", "reference", "compare_with")
        )
        sets = read_sets(spec, config)
        if not sets:
            raise JobError("inputs", "no prompt to evaluate (none given, or none held out)")
        return EvalPlan(config, sets)

    def train(self, plan: EvalPlan, context: JobContext) -> dict[str, Any]:
        return evaluate(plan, context)


# --- the stage's work, with its models loaded ----------------------------------------


def mean_and_stderr(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": math.nan, "stderr": math.nan, "n": 0}
    spread = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "stderr": spread, "n": len(values)}


def load_policy(path: str, device):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path)


def load_judge(path: str, device) -> RewardModel:
    from rlhf.reward.model import load_reward_model

    model, tokenizer, _ = load_reward_model(path)
    return RewardModel(model.to(device), tokenizer)


def respond(model, tokenizer, prompts, config) -> list[tuple[list[int], list[int], str]]:
    """(prompt ids, completion ids, text) of one sample per prompt, seeded by the prompt."""
    from rlhf.nn.sampling import SamplingParams, sample

    room = getattr(model.config, "max_position_embeddings", None)
    room = None if room is None else room - config.max_new_tokens
    prompt_ids = [encode_prompt(tokenizer, p.context, room)[0] for p in prompts]
    params = [
        SamplingParams(
            config.temperature,
            config.top_p,
            config.max_new_tokens,
            seed=sample_seed(config.seed, 0, p.key, config.temperature, 0),
        )
        for p in prompts
    ]
    completions = sample(model, tokenizer, prompt_ids, params)
    return [
        (ids, c.token_ids, completion_text(tokenizer, c.token_ids))
        for ids, c in zip(prompt_ids, completions, strict=True)
    ]


def evaluate(plan: EvalPlan, context: JobContext) -> dict[str, Any]:
    import torch

    from rlhf.nn.devices import use_cpu
    from rlhf.nn.logprobs import completion_logprobs

    config, events = plan.config, context.events
    device = torch.device("cpu" if use_cpu(config.cpu) else "cuda")
    policy, tokenizer = load_policy(config.policy, device)
    helpfulness = load_judge(config.reward_helpfulness, device)
    safety = load_judge(config.reward_safety, device)
    reference = load_policy(config.reference, device)[0] if config.reference else None
    other = load_policy(config.compare_with, device) if config.compare_with else None
    total = sum(len(prompts) for prompts in plan.prompts.values())
    events.write(
        "log",
        message=f"evaluating {config.policy} on {total:,} prompts: "
        + ", ".join(f"{len(p):,} {role}" for role, p in plan.prompts.items()),
    )
    judging = {"batch_size": config.reward_batch_size, "max_length": config.reward_max_length}
    rows, done = [], 0
    for role, prompts in plan.prompts.items():
        for start in range(0, len(prompts), config.prompt_batch_size):
            batch = prompts[start : start + config.prompt_batch_size]
            answers = respond(policy, tokenizer, batch, config)
            groups = [[(text, 0, len(ids))] for _, ids, text in answers]
            judged = [group[0] for group in judge(helpfulness, safety, batch, groups, **judging)]
            kl = [math.nan] * len(batch)
            if reference is not None:
                ours = completion_logprobs(policy, [a[0] for a in answers], [a[1] for a in answers])
                theirs = completion_logprobs(
                    reference, [a[0] for a in answers], [a[1] for a in answers]
                )
                kl = [a - b for a, b in zip(ours, theirs, strict=True)]
            rival = [math.nan] * len(batch)
            if other is not None:
                replies = respond(other[0], other[1], batch, config)
                groups = [[(text, 0, len(ids))] for _, ids, text in replies]
                rival = [g[0].reward for g in judge(helpfulness, safety, batch, groups, **judging)]
            for prompt, j, kl_value, rival_reward in zip(batch, judged, kl, rival, strict=True):
                rows.append(
                    {
                        "set": role,
                        "category": prompt.category,
                        "prompt": prompt.context,
                        "response": j.response,
                        "reward": j.reward,
                        "helpfulness": j.helpfulness,
                        "safety": j.safety,
                        "by_safety": j.by_safety,
                        "refusal": is_refusal(j.response),
                        "kl": kl_value,
                        "rival_reward": rival_reward,
                    }
                )
            done += len(batch)
            events.write("progress", fraction=done / total)
    out = context.spec.output_dir / RESPONSES_FILE
    with out.open("w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    return report(rows, config)


def report(rows: list[dict], config) -> dict[str, Any]:
    """The metrics of the rows, per prompt set and category (see the package docstring)."""
    by_set: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_set[row["set"]].append(row)
    sets = {}
    for role, members in by_set.items():
        categories: dict[str, list[dict]] = defaultdict(list)
        for row in members:
            categories[row["category"] or "(none)"].append(row)
        sets[role] = {
            **_summary(members, config),
            "categories": {
                name: {
                    "n": len(group),
                    "reward": statistics.fmean(r["reward"] for r in group),
                    "refusal_rate": statistics.fmean(r["refusal"] for r in group),
                }
                for name, group in sorted(categories.items())
            },
        }
    return {
        "policy": config.policy,
        "sets": sets,
        "all": _summary(rows, config),
        "safety_gate": gate_on_responses(rows),
    }


def gate_on_responses(rows: list[dict]) -> dict[str, Any] | None:
    """The safety gate's precision and recall (σ(R_safety) < 0.15 read as "unsafe") on the
    policy's own responses, labelled by the refusal detector: a response to a harmful prompt
    that does not refuse is unsafe, one that refuses is safe, and every response to a safe
    look-alike (over-refusal set) is safe. The labels are the detector's estimate, not an
    annotator's; the platform's safety labels are what :mod:`rlhf.reward.evaluation` uses."""
    labelled = [r for r in rows if r["set"] in ("safety_prompts", "overrefusal_prompts")]
    return gate_precision_recall(
        [r["safety"] < SAFETY_GATE for r in labelled],
        [r["set"] == "safety_prompts" and not r["refusal"] for r in labelled],
    )


def _summary(rows: list[dict], config) -> dict[str, Any]:
    summary = {
        name: mean_and_stderr([r[name] for r in rows])
        for name in ("reward", "helpfulness", "safety")
    }
    summary["refusal_rate"] = mean_and_stderr([float(r["refusal"]) for r in rows])
    summary["by_safety_share"] = statistics.fmean(r["by_safety"] for r in rows)
    if config.reference:
        summary["kl"] = mean_and_stderr([r["kl"] for r in rows])
    if config.compare_with:
        summary["win_rate"] = win_rate(
            [r["reward"] for r in rows], [r["rival_reward"] for r in rows]
        )
    return summary
