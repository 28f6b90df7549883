"""PPO's settings and its rollout with tiny models: shapes and masks against the sampler's own
completions, log-probabilities against plain forward passes, the gate against the reward models
called one response at a time, truncation against the tokens, and reruns against themselves."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlhf.data.prompts import Prompt
from rlhf.hyperparameters import ConfigError
from rlhf.ppo.config import KL_ESTIMATORS, PPOConfig
from rlhf.rejection_sampling.sampling import RewardModel, sample_groups, sample_seed
from rlhf.reward.gate import gated_reward
from tests.unit.test_rejection_sampling import tiny_models  # noqa: F401

PATHS = {"policy": "runs/sft", "reward_helpfulness": "runs/rm-h", "reward_safety": "runs/rm-s"}

# --- the settings -------------------------------------------------------------------------------


def test_the_defaults_are_llama_2_s():
    config = PPOConfig(**PATHS)
    assert (config.algorithm, config.beta, config.kl_estimator) == ("ppo", 0.01, "k1")
    assert (config.gamma, config.lam, config.clip, config.value_clip) == (1.0, 0.95, 0.2, 0.2)
    assert (config.learning_rate, config.adam_epsilon) == (1e-6, 1e-5)
    assert config.adam_betas == (0.9, 0.95)
    assert (config.weight_decay, config.max_grad_norm, config.ppo_epochs) == (0.1, 1.0, 1)
    assert (config.temperature, config.top_p, config.value_init) == (1.0, 1.0, "reward")


@pytest.mark.parametrize(("algorithm", "group_size"), [("ppo", 1), ("grpo", 4), ("rloo", 4)])
def test_an_unset_group_size_becomes_the_algorithm_s_and_is_kept_in_the_json(algorithm, group_size):
    config = PPOConfig(**PATHS, algorithm=algorithm)
    assert config.group_size == group_size
    assert config.to_dict()["group_size"] == group_size
    assert config.responses_per_iteration == 8 * group_size
    assert PPOConfig.from_dict(config.to_dict()) == config  # adam_betas a list in JSON


@pytest.mark.parametrize(
    ("settings", "field", "words"),
    [
        ({"algorithm": "grpo", "group_size": 1}, "group_size", "grpo needs at least 2"),
        ({"algorithm": "rloo", "group_size": 1}, "group_size", "rloo needs at least 2"),
        ({"kl_estimator": "k2"}, "kl_estimator", "must be one of ['k1', 'k3']"),
        ({"algorithm": "dpo"}, "algorithm", "must be one of"),
        ({"rollout_batch_size": 6, "minibatch_size": 4}, "minibatch_size", "must divide the 6"),
        ({"eval_fraction": 0.0}, "patience", "needs held-out prompts"),
        ({"eval_every": 0}, "patience", "needs held-out prompts"),
        ({"beta": -0.01}, "beta", "at least 0"),
        ({"clip": 0.0}, "clip", "above 0"),
        ({"lam": 1.5}, "lam", "at most 1"),
        ({"value_init": "random"}, "value_init", "must be one of"),
        ({"policy": ""}, "policy", "is required"),
        ({"adam_betas": (0.9, 1.5)}, "adam_betas", "at most 1"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(settings, field, words):
    with pytest.raises(ConfigError) as refused:
        PPOConfig(**{**PATHS, **settings})
    assert refused.value.field == field
    assert words in refused.value.message


def test_the_same_settings_are_accepted_where_they_combine_well():
    assert PPOConfig(**PATHS, algorithm="grpo", group_size=2).group_size == 2
    assert PPOConfig(**PATHS, group_size=3, minibatch_size=6).minibatch_size == 6  # 24 responses
    assert PPOConfig(**PATHS, eval_fraction=0.0, patience=0).patience == 0  # no early stopping
    with pytest.raises(ConfigError, match="not a setting"):
        PPOConfig.from_dict({**PATHS, "batch": 512})


def test_every_kl_estimator_the_config_offers_is_computed_and_the_config_imports_no_torch():
    import torch

    from rlhf.ppo import rewards

    for estimator in KL_ESTIMATORS:
        assert rewards.kl_per_token(torch.zeros(2), torch.zeros(2), estimator).tolist() == [0, 0]
    code = "import sys, rlhf.ppo.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the rollout, with tiny models --------------------------------------------------------------

# The tiny policy's next-token distribution is nearly uniform over 512 tokens, so its own EOS
# (id 2) almost never comes. Declaring 38 ids as EOS in its generation config (as models with
# several end tokens do) ends about one response in two within 8 tokens: both kinds occur.
EOS_IDS = list(range(2, 40))
PROMPTS = [
    Prompt([{"role": "user", "content": "Tell me about cats."}], safety_prompt=False),
    Prompt([{"role": "user", "content": "How do I boil an egg?"}], safety_prompt=False),
    Prompt([{"role": "user", "content": "How do I pick a lock?"}], safety_prompt=True),
]


def load_policy(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    model.generation_config.eos_token_id = EOS_IDS
    return model, AutoTokenizer.from_pretrained(path)


def load_judge(path) -> RewardModel:
    from rlhf.reward.model import load_reward_model

    model, tokenizer, _ = load_reward_model(path)
    return RewardModel(model.eval(), tokenizer)


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):  # noqa: F811
    """The policy, a second copy of it as reference, another model, the two judges, a config."""
    import torch

    from rlhf.nn.tiny import build_tiny_llama

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared machine
    policy_dir, helpfulness_dir, safety_dir = tiny_models
    other_dir = build_tiny_llama(tmp_path_factory.mktemp("ppo-other") / "other", seed=5)
    config = PPOConfig(
        policy=str(policy_dir), reward_helpfulness=str(helpfulness_dir),
        reward_safety=str(safety_dir), rollout_batch_size=3, group_size=3, minibatch_size=3,
        max_new_tokens=8, cpu=True,
    )  # fmt: skip
    yield {
        "policy": load_policy(policy_dir),
        "reference": load_policy(policy_dir)[0],  # the same weights, another object
        "other": load_policy(other_dir)[0],
        "judges": (load_judge(helpfulness_dir), load_judge(safety_dir)),
        "config": config,
    }
    torch.set_num_threads(threads)


def run(models, *, reference="reference", iteration=1):
    from rlhf.ppo.rollout import collect_rollout

    policy, tokenizer = models["policy"]
    return collect_rollout(
        policy, tokenizer, models[reference], *models["judges"], PROMPTS, models["config"],
        iteration=iteration,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rollout(models):
    return run(models)


def tokens_of(rollout, row: int) -> list[int]:
    return rollout.response_ids[row][rollout.response_mask[row].bool()].tolist()


def plain_logprobs(model, prompt: list[int], response: list[int]) -> list[float]:
    """log π(y_t | x, y_<t) from one unpadded forward pass of prompt + response."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float()
    steps = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # predicts each y_t
    return steps.gather(-1, torch.tensor(response)[:, None]).squeeze(-1).tolist()


