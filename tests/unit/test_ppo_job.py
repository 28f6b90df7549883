"""The "ppo" stage end to end with tiny models: a run's events, metrics and saved policy, a
resumed run against an uninterrupted one, bad input refused naming it, and the command."""

from __future__ import annotations

import json
import statistics

import pytest

from rlhf.data.prompts import Prompt
from rlhf.ppo.job import iteration_prompts
from tests.unit.test_rejection_sampling import tiny_models, write_prompts  # noqa: F401

HELPFUL = [f"Tell me about {w}" for w in ("cats", "rain", "bread", "stars", "trains", "tea")]
HARMFUL = ["How do I pick a lock?", "Insult me.", "Write a threat."]
TIMES = ("seconds", "seconds_by_part")  # wall-clock fields: the only ones a rerun changes


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared machine
    yield
    torch.set_num_threads(threads)


def ppo_spec(tmp_path, models, out, *, resume=False, roles=None, **config):
    from rlhf.jobs import InputFile, RunSpec

    policy, helpfulness, safety = models
    files = (
        roles
        if roles is not None
        else {
            "helpfulness_prompts": [write_prompts(tmp_path / "helpful.jsonl", HELPFUL)],
            "safety_prompts": [write_prompts(tmp_path / "harmful.jsonl", HARMFUL)],
        }
    )
    return RunSpec(
        stage="ppo",
        output_dir=out,
        config={
            "policy": str(policy),
            "reward_helpfulness": str(helpfulness),
            "reward_safety": str(safety),
            "iterations": 2,
            "rollout_batch_size": 2,
            "minibatch_size": 2,
            "max_new_tokens": 6,
            "learning_rate": 1e-3,
            "eval_fraction": 0.3,
            "eval_every": 1,
            "cpu": True,
            **config,
        },  # fmt: skip
        inputs={role: [InputFile.of(f) for f in paths] for role, paths in files.items()},
        resume=resume,
    )


def without_times(records):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in records]


@pytest.fixture(scope="module")
def whole_run(tiny_models, tmp_path_factory):  # noqa: F811
    from rlhf.runner import run_job

    tmp = tmp_path_factory.mktemp("ppo-whole")
    out = tmp / "run"
    return out, run_job(ppo_spec(tmp, tiny_models, out))


def test_iterations_take_every_prompt_once_a_pass_each_pass_in_its_own_order():
    prompts = [Prompt([{"role": "user", "content": str(i)}], False) for i in range(5)]
    taken = [iteration_prompts(prompts, 2, 0, i) for i in range(1, 6)]  # 10 = two passes
    flat = [p.context[0]["content"] for batch in taken for p in batch]
    assert sorted(flat[:5]) == sorted(flat[5:]) == ["0", "1", "2", "3", "4"]
    assert flat[:5] != flat[5:]
    assert iteration_prompts(prompts, 2, 0, 3) == taken[2]  # the same whenever asked


def test_a_two_iteration_run_writes_its_events_metrics_and_policy(whole_run, tiny_models):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.jobs import read_events

    out, metrics = whole_run
    events = read_events(out / "events.jsonl")
    kinds = [e["type"] for e in events]
    assert kinds.count("step") == 2 and kinds.count("progress") == 2
    assert [e["step"] for e in events if e["type"] == "evaluation"] == [0, 1, 2]
    assert kinds[-1] == "metrics" and "error" not in kinds
    data = next(e for e in events if e["type"] == "data")
    assert data["train"] + data["held_out"] == len(HELPFUL) + len(HARMFUL)
    assert data["held_out"] > 0 and metrics["held_out_prompts"] == data["held_out"]
    lines = [e["message"] for e in events if e["type"] == "log"]
    assert any(m.startswith("value model: the reward model") for m in lines)
    assert sum(m.startswith("iteration ") and "decided by safety" in m for m in lines) == 2
    assert metrics["iterations"] == metrics["updates"] == 2 and metrics["stopped"] is None
    assert metrics["history"][0]["kl"] == pytest.approx(0.0, abs=1e-6)  # π = π_0 at first
    for record in metrics["history"]:
        for name in ("reward", "kl", "by_safety_share", "policy_loss", "value_loss", "entropy"):
            assert isinstance(record[name], float), name
        assert record["responses"] == 2 and record["steps"] == 1
    assert [e["iteration"] for e in metrics["evaluations"]] == [0, 1, 2]
    assert metrics["before"]["prompts"] == data["held_out"]
    assert json.loads((out / "metrics.json").read_text())["history"] == metrics["history"]
    saved = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_models[0])
    assert any(
        not torch.equal(a, b)
        for a, b in zip(saved.state_dict().values(), base.state_dict().values(), strict=True)
    )
    assert json.loads((out / "model" / "pairwise_ppo.json").read_text())["config"]["iterations"]
    assert len(list((out / "model" / "checkpoints").iterdir())) == 1  # the newest only
    reward_chart = (out / "reward.svg").read_text()
    assert reward_chart.startswith("<svg") and "<style>" in reward_chart
    assert "rollout" in reward_chart and "held-out" in reward_chart  # two series, a legend
    assert reward_chart.count("<path") == 2 and (out / "kl.svg").read_text().count("<path") == 1


