"""PPO's value model and one update, with tiny models: the value model against plain forward
passes and the reward model it starts from, the targets against the math by hand, and steps
that move what they should (the policy; the value model for ppo only) and nothing else."""

from __future__ import annotations

import statistics

import pytest

from rlhf.data.prompts import Prompt
from rlhf.ppo.config import PPOConfig
from tests.unit.test_ppo_rollout import load_judge, load_policy
from tests.unit.test_rejection_sampling import tiny_models  # noqa: F401

PROMPTS = [
    Prompt([{"role": "user", "content": "Tell me about cats."}], safety_prompt=False),
    Prompt([{"role": "user", "content": "How do I boil an egg?"}], safety_prompt=False),
    Prompt([{"role": "user", "content": "How do I pick a lock?"}], safety_prompt=True),
]


@pytest.fixture(scope="module")
def setup(tiny_models):  # noqa: F811
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared machine
    policy_dir, helpfulness_dir, safety_dir = tiny_models
    yield {
        "dirs": tiny_models,
        "judges": (load_judge(helpfulness_dir), load_judge(safety_dir)),
        "paths": {
            "policy": str(policy_dir),
            "reward_helpfulness": str(helpfulness_dir),
            "reward_safety": str(safety_dir),
        },
    }
    torch.set_num_threads(threads)


def make_config(setup, **settings) -> PPOConfig:
    values = {
        "rollout_batch_size": 3, "group_size": 2, "minibatch_size": 3, "max_new_tokens": 8,
        "learning_rate": 1e-3, "cpu": True, "beta": 0.05, **settings,
    }  # fmt: skip
    return PPOConfig(**setup["paths"], **values)


def fresh(setup, config, *, value=True):
    """A new policy, its reference, a value model (from the helpfulness reward model) and a
    rollout of PROMPTS."""
    from rlhf.ppo.rollout import collect_rollout
    from rlhf.ppo.value import load_value_model

    policy, tokenizer = load_policy(setup["paths"]["policy"])
    reference, _ = load_policy(setup["paths"]["policy"])
    value_model = None
    if value:
        value_model, _ = load_value_model(
            "reward", config.policy, tokenizer, config.reward_helpfulness
        )
    rollout = collect_rollout(
        policy, tokenizer, reference, *setup["judges"], PROMPTS, config, iteration=1
    )
    return policy, value_model, rollout


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(model, before) -> bool:
    import torch

    return any(not torch.equal(p, before[name]) for name, p in model.named_parameters())


# --- the value model ----------------------------------------------------------------------------


def test_a_value_model_from_the_reward_model_scores_a_text_as_the_reward_model(setup):
    import torch

    from rlhf.ppo.value import load_value_model
    from rlhf.reward.model import load_reward_model

    _, tokenizer = load_policy(setup["paths"]["policy"])
    value_model, note = load_value_model(
        "reward", setup["paths"]["policy"], tokenizer, setup["paths"]["reward_helpfulness"]
    )
    assert "backbone and head" in note and value_model.source.startswith("reward")
    reward_model, _, _ = load_reward_model(setup["paths"]["reward_helpfulness"])
    ids = torch.tensor([tokenizer("User: hello there\n\nAssistant: hi").input_ids])
    with torch.no_grad():
        values = value_model(ids, torch.ones_like(ids))
        score = reward_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0]
    assert values.shape == ids.shape
    assert float(values[0, -1]) == pytest.approx(float(score), abs=1e-5)  # the last token's


def test_a_value_model_from_the_policy_starts_at_zero_and_so_does_one_of_another_vocabulary(
    setup, tmp_path
):
    import torch

    from rlhf.nn.tiny import build_tiny_llama
    from rlhf.ppo.value import load_value_model
    from rlhf.reward.model import load_reward_backbone, save_reward_model

    _, tokenizer = load_policy(setup["paths"]["policy"])
    ids = torch.tensor([tokenizer("User: hello\n\nAssistant: hi").input_ids])
    value_model, note = load_value_model("policy", setup["paths"]["policy"], tokenizer, "")
    assert note == "value model: the policy's backbone with a zero head"
    assert torch.equal(value_model(ids, torch.ones_like(ids)), torch.zeros(ids.shape))
    other = build_tiny_llama(tmp_path / "other", texts=["zebra quartz " * 50, "jumping fox"])
    model, other_tokenizer = load_reward_backbone(other)
    judge_dir = save_reward_model(model, other_tokenizer, tmp_path / "rm", metadata={})
    value_model, note = load_value_model("reward", setup["paths"]["policy"], tokenizer, judge_dir)
    assert "tokenizer is not the policy's" in note and value_model.source.startswith("policy")
    assert torch.equal(value_model(ids, torch.ones_like(ids)), torch.zeros(ids.shape))


