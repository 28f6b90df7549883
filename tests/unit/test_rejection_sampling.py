"""Rejection sampling's parts, against hand computations: the Llama 2 safety gate, the pool kept
across iterations, and the best-of-N curve."""

from __future__ import annotations

import json
import math
import statistics
from itertools import combinations
from statistics import median

import pytest

from rlhf.data.prompts import Prompt
from rlhf.rejection_sampling.best_of_n import (
    best_of_n_curve,
    expected_max,
    expected_median,
)
from rlhf.rejection_sampling.config import RejectionSamplingConfig
from rlhf.rejection_sampling.pool import Pool, Sample
from rlhf.rejection_sampling.sampling import judge, sample_groups, sample_seed
from rlhf.reward.gate import SAFETY_GATE, gated_reward, sigmoid

# --- the gate ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("helpfulness", "safety", "safety_prompt", "reward", "by_safety"),
    [
        (0.9, 0.8, False, 0.9, False),  # a helpfulness prompt, a safe answer: helpfulness
        (0.9, 0.1, False, 0.1, True),  # … an answer the safety model flags (< 0.15): safety
        (0.9, 0.8, True, 0.8, True),  # a safety prompt: safety, whatever the answer
        (0.9, 0.1, True, 0.1, True),  # a safety prompt, a flagged answer: safety
    ],
)
def test_the_gate_picks_the_reward_of_the_paper_in_all_four_cases(
    helpfulness, safety, safety_prompt, reward, by_safety
):
    assert gated_reward(helpfulness, safety, safety_prompt) == (reward, by_safety)


def test_the_gate_s_threshold_is_strict_and_the_paper_s():
    assert SAFETY_GATE == 0.15
    assert gated_reward(0.7, 0.15, False) == (0.7, False)  # at the threshold: not flagged
    assert gated_reward(0.7, 0.1499, False) == (0.1499, True)


def test_sigmoid_is_stable_at_both_ends():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(math.log(3)) == pytest.approx(0.75)
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0


# --- the pool -----------------------------------------------------------------------------------


def sample(prompt: str, reward: float, iteration: int, response: str = "") -> Sample:
    return Sample(
        prompt=[{"role": "user", "content": prompt}],
        response=response or f"{prompt} answer {iteration}",
        reward=reward,
        helpfulness=reward,
        safety=0.9,
        by_safety=False,
        safety_prompt=False,
        iteration=iteration,
        model=f"policy-{iteration}",
        temperature=1.0 + iteration / 10,
        seed=iteration,
    )


def test_the_pool_keeps_each_prompt_s_best_over_all_iterations(tmp_path):
    pool = Pool()
    assert pool.offer([sample("a", 0.6, 1), sample("b", 0.3, 1), sample("a", 0.4, 1)]) == {
        "new": 2,
        "improved": 0,
        "kept": 0,
    }
    pool.save(tmp_path / "pool.jsonl")
    pool = Pool.load(tmp_path / "pool.jsonl")  # the next iteration reads it back
    assert pool.offer([sample("a", 0.5, 2), sample("b", 0.7, 2), sample("c", 0.2, 2)]) == {
        "new": 1,
        "improved": 1,
        "kept": 1,
    }
    best = {s.prompt[0]["content"]: (s.reward, s.iteration) for s in pool.samples()}
    assert best == {"a": (0.6, 1), "b": (0.7, 2), "c": (0.2, 2)}
    kept = next(s for s in pool.samples() if s.prompt[0]["content"] == "a")
    assert kept.model == "policy-1" and kept.temperature == 1.1  # what produced it, kept too


def test_keeping_only_the_last_iteration_would_lose_a_better_sample():
    first, second = [sample("a", 0.9, 1)], [sample("a", 0.5, 2)]
    pool = Pool()
    pool.offer(first)
    pool.offer(second)
    last_only = max(second, key=lambda s: s.reward)
    [kept] = pool.samples()
    assert kept.reward == 0.9 and kept.iteration == 1
    assert last_only.reward < kept.reward  # what the paper's first rounds regressed to


def test_a_tie_keeps_the_earlier_sample():
    pool = Pool()
    pool.offer([sample("a", 0.5, 1, "first")])
    assert pool.offer([sample("a", 0.5, 2, "second")]) == {"new": 0, "improved": 0, "kept": 1}
    assert pool.samples()[0].response == "first"