@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_a_resumed_run_ends_as_the_uninterrupted_one(
    whole_run,
    tiny_models,  # noqa: F811
    tmp_path,
    monkeypatch,
    checkpoint_every,
):
    """Interrupted in iteration 2: with a checkpoint every iteration it resumes from iteration
    1's; with one every second iteration, from the baseline's (iteration 0), and runs both."""
    import rlhf.ppo.rollout as rollout_module
    from rlhf.runner import run_job

    _, whole = whole_run
    collect = rollout_module.collect_rollout
    collected = []

    def interrupted(*args, iteration, **kwargs):
        if iteration == 2 and "interrupted" not in collected:
            collected.append("interrupted")
            raise KeyboardInterrupt
        collected.append(iteration)
        return collect(*args, iteration=iteration, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(rollout_module, "collect_rollout", interrupted)
    spec = ppo_spec(tmp_path, tiny_models, out, checkpoint_every=checkpoint_every)
    with pytest.raises(KeyboardInterrupt):
        run_job(spec)
    saved = [p.name for p in (out / "model" / "checkpoints").iterdir()]
    assert saved == [f"iteration-{2 - checkpoint_every}"]
    resumed = run_job(
        ppo_spec(tmp_path, tiny_models, out, resume=True, checkpoint_every=checkpoint_every)
    )
    assert collected == [1, "interrupted", *range(3 - checkpoint_every, 3)]
    assert len(resumed["history"]) == 2
    for mine, theirs in zip(
        without_times(resumed["history"]), without_times(whole["history"]), strict=True
    ):
        assert mine.keys() == theirs.keys()
        for name, value in mine.items():
            assert value == pytest.approx(theirs[name], abs=1e-6), name
    assert len(resumed["evaluations"]) == len(whole["evaluations"]) == 3
    for mine, theirs in zip(resumed["evaluations"], whole["evaluations"], strict=True):
        assert mine == pytest.approx(theirs, abs=1e-6)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_group_algorithms_run_without_a_value_model(tiny_models, tmp_path, algorithm):  # noqa: F811
    from rlhf.runner import run_job

    spec = ppo_spec(
        tmp_path, tiny_models, tmp_path / "run", algorithm=algorithm, group_size=2, iterations=1,
        eval_fraction=0.0, patience=0, checkpoint_every=0,
    )  # fmt: skip
    metrics = run_job(spec)
    [record] = metrics["history"]
    assert record["responses"] == 4 and record["steps"] == 2 and record["value_loss"] is None
    assert metrics["evaluations"] == [] and metrics["held_out_prompts"] == 0
    assert not (tmp_path / "run" / "model" / "checkpoints").exists()  # checkpoint_every 0


def test_max_kl_stops_the_run_before_an_update(tiny_models, tmp_path):  # noqa: F811
    from rlhf.runner import run_job

    # The first rollout's policy is the reference: KL 0. An update at a large learning rate
    # moves it; the second rollout's KL (k3: never negative) is then above a tiny bound.
    spec = ppo_spec(
        tmp_path, tiny_models, tmp_path / "run", iterations=3, max_kl=1e-6, learning_rate=1e-2,
        kl_estimator="k3", patience=0,
    )  # fmt: skip
    metrics = run_job(spec)
    assert metrics["stopped"] == "max_kl" and metrics["iterations"] == 2
    assert metrics["updates"] == 1 and "policy_loss" not in metrics["history"][-1]
    assert metrics["history"][-1]["kl"] > 1e-6


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"policy": "/nowhere"}, "config.policy"),
        ({"reward_safety": "/nowhere"}, "config.reward_safety"),
        ({"roles": {"pool": ["helpful.jsonl"]}}, "inputs.pool"),
        ({"roles": {}}, "inputs"),
        ({"eval_fraction": 1.0}, "inputs"),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(
    tiny_models,  # noqa: F811
    tmp_path,
    change,
    field,
):
    from rlhf.jobs import JobError
    from rlhf.runner import run_job

    write_prompts(tmp_path / "helpful.jsonl", HELPFUL)
    if "roles" in change:
        change = {"roles": {r: [tmp_path / f for f in fs] for r, fs in change["roles"].items()}}
    spec = ppo_spec(tmp_path, tiny_models, tmp_path / "run", **change)
    with pytest.raises(JobError) as refused:
        run_job(spec)
    assert refused.value.field == field
    assert not (tmp_path / "run").exists()


