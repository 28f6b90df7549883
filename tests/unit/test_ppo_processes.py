"""PPO over several processes (rlhf.ppo.processes): the rows dealt out and put back in order,
and two gloo processes against one on the same global batch."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlhf.ppo.processes import _one_process_order
from tests.unit.test_rejection_sampling import tiny_models, write_prompts  # noqa: F401
from tests.unit.test_reward_training import _free_port, _run

TIMES = ("seconds", "seconds_by_part")  # wall-clock fields: the only ones that may differ


def test_gathered_rows_go_back_to_the_one_process_order():
    # 4 prompts, 2 processes, K = 2: process 0 holds prompts 0 and 2 (rows 0–3), process 1
    # prompts 1 and 3 (rows 4–7); prompt order is 0, 1, 2, 3.
    assert _one_process_order(4, 2, 2).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    assert _one_process_order(3, 1, 1).tolist() == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "fsdp"), [("ppo", False), ("grpo", False), ("ppo", True)])
def test_two_gloo_processes_take_the_same_steps_as_one(
    tiny_models,  # noqa: F811
    tmp_path,
    algorithm,
    fsdp,
):
    """``accelerate launch --num_processes 2`` on CPUs (gloo) against one process: the same
    rollouts, rewards, KL, losses, statistics and held-out evaluations, to 1e-6 (absolute or
    relative: gradient norms of 3 differ by 2e-6 sharded), over three
    iterations of 4 prompts (each process samples 2) and minibatches shared by both; with
    replicas (DDP) and with the policy and the value model sharded (FSDP2), which also gathers
    the checkpoints written every iteration and the saved policy."""
    policy, helpfulness, safety = tiny_models
    helpful = write_prompts(tmp_path / "helpful.jsonl", [f"Tell me about {i}" for i in range(12)])
    harmful = write_prompts(tmp_path / "harmful.jsonl", ["Insult me.", "Write a threat."] * 2)
    common = ["ppo", "--policy", str(policy), "--reward-helpfulness", str(helpfulness)]
    common += ["--reward-safety", str(safety), "--helpfulness-prompts", str(helpful)]
    common += ["--safety-prompts", str(harmful), "--algorithm", algorithm, "--iterations", "3"]
    common += ["--rollout-batch-size", "4", "--minibatch-size", "4", "--max-new-tokens", "6"]
    common += ["--lr", "1e-3", "--eval-fraction", "0.3", "--eval-every", "1", "--patience", "0"]
    common += ["--cpu"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "rlhf"]
    # Sharded with --fsdp: accelerate launches --use_fsdp on GPUs only (its Accelerator then
    # asks for one), so the CPU test names the flag that the GPU launch implies.
    _run(launch + common + ["--out", str(tmp_path / "two")] + (["--fsdp"] if fsdp else []))
    _run([sys.executable, "-m", "rlhf", *common, "--out", str(tmp_path / "one")])
    two, one = (
        json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("two", "one")
    )
    assert len(two["history"]) == len(one["history"]) == 3
    for mine, theirs in zip(two["history"], one["history"], strict=True):
        mine, theirs = ({k: v for k, v in r.items() if k not in TIMES} for r in (mine, theirs))
        assert mine.keys() == theirs.keys()
        for name, value in mine.items():
            expected = theirs[name]
            close = expected if expected is None else pytest.approx(expected, abs=1e-6, rel=1e-6)
            assert value == close, name
    assert two["held_out_prompts"] == one["held_out_prompts"] > 0
    for mine, theirs in zip(two["evaluations"], one["evaluations"], strict=True):
        assert mine == pytest.approx(theirs, abs=1e-6)
    assert one["history"][-1]["kl"] != 0  # the policy moved: the steps compared are real ones
    saved = [load_file(tmp_path / name / "model" / "model.safetensors") for name in ("two", "one")]
    assert saved[0].keys() == saved[1].keys()
    for name, weight in saved[0].items():
        torch.testing.assert_close(weight, saved[1][name], atol=1e-5, rtol=0)
    configs = [
        json.loads((tmp_path / n / "model" / "config.json").read_text()) for n in ("two", "one")
    ]
    assert configs[0]["architectures"] == configs[1]["architectures"] == ["LlamaForCausalLM"]