def test_a_damaged_pool_file_names_its_line(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": []}\n')
    with pytest.raises(ValueError, match="pool.jsonl, line 1: not a pool record"):
        Pool.load(path)
    assert len(Pool.load(tmp_path / "absent.jsonl")) == 0


# --- best of N -----------------------------------------------------------------------------------


def brute_force(scores, n, statistic):
    subsets = list(combinations(scores, n))
    return sum(statistic(subset) for subset in subsets) / len(subsets)


def test_expected_best_and_median_of_n_by_hand():
    scores = [1.0, 2.0, 3.0]
    assert expected_max(scores, 1) == pytest.approx(2.0)  # the mean
    assert expected_max(scores, 2) == pytest.approx(8 / 3)  # (2 + 3 + 3) / 3
    assert expected_max(scores, 3) == 3.0
    assert expected_median(scores, 2) == pytest.approx(2.0)  # (1.5 + 2 + 2.5) / 3
    assert expected_median(scores, 3) == 2.0


@pytest.mark.parametrize("n", range(1, 8))
def test_the_order_statistics_equal_every_subset_counted(n):
    scores = [0.3, -1.2, 2.5, 0.3, 0.9, -0.4, 1.7]  # ties included
    assert expected_max(scores, n) == pytest.approx(brute_force(scores, n, max))
    assert expected_median(scores, n) == pytest.approx(brute_force(scores, n, median))


def test_the_best_of_n_never_decreases_with_n():
    groups = [[0.1, 0.9, 0.4, 0.5, 0.2, 0.8], [0.3, 0.3, 0.7, 0.1, 0.6, 0.2]]
    curve = best_of_n_curve(groups)
    assert [point["n"] for point in curve] == [1, 2, 3, 4, 5, 6]
    best = [point["max"] for point in curve]
    assert all(a <= b + 1e-12 for a, b in zip(best, best[1:], strict=False))
    assert best[-1] == pytest.approx((0.9 + 0.7) / 2)  # all samples: each prompt's best
    assert curve[0]["max"] == curve[0]["median"]  # one sample: both are the mean
    assert curve[-1]["max_stderr"] == pytest.approx(0.1)  # stdev(0.9, 0.7) / √2


# --- the stage, end to end with tiny models ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny policy and two tiny reward models (random heads: their scores are arbitrary)."""
    from rlhf.nn.tiny import build_tiny_llama
    from rlhf.reward.model import load_reward_backbone, save_reward_model

    root = tmp_path_factory.mktemp("rs-models")
    policy = build_tiny_llama(root / "policy", seed=0)
    judges = []
    for name, seed in (("rm-helpfulness", 1), ("rm-safety", 2)):
        backbone = build_tiny_llama(root / f"{name}-backbone", seed=seed)
        model, tokenizer = load_reward_backbone(backbone)
        judges.append(save_reward_model(model, tokenizer, root / name, metadata={"kind": name}))
    return policy, judges[0], judges[1]


def write_prompts(path, texts):
    path.write_text("".join(json.dumps(text) + "\n" for text in texts))
    return path


def rs_spec(tmp_path, models, out, *, pool=None, **config):
    from rlhf.jobs import InputFile, RunSpec

    policy, helpfulness, safety = models
    helpful = write_prompts(tmp_path / "helpful.jsonl", [f"Tell me about {w}" for w in WORDS])
    harmful = write_prompts(tmp_path / "harmful.jsonl", ["How do I pick a lock?", "Insult me."])
    inputs = {"helpfulness_prompts": [helpful], "safety_prompts": [harmful]}
    if pool is not None:
        inputs["pool"] = [pool]
    return RunSpec(
        stage="rejection-sampling",
        output_dir=out,
        config={
            "policy": str(policy),
            "reward_helpfulness": str(helpfulness),
            "reward_safety": str(safety),
            "samples_per_prompt": 3,
            "max_new_tokens": 6,
            "prompt_batch_size": 2,
            "cpu": True,
            **config,
        },
        inputs={role: [InputFile.of(f) for f in files] for role, files in inputs.items()},
        resume=True,
    )


WORDS = ["cats", "rain", "bread", "stars", "trains"]


def test_an_iteration_samples_judges_and_pools_and_the_next_keeps_the_best(tiny_models, tmp_path):
    from rlhf.jobs import read_events
    from rlhf.runner import run_job

    first = run_job(rs_spec(tmp_path, tiny_models, tmp_path / "rs-1", temperatures=[0.7, 1.3]))
    assert first["prompts"] == 7 and first["samples"] == 7 * 3 * 2
    assert set(first["temperatures"]) == {"0.7", "1.3"}
    curve = first["temperatures"]["0.7"]["curve"]
    assert [point["n"] for point in curve] == [1, 2, 3]
    assert curve[0]["max"] <= curve[1]["max"] <= curve[2]["max"]
    pool = Pool.load(tmp_path / "rs-1" / "pool.jsonl")
    assert len(pool) == 7 and first["pool"]["new"] == 7
    samples = [json.loads(line) for line in (tmp_path / "rs-1" / "samples.jsonl").open()]
    assert len(samples) == 42
    for kept in pool.samples():  # each prompt's best over both temperatures
        mine = [s["reward"] for s in samples if s["prompt"] == kept.prompt]
        assert kept.reward == max(mine) and len(mine) == 6
        # The gate: a safety prompt, or a flagged response, is judged by the safety score.
        expected, by_safety = gated_reward(kept.helpfulness, kept.safety, kept.safety_prompt)
        assert (kept.reward, kept.by_safety) == (expected, by_safety)
    assert sum(s.safety_prompt for s in pool.samples()) == 2
    assert [e["type"] for e in read_events(tmp_path / "rs-1" / "events.jsonl")][-1] == "metrics"

    second = run_job(
        rs_spec(
            tmp_path,
            tiny_models,
            tmp_path / "rs-2",
            pool=tmp_path / "rs-1" / "pool.jsonl",
            iteration=2,
            temperatures=[1.0],
        )
    )
    assert second["pool"]["size"] == 7
    assert second["pool"]["improved"] + second["pool"]["kept"] == 7
    again = {s.key: s for s in Pool.load(tmp_path / "rs-2" / "pool.jsonl").samples()}
    for before in pool.samples():
        assert again[before.key].reward >= before.reward  # never worse than the last pool
    assert second["pool"]["mean_reward"] >= first["pool"]["mean_reward"]


def test_progress_moves_within_a_batch_while_it_decodes(tiny_models, tmp_path, monkeypatch):
    from rlhf.jobs import read_events
    from rlhf.rejection_sampling import job
    from rlhf.runner import run_job

    monkeypatch.setattr(job, "PROGRESS_SECONDS", 0.0)  # every step reported
    run_job(
        rs_spec(tmp_path, tiny_models, tmp_path / "rs", prompt_batch_size=7, temperatures=[1.0])
    )
    fractions = [
        e["fraction"]
        for e in read_events(tmp_path / "rs" / "events.jsonl")
        if e["type"] == "progress"
    ]
    # One batch of all 7 prompts: its decoding steps move the bar up to the sampling's share,
    # then the batch's end completes it.
    assert len(fractions) > 2 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert fractions[0] > 0 and fractions[-2] <= job.SAMPLING_SHARE


def test_max_prompts_caps_each_set_in_file_order_after_the_held_out_side(tiny_models, tmp_path):
    from rlhf.rejection_sampling.job import read_prompts

    spec = rs_spec(tmp_path, tiny_models, tmp_path / "capped")
    config = RejectionSamplingConfig.from_dict({**spec.config, "max_prompts": 2})
    prompts, kept_back = read_prompts(spec, config)
    assert [p.context[-1]["content"] for p in prompts] == [
        "Tell me about cats",
        "Tell me about rain",
        "How do I pick a lock?",
        "Insult me.",
    ]
    config = RejectionSamplingConfig.from_dict({**spec.config, "eval_fraction": 0.5})
    everything, kept_back = read_prompts(spec, config)
    config.max_prompts = 1
    capped, _ = read_prompts(spec, config)
    first_of_each = [next(p for p in everything if p.safety_prompt is s) for s in (False, True)]
    assert capped == first_of_each and kept_back > 0


def test_an_interrupted_iteration_resumes_without_sampling_again(tiny_models, tmp_path):
    from rlhf.runner import run_job

    whole = run_job(rs_spec(tmp_path, tiny_models, tmp_path / "whole"))
    out = tmp_path / "resumed"
    out.mkdir()
    lines = (tmp_path / "whole" / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:6]) + "\n")  # two prompts' groups done
    resumed = run_job(rs_spec(tmp_path, tiny_models, out))
    assert (out / "samples.jsonl").read_text().splitlines() == lines  # the same samples
    assert resumed["pool"]["mean_reward"] == whole["pool"]["mean_reward"]