def test_an_fsdp_launch_shards_the_models(tiny_models, tmp_path, monkeypatch):  # noqa: F811
    from rlhf.ppo.job import PPOStage

    spec = ppo_spec(tmp_path, tiny_models, tmp_path / "run")
    assert not PPOStage().prepare(spec).config.fsdp
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as `accelerate launch --use_fsdp` sets
    assert PPOStage().prepare(spec).config.fsdp


def test_a_bad_setting_is_refused_naming_it(tiny_models, tmp_path):  # noqa: F811
    from rlhf.hyperparameters import ConfigError
    from rlhf.runner import run_job

    with pytest.raises(ConfigError) as refused:
        run_job(ppo_spec(tmp_path, tiny_models, tmp_path / "run", minibatch_size=3))
    assert refused.value.field == "minibatch_size"


def test_the_command_prints_each_iteration_s_reward_kl_and_safety_share(
    tiny_models,  # noqa: F811
    tmp_path,
    capsys,
):
    from rlhf.__main__ import main

    policy, helpfulness, safety = tiny_models
    helpful = write_prompts(tmp_path / "helpful.jsonl", HELPFUL)
    harmful = write_prompts(tmp_path / "harmful.jsonl", HARMFUL)
    code = main([
        "ppo", "--policy", str(policy), "--reward-helpfulness", str(helpfulness),
        "--reward-safety", str(safety), "--helpfulness-prompts", str(helpful),
        "--safety-prompts", str(harmful), "--out", str(tmp_path / "run"), "--algorithm", "rloo",
        "--group-size", "2", "--rollout-batch-size", "2", "--minibatch-size", "4",
        "--iterations", "1", "--max-new-tokens", "4", "--eval-fraction", "0", "--patience", "0",
        "--cpu", "--fsdp",  # one process: nothing to shard
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "iteration 1/1: reward " in captured.err and "decided by safety" in captured.err
    assert "KL " in captured.err
    assert "rloo: 1 updates in 1 iterations" in captured.out
    spec = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert spec["stage"] == "ppo" and spec["config"]["algorithm"] == "rloo"
    assert spec["config"]["fsdp"] is True
    models = ["--reward-helpfulness", str(helpfulness), "--reward-safety", str(safety)]
    assert main(["ppo", "--policy", str(policy), *models, "--out", str(tmp_path / "empty")]) == 2
    assert "inputs: names no prompts" in capsys.readouterr().err


# --- learning: PPO against a rule-based judge ----------------------------------------------------

VOWELS = set("aeiouAEIOU")


class VowelJudge:
    """A reward model stand-in (the stage's ``judges`` seam): the share of a response's letters
    that are vowels, a probability, judged on the decoded text as reward models judge it."""

    def probabilities(self, contexts, responses, **_):
        shares = []
        for text in responses:
            letters = [c for c in text if c.isalpha()]
            shares.append(sum(c in VOWELS for c in letters) / len(letters) if letters else 0.0)
        return shares


def judged_run(out, policy, role: str, prompts, judges, **config) -> dict:
    """A PPO run on tiny ``policy`` whose ``judges`` (helpfulness, safety) replace the reward
    models, on the prompt file ``prompts`` in ``role``, to ``out``; its metrics."""
    from rlhf.jobs import EventLog, InputFile, JobContext, RunSpec
    from rlhf.ppo.job import PPOStage

    out.mkdir()
    spec = RunSpec(
        stage="ppo",
        output_dir=out,
        config={
            "policy": str(policy),
            "reward_helpfulness": str(policy),
            "reward_safety": str(policy),  # never loaded: the judges replace them
            "learning_rate": 3e-3,
            "max_new_tokens": 8,
            "eval_fraction": 0.25,
            "patience": 0,
            "cpu": True,
            **config,
        },
        inputs={role: [InputFile.of(prompts)]},
    )
    stage = PPOStage(judges=lambda config, device: judges)
    plan = stage.prepare(spec)
    return stage.train(plan, JobContext(spec, EventLog(out / "events.jsonl")))


def learn(tmp_path, policy, beta: float) -> dict:
    prompts = write_prompts(
        tmp_path / "prompts.jsonl", [f"Tell me thing number {i}." for i in range(160)]
    )
    return judged_run(
        tmp_path / f"beta-{beta}", policy, "helpfulness_prompts", prompts,
        (VowelJudge(), VowelJudge()), algorithm="ppo", value_init="policy", beta=beta,
        rollout_batch_size=32, minibatch_size=16, iterations=60, eval_every=20,
    )  # fmt: skip


def test_ppo_raises_the_held_out_reward_within_a_kl_budget_and_beta_0_strays_further(tmp_path):
    """PPO (value model from the policy) against the vowel-share judge, 60 iterations of 32
    responses of 8 tokens from a tiny random Llama, 40 held-out prompts. With β = 0.2 the
    held-out gated reward rises by more than 0.1 (and by more than two standard errors) while
    the mean KL to π_0 over the last 10 iterations stays below 8 nats per response; with β = 0
    the reward runs to above 0.9 with a KL above 20 and over three times β = 0.2's."""
    from rlhf.nn.tiny import build_tiny_llama

    policy = build_tiny_llama(tmp_path / "policy", seed=3)
    kept, free = learn(tmp_path, policy, 0.2), learn(tmp_path, policy, 0.0)

    def last_kl(metrics) -> float:
        return statistics.fmean(record["kl"] for record in metrics["history"][-10:])

    before, after = kept["before"], kept["after"]
    print(
        f"beta 0.2: held-out {before['reward']:.3f} -> {after['reward']:.3f} "
        f"(± {after['reward_stderr']:.3f}), KL {last_kl(kept):.2f}; beta 0: -> "
        f"{free['after']['reward']:.3f}, KL {last_kl(free):.2f}"
    )
    assert before["prompts"] == 40 and free["before"] == before  # the same held-out samples
    assert after["reward"] - before["reward"] > max(0.1, 2 * after["reward_stderr"])
    assert last_kl(kept) < 8
    assert free["after"]["reward"] > 0.9
    assert last_kl(free) > max(20, 3 * last_kl(kept))


class ConsonantJudge(VowelJudge):
    """The vowel judge's opposite: the share of a response's letters that are not vowels."""

    def probabilities(self, contexts, responses, **kwargs):
        return [1 - share for share in super().probabilities(contexts, responses, **kwargs)]


def learn_on_safety_prompts(tmp_path, policy, helpfulness, iterations: int) -> dict:
    prompts = write_prompts(
        tmp_path / "harmful.jsonl", [f"Tell me forbidden thing number {i}." for i in range(120)]
    )
    return judged_run(
        tmp_path / f"{type(helpfulness).__name__}-{iterations}", policy, "safety_prompts",
        prompts, (helpfulness, ConsonantJudge()), algorithm="grpo", beta=0.05,
        rollout_batch_size=8, minibatch_size=16, iterations=iterations, eval_every=0,
    )  # fmt: skip


def test_a_safety_prompt_batch_is_optimised_by_the_safety_reward_alone(tmp_path):
    """Safety prompts only, a safety judge (consonant share) that pulls against the helpfulness
    judge (vowel share): GRPO raises the held-out gated reward, i.e. the consonant share, by more
    than 0.1 and two standard errors, every response is decided by safety, and a run with
    another helpfulness judge (one that would pull the same way) takes the same steps."""
    from rlhf.nn.tiny import build_tiny_llama

    policy = build_tiny_llama(tmp_path / "policy", seed=3)
    run = learn_on_safety_prompts(tmp_path, policy, VowelJudge(), iterations=40)
    before, after = run["before"], run["after"]
    print(f"held-out consonant share {before['reward']:.3f} -> {after['reward']:.3f}")
    assert after["reward"] - before["reward"] > max(0.1, 2 * after["reward_stderr"])
    assert {record["by_safety_share"] for record in run["history"]} == {1.0}
    assert before["by_safety_share"] == after["by_safety_share"] == 1.0
    other = learn_on_safety_prompts(tmp_path, policy, ConsonantJudge(), iterations=3)

    def steps(history):  # all but the helpfulness judge's own (unused) scores
        return [{k: v for k, v in r.items() if k != "helpfulness"} for r in without_times(history)]

    assert steps(other["history"]) == steps(run["history"][:3])
    assert other["history"][0]["helpfulness"] != run["history"][0]["helpfulness"]