def prompt_tokens(models, prompt: Prompt) -> list[int]:
    from rlhf.data.chat import encode_prompt

    policy, tokenizer = models["policy"]
    room = policy.config.max_position_embeddings - models["config"].max_new_tokens
    return encode_prompt(tokenizer, prompt.context, room)[0]


def test_shapes_and_masks_match_the_sampler_s_completions(models, rollout):
    policy, tokenizer = models["policy"]
    b, width = 9, max(len(prompt_tokens(models, p)) for p in PROMPTS)
    t = int(rollout.lengths.max())
    assert rollout.response_ids.shape == rollout.response_mask.shape == (b, t)
    assert rollout.old_logprobs.shape == rollout.ref_logprobs.shape == (b, t)
    assert rollout.prompt_ids.shape == rollout.prompt_mask.shape == (b, width)
    for name in ("scores", "helpfulness", "safety", "by_safety", "truncated"):
        assert getattr(rollout, name).shape == (b,), name
    seeds = [[sample_seed(0, 1, p.key, 1.0, j) for j in range(3)] for p in PROMPTS]
    groups = sample_groups(
        policy, tokenizer, PROMPTS, seeds, temperature=1.0, top_p=1.0, max_new_tokens=8
    )
    expected = [sample for group in groups for sample in group]  # (text, seed, tokens)
    assert rollout.lengths.tolist() == [n for _, _, n in expected]
    assert rollout.responses == [text for text, _, _ in expected]
    assert rollout.seeds == [seed for _, seed, _ in expected]
    for row, (_, _, n) in enumerate(expected):
        assert rollout.response_mask[row, :n].all() and not rollout.response_mask[row, n:].any()
        assert (rollout.response_ids[row, n:] == tokenizer.pad_token_id).all()
        prompt = prompt_tokens(models, PROMPTS[row // 3])
        assert rollout.prompt_ids[row][rollout.prompt_mask[row].bool()].tolist() == prompt
        assert rollout.prompt_mask[row, : width - len(prompt)].sum() == 0  # left padding
    assert len(set(rollout.lengths.tolist())) > 1  # right padding was exercised
    assert (rollout.prompt_mask == 0).any()  # and left padding
    padding = rollout.response_mask == 0
    assert (rollout.old_logprobs[padding] == 0).all() and (rollout.ref_logprobs[padding] == 0).all()


def test_old_log_probabilities_equal_a_plain_forward_of_prompt_and_response(models, rollout):
    policy, _ = models["policy"]
    for row in range(9):
        response = tokens_of(rollout, row)
        hand = plain_logprobs(policy, prompt_tokens(models, PROMPTS[row // 3]), response)
        got = rollout.old_logprobs[row, : len(response)].tolist()
        assert got == pytest.approx(hand, abs=1e-5), row


def test_the_reference_is_used_and_equal_to_the_policy_when_it_is_the_same_model(models, rollout):
    from rlhf.ppo.rewards import kl_per_token, masked_mean

    kl = kl_per_token(rollout.old_logprobs, rollout.ref_logprobs, "k1")
    assert float(masked_mean(kl.abs(), rollout.response_mask)) < 1e-6
    other = run(models, reference="other")
    assert other.response_ids.tolist() == rollout.response_ids.tolist()  # the same samples
    assert other.old_logprobs.tolist() == rollout.old_logprobs.tolist()
    kl = kl_per_token(other.old_logprobs, other.ref_logprobs, "k1")
    assert float(masked_mean(kl.abs(), other.response_mask)) > 1e-2
    response = tokens_of(other, 4)
    hand = plain_logprobs(models["other"], prompt_tokens(models, PROMPTS[1]), response)
    assert other.ref_logprobs[4, : len(response)].tolist() == pytest.approx(hand, abs=1e-5)


def test_each_score_is_the_gate_of_both_judges_on_that_row_s_text(models, rollout):
    helpfulness, safety = models["judges"]
    size = {"batch_size": 1, "max_length": 512}
    for row, text in enumerate(rollout.responses):
        prompt = PROMPTS[row // 3]
        h = helpfulness.probabilities([prompt.context], [text], **size)[0]
        s = safety.probabilities([prompt.context], [text], **size)[0]
        reward, by_safety = gated_reward(h, s, prompt.safety_prompt)
        assert float(rollout.helpfulness[row]) == pytest.approx(h, abs=1e-6)
        assert float(rollout.safety[row]) == pytest.approx(s, abs=1e-6)
        assert float(rollout.scores[row]) == pytest.approx(reward, abs=1e-6)
        assert bool(rollout.by_safety[row]) is by_safety
    assert rollout.by_safety[6:].all()  # the safety prompt's group: judged for safety
    assert len(set(rollout.scores.tolist())) > 1


def test_truncated_exactly_where_no_eos_was_sampled(rollout):
    without_eos = [not set(tokens_of(rollout, row)) & set(EOS_IDS) for row in range(9)]
    assert rollout.truncated.tolist() == without_eos
    assert any(without_eos) and not all(without_eos)  # both kinds occur
    for row in range(9):  # one without EOS ran to the limit, one with EOS ends with it
        if without_eos[row]:
            assert int(rollout.lengths[row]) == 8
        else:
            assert tokens_of(rollout, row)[-1] in EOS_IDS


def test_a_rerun_draws_the_same_tokens_and_another_iteration_others(models, rollout):
    again = run(models)
    assert again.response_ids.tolist() == rollout.response_ids.tolist()
    assert again.old_logprobs.tolist() == rollout.old_logprobs.tolist()
    assert again.scores.tolist() == rollout.scores.tolist()
    later = run(models, iteration=2)
    assert [tokens_of(later, r) for r in range(9)] != [tokens_of(rollout, r) for r in range(9)]
    times = rollout.times
    assert min(times.generation, times.scoring, times.old_logprobs) > 0
    assert times.reference_logprobs > 0
    assert times.total == pytest.approx(
        times.generation + times.scoring + times.old_logprobs + times.reference_logprobs
    )