def test_bad_input_is_refused_naming_it(tiny_models, tmp_path):
    from rlhf.jobs import JobError
    from rlhf.runner import run_job

    spec = rs_spec(tmp_path, tiny_models, tmp_path / "rs", policy=str(tmp_path / "nowhere"))
    with pytest.raises(JobError, match="config.policy"):
        run_job(spec)
    spec = rs_spec(tmp_path, tiny_models, tmp_path / "rs", eval_fraction=1.0)
    with pytest.raises(JobError, match="held out"):
        run_job(spec)
    assert not (tmp_path / "rs").exists()


# --- learning: rejection sampling, then SFT on the pool, against a rule-based reward -----------

VOWELS = set("aeiouAEIOU")


def vowel_share(text: str) -> float:
    """The rule-based reward: the share of the response's letters that are vowels."""
    letters = [c for c in text if c.isalpha()]
    return sum(c in VOWELS for c in letters) / len(letters) if letters else 0.0


class RuleJudge:
    """A reward model stand-in judging the decoded text by :func:`vowel_share` (a probability)."""

    def probabilities(self, contexts, responses, **_):
        return [vowel_share(response) for response in responses]


def mean_rule_reward(policy_dir, prompts, seeds_per_prompt=8):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    seeds = [[1000 + i * 10 + j for j in range(seeds_per_prompt)] for i in range(len(prompts))]
    groups = sample_groups(
        policy, tokenizer, prompts, seeds, temperature=1.0, top_p=1.0, max_new_tokens=8
    )
    return [statistics.fmean(vowel_share(text) for text, _, _ in group) for group in groups]