def test_response_values_are_a_plain_forward_read_where_each_token_is_predicted(setup):
    import torch

    from rlhf.ppo.value import frozen_values

    config = make_config(setup)
    _, value_model, rollout = fresh(setup, config)
    values = frozen_values(
        value_model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
        rollout.response_mask, batch_size=2,
    )  # fmt: skip
    assert values.shape == rollout.response_ids.shape
    assert (values[rollout.response_mask == 0] == 0).all()
    for row in (0, 3, 5):
        prompt = rollout.prompt_ids[row][rollout.prompt_mask[row].bool()].tolist()
        response = rollout.response_ids[row][rollout.response_mask[row].bool()].tolist()
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            plain = value_model(ids, torch.ones_like(ids))[0]
        hand = plain[len(prompt) - 1 : -1].tolist()  # the position before each y_t
        assert values[row, : len(response)].tolist() == pytest.approx(hand, abs=1e-5)


# --- the targets --------------------------------------------------------------------------------


def test_rewards_and_ppo_targets_match_the_math_by_hand(setup):
    import torch

    from rlhf.ppo.advantages import gae
    from rlhf.ppo.rewards import logit
    from rlhf.ppo.update import rollout_metrics, rollout_targets

    config = make_config(setup, truncation_penalty=0.5)
    _, value_model, rollout = fresh(setup, config)
    targets = rollout_targets(rollout, config, value_model)
    scores = logit(rollout.scores)
    whitened = (scores - scores.mean()) / (scores.var(correction=0) + 1e-8).sqrt()
    mask = rollout.response_mask.bool()
    for row in range(6):
        n = int(rollout.lengths[row])
        kl = (rollout.old_logprobs[row, :n] - rollout.ref_logprobs[row, :n]).tolist()  # k1
        expected = [-0.05 * k for k in kl]
        expected[-1] += float(whitened[row]) - 0.5 * bool(rollout.truncated[row])
        assert targets.rewards[row, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert (targets.rewards[row, n:] == 0).all()
    advantages, returns = gae(targets.rewards, targets.old_values, rollout.response_mask, 1.0, 0.95)
    kept = advantages[mask]
    assert targets.advantages[mask].tolist() == pytest.approx(
        ((kept - kept.mean()) / (kept.var(correction=0) + 1e-8).sqrt()).tolist(), abs=1e-5
    )
    assert torch.allclose(targets.returns, returns)
    metrics = rollout_metrics(rollout, targets)
    per_response = [float(targets.kl[row][mask[row]].sum()) for row in range(6)]
    assert metrics["kl"] == pytest.approx(statistics.fmean(per_response), abs=1e-6)
    assert metrics["reward"] == pytest.approx(float(rollout.scores.mean()))
    assert metrics["by_safety_share"] == pytest.approx(float(rollout.by_safety.float().mean()))
    assert metrics["response_length"] == pytest.approx(float(rollout.lengths.float().mean()))


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_group_advantages_are_each_response_s_return_against_its_group_s(setup, algorithm):
    from rlhf.ppo.update import rollout_targets

    config = make_config(setup, algorithm=algorithm)
    _, _, rollout = fresh(setup, config, value=False)
    targets = rollout_targets(rollout, config)
    assert targets.advantages.shape == (6, 1) and targets.returns is None
    totals = targets.rewards.sum(dim=1).tolist()
    for group in range(3):
        a, b = totals[2 * group : 2 * group + 2]
        if algorithm == "rloo":
            expected = [a - b, b - a]
        else:  # (r − mean) / (sample std + 1e-4); for two: ±|a − b|/2 / (|a − b|/√2 + 1e-4)
            spread = statistics.stdev([a, b])
            expected = [(a - b) / 2 / (spread + 1e-4), (b - a) / 2 / (spread + 1e-4)]
        got = targets.advantages[2 * group : 2 * group + 2, 0].tolist()
        assert got == pytest.approx(expected, abs=1e-5)


# --- the steps ----------------------------------------------------------------------------------


def test_a_ppo_update_steps_the_policy_and_the_value_model_once_per_minibatch(setup):
    from rlhf.ppo.update import adamw, ppo_update

    config = make_config(setup, ppo_epochs=2)
    policy, value_model, rollout = fresh(setup, config)
    policy_before, value_before = snapshot(policy), snapshot(value_model)
    metrics = ppo_update(
        policy, adamw(policy, config), rollout, config, iteration=1,
        value_model=value_model, value_optimizer=adamw(value_model, config),
    )  # fmt: skip
    assert metrics.steps == 4  # 6 responses / 3 per minibatch × 2 passes
    assert changed(policy, policy_before) and changed(value_model, value_before)
    assert metrics.value_loss > 0 and metrics.entropy > 0
    assert 0 <= metrics.clip_fraction <= 1 and 0 <= metrics.value_clip_fraction <= 1
    assert metrics.approx_kl > 0  # the later steps' policy is not the sampling one


def test_one_step_on_the_whole_rollout_matches_the_losses_by_hand(setup):
    """The first step's policy is the sampling one: ρ = 1, nothing clipped, the policy loss
    −mean A (0: whitened), the value loss ½·mean (V_old − R)², the entropy a plain one's."""
    import torch

    from rlhf.ppo.losses import entropy_from_logits
    from rlhf.ppo.rewards import masked_mean
    from rlhf.ppo.rollout import response_logits
    from rlhf.ppo.update import adamw, ppo_update, rollout_targets

    config = make_config(setup, minibatch_size=6)
    policy, value_model, rollout = fresh(setup, config)
    targets = rollout_targets(rollout, config, value_model)
    mask = rollout.response_mask
    with torch.no_grad():
        logits = response_logits(
            policy, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, mask
        )
    entropy = float(entropy_from_logits(logits, mask))
    value_loss = 0.5 * float(masked_mean((targets.old_values - targets.returns) ** 2, mask))
    metrics = ppo_update(
        policy, adamw(policy, config), rollout, config, iteration=1, targets=targets,
        value_model=value_model, value_optimizer=adamw(value_model, config),
    )  # fmt: skip
    assert metrics.steps == 1
    assert metrics.policy_loss == pytest.approx(0.0, abs=1e-5)
    assert metrics.clip_fraction == 0 and metrics.value_clip_fraction == 0
    assert metrics.approx_kl == pytest.approx(0.0, abs=1e-6)
    assert metrics.entropy == pytest.approx(entropy, rel=1e-5)
    assert metrics.value_loss == pytest.approx(value_loss, rel=1e-5)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_group_algorithms_step_the_policy_and_leave_the_value_model_untouched(setup, algorithm):
    from rlhf.ppo.update import adamw, ppo_update

    config = make_config(setup, algorithm=algorithm)
    policy, value_model, rollout = fresh(setup, config)
    policy_before, value_before = snapshot(policy), snapshot(value_model)
    metrics = ppo_update(
        policy, adamw(policy, config), rollout, config, iteration=1,
        value_model=value_model, value_optimizer=adamw(value_model, config),
    )  # fmt: skip
    assert metrics.steps == 2 and metrics.value_loss is None
    assert changed(policy, policy_before) and not changed(value_model, value_before)
    assert all(p.grad is None for p in value_model.parameters())


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_zero_advantages_give_the_policy_no_gradient(setup, algorithm):
    """β = 0 and equal scores: every reward is 0, so GRPO's advantages are 0; PPO's are given
    as 0. The clipped loss then has no gradient on any policy parameter."""
    import torch

    from rlhf.ppo.update import minibatch_loss, rollout_targets

    config = make_config(setup, algorithm=algorithm, beta=0.0)
    policy, value_model, rollout = fresh(setup, config, value=algorithm == "ppo")
    rollout.scores = torch.full_like(rollout.scores, 0.7)
    targets = rollout_targets(rollout, config, value_model)
    assert (targets.rewards == 0).all()
    if algorithm == "ppo":
        targets.advantages = torch.zeros_like(targets.advantages)
    assert (targets.advantages == 0).all()
    rows = torch.arange(6)
    loss, stats = minibatch_loss(policy, rollout, targets, rows, config, value_model)
    policy.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in policy.parameters()]
    assert any(g is not None for g in grads)
    assert all(g is None or not g.any() for g in grads)
    assert float(stats["policy_loss"]) == 0


def test_the_same_update_twice_gives_the_same_weights(setup):
    import torch

    from rlhf.ppo.update import adamw, ppo_update

    config = make_config(setup, algorithm="rloo")
    results = []
    for _ in range(2):
        policy, _, rollout = fresh(setup, config, value=False)
        ppo_update(policy, adamw(policy, config), rollout, config, iteration=1)
        results.append(snapshot(policy))
    assert all(torch.equal(results[0][name], results[1][name]) for name in results[0])
