"""rlhf.reward.training: schedule, batches, config, resume exactness, gloo data parallel, learning.

Every model here is built locally (a tiny grouped-query-attention Llama) or read from ../shared.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.data.pairs import PreferencePair
from rlhf.data.split import split
from rlhf.nn.tiny import build_tiny_llama
from rlhf.reward.config import ConfigError, RewardTrainingConfig
from rlhf.reward.model import load_reward_model
from rlhf.reward.training import (
    global_batches,
    learning_rate_factor,
    micro_batches,
    train_reward_model,
    warmup_steps,
)
from tests.conftest import ROOT, shared_path

GOOD = ["happy", "friends", "park", "sun", "play", "kind"]
BAD = ["dog", "red", "ball", "high", "cold", "lazy"]
FILLER = [
    "the",
    "a",
    "little",
    "girl",
    "was",
    "she",
    "loved",
    "to",
    "in",
    "and",
    "with",
    "big",
    "day",
    "one",
    "there",
    "time",
]
TOPICS = ["Lily", "the park", "France", "an egg", "the sky", "a story", "the fox", "birds"]


def synthetic_pairs(count: int, seed: int = 0) -> list[PreferencePair]:
    """A clear rule: the chosen reply holds a word from GOOD, the rejected one from BAD."""
    rng = random.Random(seed)
    pairs = []
    for i in range(count):

        def reply(word: str) -> str:
            words = rng.choices(FILLER, k=rng.randint(3, 8))
            words.insert(rng.randint(0, len(words)), word)
            return " ".join(words) + "."

        context = [{"role": "user", "content": f"Tell me about {rng.choice(TOPICS)} ({i})."}]
        pairs.append(
            PreferencePair(
                context=context,
                chosen=reply(rng.choice(GOOD)),
                rejected=reply(rng.choice(BAD)),
                strength=rng.choice(["significantly_better", "better", "slightly_better"]),
                kind="helpfulness",
            )
        )
    return pairs


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("llama") / "m")


def config(base, **overrides) -> RewardTrainingConfig:
    values = dict(
        base_model=str(base),
        micro_batch_size=4,
        max_steps=6,
        learning_rate=1e-3,
        max_length=64,
        min_warmup_steps=1,
        cpu=True,
    )
    values.update(overrides)
    return RewardTrainingConfig(**values)


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(out_dir / "model.safetensors")


# --- the schedule -------------------------------------------------------------------------------


def test_warm_up_then_cosine_to_ten_percent_at_the_last_step():
    total, warm = 100, 3
    factors = [learning_rate_factor(s, total, warm, 0.1) for s in range(total)]
    assert factors[:3] == [pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]
    assert factors[3] == 1.0  # first decay step: still the maximum
    assert factors[-1] == pytest.approx(0.1)  # the last step runs at 10 %
    middle = 3 + (total - 3 - 1) / 2
    assert learning_rate_factor(int(middle), total, warm, 0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(middle) - 3) / 96))
    )
    assert all(a >= b for a, b in zip(factors[3:], factors[4:], strict=False))  # decays only


def test_warm_up_is_three_percent_with_the_papers_minimum_of_five():
    cfg = RewardTrainingConfig()
    assert warmup_steps(cfg, 1000) == 30
    assert warmup_steps(cfg, 100) == 5  # ⌈3⌉ < 5
    assert warmup_steps(cfg, 4) == 3  # at least one step left to decay
    assert warmup_steps(RewardTrainingConfig(warmup_ratio=0.0), 100) == 0


# --- batches ------------------------------------------------------------------------------------


def test_processes_split_each_global_batch_and_short_batches_are_padded_with_weight_zero():
    lengths = [random.Random(i).randint(5, 50) for i in range(21)]
    batches = global_batches(21, 8, steps=3, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(21))  # one epoch, each pair once
    assert [len(b) for b in batches].count(5) == 1  # the epoch's last batch is short
    for batch in batches:
        one = micro_batches(batch, 2, 4, world=1, rank=0)
        two = [micro_batches(batch, 2, 2, world=2, rank=r) for r in range(2)]
        slots = sorted(s for rank in two for chunk in rank for s in chunk)
        assert [i for i, w in slots if w == 1.0] == sorted(batch)  # each pair once, weight 1
        assert all(len(chunk) == 2 for rank in two for chunk in rank)  # filler: weight 0
        assert sorted(s for chunk in one for s in chunk) == [(i, 1.0) for i in sorted(batch)]
        assert len(one) == math.ceil(len(batch) / 2)  # one process: no filler
    assert global_batches(21, 8, steps=5, seed=0)[3:] == global_batches(
        21, 8, steps=2, seed=1
    )  # the second epoch is a fresh order
    grouped = global_batches(21, 8, steps=3, seed=0, lengths=lengths)  # padded batches
    assert sorted(i for b in grouped for i in b) == list(range(21))
    assert grouped != batches


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, field",
    [
        ({"learning_rate": -1}, "learning_rate"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"kind": "honesty"}, "kind"),
        ({"margin_table": "huge"}, "margin_table"),
        ({"max_steps": 1.5}, "max_steps"),
        ({"warmup_ratio": 2}, "warmup_ratio"),
        ({"prefix_sharing": "maybe"}, "prefix_sharing"),
        ({"learning_rte": 1e-5}, "learning_rte"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_field(values, field):
    with pytest.raises(ConfigError) as error:
        RewardTrainingConfig.from_dict(values)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}:")


def test_config_round_trips_through_json():
    cfg = RewardTrainingConfig(kind="safety", learning_rate=5e-6, max_steps=10)
    assert RewardTrainingConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --- training -----------------------------------------------------------------------------------


def test_gradient_accumulation_equals_one_big_batch(llama_dir, tmp_path):
    pairs = synthetic_pairs(24)
    train_reward_model(config(llama_dir, micro_batch_size=8), pairs, [], tmp_path / "big")
    train_reward_model(
        config(llama_dir, micro_batch_size=2, gradient_accumulation_steps=4),
        pairs,
        [],
        tmp_path / "accumulated",
    )
    big, accumulated = weights(tmp_path / "big"), weights(tmp_path / "accumulated")
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], atol=2e-6, rtol=0)


def test_resume_after_an_interruption_gives_the_same_losses_and_weights(llama_dir, tmp_path):
    pairs = synthetic_pairs(40)
    cfg = config(llama_dir, max_steps=8, checkpoint_every=3)
    straight = train_reward_model(cfg, pairs, [], tmp_path / "straight")

    class Interrupted(Exception):
        pass

    def crash_at_step_5(event):
        if event["event"] == "step" and event["step"] == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_reward_model(cfg, pairs, [], tmp_path / "resumed", progress=crash_at_step_5)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    events = []
    resumed = train_reward_model(cfg, pairs, [], tmp_path / "resumed", progress=events.append)
    assert any("resumed from" in e.get("message", "") and "step 3" in e["message"] for e in events)
    assert [e["step"] for e in events if e["event"] == "step"] == [4, 5, 6, 7, 8]
    assert [h["step"] for h in resumed.history] == list(range(1, 9))
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        assert b["learning_rate"] == a["learning_rate"]
    one, other = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    for name in one:
        torch.testing.assert_close(other[name], one[name], atol=1e-6, rtol=0)


def test_resuming_with_other_data_is_refused(llama_dir, tmp_path):
    cfg = config(llama_dir, max_steps=2, checkpoint_every=1)
    train_reward_model(cfg, synthetic_pairs(8), [], tmp_path / "out")
    with pytest.raises(ValueError, match="another data"):
        train_reward_model(cfg, synthetic_pairs(8, seed=1), [], tmp_path / "out")


def test_the_saved_model_loads_back_with_its_metrics_and_history(llama_dir, tmp_path):
    pairs = synthetic_pairs(30)
    train, held_out = split(pairs, 0.3, seed=0)
    result = train_reward_model(config(llama_dir, max_steps=3), train, held_out, tmp_path / "rm")
    model, tokenizer, metadata = load_reward_model(tmp_path / "rm")
    assert metadata["kind"] == "helpfulness"
    assert metadata["metrics"]["pairs"] == len(held_out) == result.metrics["pairs"]
    assert [h["step"] for h in metadata["history"]] == [1, 2, 3]
    assert metadata["data"]["train_pairs"] == len(train)
    assert len(metadata["data"]["sha256"]["train"]) == 64
    assert metadata["config"]["learning_rate"] == 1e-3


def test_an_encoder_cannot_be_forced_to_share_prefixes(tmp_path):
    from tests.models import build_tiny_bert

    bert = build_tiny_bert(tmp_path / "bert")
    with pytest.raises(ConfigError, match="prefix_sharing"):
        train_reward_model(
            config(bert, prefix_sharing="on"), synthetic_pairs(4), [], tmp_path / "o"
        )


# --- learning -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_llama_learns_a_clear_rule_to_95_percent_held_out(llama_dir, tmp_path):
    pairs = synthetic_pairs(480)
    train, held_out = split(pairs, 0.25, seed=0)
    cfg = config(llama_dir, micro_batch_size=16, max_steps=60, learning_rate=3e-3)
    result = train_reward_model(cfg, train, held_out, tmp_path / "rm")
    assert len(held_out) > 90
    assert result.metrics["accuracy"] >= 0.95, result.metrics


@pytest.mark.slow
def test_stories260k_beats_chance_on_held_out_harmless_base(tmp_path):
    """Chance is 50 %; 431 held-out pairs have a standard error of 2.4 points.

    The run (60 steps of 16 pairs at 128 tokens, about 25 s on two cores) reaches 61.9 %; the
    test asks for 55 %, two standard errors above chance, so a model that learned nothing fails
    it with probability below 3 %.
    """
    from rlhf.data.pairs import load_pairs

    base = shared_path("models/stories260K-hf")
    pairs = load_pairs(shared_path("data/hh-rlhf/harmless-base/test.jsonl.gz"), kind="safety")
    train, held_out = split(pairs, 0.2, seed=0)
    cfg = config(
        base, kind="safety", micro_batch_size=16, max_steps=60, max_length=128, learning_rate=1e-3
    )
    result = train_reward_model(cfg, train, held_out, tmp_path / "rm")
    assert result.metrics["pairs"] == len(held_out) > 400
    assert result.metrics["accuracy"] >= 0.55, result.metrics["accuracy"]


# --- two processes ------------------------------------------------------------------------------


def _run(command: list[str]) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_train_the_same_weights_as_one(llama_dir, tmp_path):
    """``accelerate launch --num_processes 2``, the trainer on CPUs (gloo), micro-batch 2 ×
    accumulation 2 per process, against one process with accumulation 4: the same global batch
    of 8 pairs, hence the same weights (up to float32 summation order)."""
    data = tmp_path / "pairs.jsonl"
    with data.open("w") as out:
        for p in synthetic_pairs(40):
            record = {"prompt": p.context, "chosen": p.chosen, "rejected": p.rejected}
            out.write(json.dumps(record | {"strength": p.strength}) + "\n")
    common = ["--kind", "helpfulness", "--data", str(data), "--base", str(llama_dir)]
    common += ["--max-steps", "4", "--lr", "1e-3", "--max-length", "64", "--batch-size", "2"]
    common += ["--eval-fraction", "0.2", "--no-progress", "--cpu"]
    # --multi_gpu picks accelerate's torchrun launcher; on a machine without GPUs (and with
    # the trainer's --cpu) the processes join a gloo process group.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port()), "-m", "rlhf", "train-reward"]
    two = _run(launch + common + ["--out", str(tmp_path / "two"), "--gradient-accumulation", "2"])
    one = _run(
        [sys.executable, "-m", "rlhf", "train-reward", *common]
        + ["--out", str(tmp_path / "one"), "--gradient-accumulation", "4"]
    )
    assert "on 2 processes (gloo)" in two.stderr and "on 1 process" in one.stderr
    assert two.stdout.count("trained 4 steps") == 1  # only the main process reports
    one_weights = weights(tmp_path / "one" / "model")
    two_weights = weights(tmp_path / "two" / "model")
    before = backbone_weights(llama_dir)
    moved = max((one_weights[name] - before[name]).abs().max() for name in before)
    assert moved > 1e-3  # training did change the weights
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], atol=1e-5, rtol=0)
    one_meta = json.loads((tmp_path / "one" / "model" / "pairwise_reward.json").read_text())
    two_meta = json.loads((tmp_path / "two" / "model" / "pairwise_reward.json").read_text())
    assert two_meta["world_size"] == 2 and one_meta["world_size"] == 1
    assert two_meta["metrics"]["pairs"] == one_meta["metrics"]["pairs"]
    assert two_meta["metrics"]["accuracy"] == pytest.approx(one_meta["metrics"]["accuracy"])


def backbone_weights(llama_dir: Path) -> dict[str, torch.Tensor]:
    """The backbone's weights, by the names the reward model gives them (no LM head)."""
    base = load_file(llama_dir / "model.safetensors")
    return {name: tensor for name, tensor in base.items() if not name.startswith("lm_head")}


# --- the command line ---------------------------------------------------------------------------


def test_eval_reward_prints_the_metrics_as_json(llama_dir, tmp_path, capsys):
    from rlhf.__main__ import main

    pairs = synthetic_pairs(12)
    train_reward_model(config(llama_dir, max_steps=2), pairs, [], tmp_path / "rm")
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": p.context, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
            for p in pairs
        )
    )
    assert main(["eval-reward", "--model", str(tmp_path / "rm"), "--data", str(data)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["pairs"] == 12
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["by_kind"]["helpfulness"]["pairs"] == 12  # the model's kind, from its metadata


def test_train_reward_names_a_bad_line_and_writes_nothing(llama_dir, tmp_path, capsys):
    from rlhf.__main__ import main

    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}\n{"prompt": "x"}\n')
    code = main(
        ["train-reward", "--kind", "helpfulness", "--data", str(data), "--base", str(llama_dir)]
        + ["--out", str(tmp_path / "out"), "--no-progress"]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "bad.jsonl, line 2, field 'chosen'" in error
    assert not (tmp_path / "out").exists()