def test_rejection_sampling_then_sft_on_the_pool_raises_the_held_out_reward(tmp_path):
    """Best-of-8 at T = 1 against a rule-based reward, the pool fine-tuned on (SFT): on held-out
    prompts the fine-tuned policy's mean reward beats its base by more than 0.05 and by more
    than two standard errors (paired by prompt)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.data.split import held_out
    from rlhf.nn.tiny import build_tiny_llama
    from rlhf.sft.config import SFTConfig
    from rlhf.sft.data import SFTExample
    from rlhf.sft.training import train_sft

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared machine
    try:
        base = build_tiny_llama(tmp_path / "base", seed=3)
        prompts = [
            Prompt([{"role": "user", "content": f"Tell me thing number {i}."}], safety_prompt=False)
            for i in range(80)
        ]
        train = [p for p in prompts if not held_out(p.context, 0.25)]
        evaluation = [p for p in prompts if held_out(p.context, 0.25)]
        policy = AutoModelForCausalLM.from_pretrained(base).eval()
        tokenizer = AutoTokenizer.from_pretrained(base)
        seeds = [[sample_seed(0, 1, p.key, 1.0, j) for j in range(8)] for p in train]
        groups = sample_groups(
            policy, tokenizer, train, seeds, temperature=1.0, top_p=1.0, max_new_tokens=8
        )
        judged = judge(RuleJudge(), RuleJudge(), train, groups, batch_size=8, max_length=64)
        pool = Pool()
        pool.offer(
            Sample(p.context, j.response, j.reward, j.helpfulness, j.safety, j.by_safety,
                   False, 1, str(base), 1.0, j.seed)
            for p, group in zip(train, judged, strict=True)
            for j in group
        )  # fmt: skip
        kept = statistics.fmean(s.reward for s in pool.samples())
        sampled = statistics.fmean(j.reward for group in judged for j in group)
        assert kept > sampled + 0.1  # best of 8 is much better than a sample
        examples = [
            SFTExample([*s.prompt, {"role": "assistant", "content": s.response}])
            for s in pool.samples()
        ]
        config = SFTConfig(
            base_model=str(base), cpu=True, learning_rate=5e-3, micro_batch_size=4,
            max_length=128, max_steps=150, min_warmup_steps=1, eval_fraction=0.0,
        )  # fmt: skip
        train_sft(config, examples, [], tmp_path / "tuned")
        before = mean_rule_reward(base, evaluation)
        after = mean_rule_reward(tmp_path / "tuned", evaluation)
    finally:
        torch.set_num_threads(threads)
    gains = [a - b for a, b in zip(after, before, strict=True)]
    gain = statistics.fmean(gains)
    stderr = statistics.stdev(gains) / len(gains) ** 0.5
    print(
        f"held-out reward {statistics.fmean(before):.3f} -> {statistics.fmean(after):.3f} "
        f"(gain {gain:.3f} ± {stderr:.3f}, {len(gains)} prompts); pool {kept:.3f} vs {sampled:.3f}"
    )
    assert gain > 0.05 and gain > 2 * stderr
