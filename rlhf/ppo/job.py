"""The "ppo" stage of a job (:mod:`rlhf.runner`): PPO, GRPO or RLOO against the gated reward.

Inputs by role: ``helpfulness_prompts`` and ``safety_prompts`` (prompt files,
:mod:`rlhf.data.prompts`; a safety prompt is always judged by the safety reward model). No
options. The config is :class:`rlhf.ppo.config.PPOConfig`. The prompts (each once) are split by
hash (:func:`rlhf.data.split.held_out`, ``eval_fraction``, ``seed``): the same held-out side as
rejection sampling's and ``eval-policy``'s at the same fraction and seed.

Each iteration i = 1 … ``iterations``:

1. takes the next ``rollout_batch_size`` training prompts (each pass over them in a new order,
   drawn from the seed: :func:`iteration_prompts`) and collects a rollout
   (:func:`rlhf.ppo.rollout.collect_rollout`);
2. stops the run, before updating, if the rollout's mean KL to the reference (per response)
   is above ``max_kl``;
3. updates the policy (and the value model, for ppo) on it (:func:`rlhf.ppo.update.ppo_update`);
4. writes a "step" event (``loss``: the policy loss; ``pairs_per_second``, the contract's name:
   responses per second), an "iteration" event (the iteration's record: rewards, KL, losses,
   clip fraction, entropy, response length, the seconds of each part), a "log" line and
   "progress";
5. every ``eval_every`` iterations, and before the first and after the last, samples one
   response per held-out prompt (its seed fixed across iterations) and writes an "evaluation"
   event with the mean gated reward; after ``patience`` evaluations without a better one, the
   run stops;
6. every ``checkpoint_every`` iterations (and after the first and the last evaluation), keeps
   a checkpoint (``model/checkpoints/iteration-N``: policy, value model, optimizers, the
   history so far; the newest only), from which ``resume`` continues exactly.

After each iteration the run's directory holds two charts against iteration (:func:`write_charts`):
``reward.svg`` (the mean gated score of each rollout and of each held-out evaluation) and ``kl.svg``
(the mean KL to the reference per response).

The policy is saved to ``model/`` (``save_pretrained``, its tokenizer, ``pairwise_ppo.json``).
It is the last iteration's policy, also after an early stop (the best evaluation is named in
the metrics).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rlhf.data.prompts import Prompt, split_prompt_files
from rlhf.jobs import MODEL_DIR, JobContext, JobError, RunSpec, require_directories
from rlhf.nn.devices import fsdp_launched
from rlhf.ppo.config import PPOConfig

INPUT_ROLES = ("helpfulness_prompts", "safety_prompts")
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.pt"
RECORD_FILE = "ppo_state.json"  # written last: a checkpoint without it is incomplete
METADATA_FILE = "pairwise_ppo.json"
EVAL_ITERATION = 0  # the iteration number in the held-out samples' seeds: never a training one


class Judge(Protocol):
    def probabilities(
        self, contexts, responses, *, batch_size: int, max_length: int
    ) -> list[float]: ...


JudgeLoader = Callable[[PPOConfig, Any], tuple[Judge, Judge]]


@dataclass
class PPOPlan:
    config: PPOConfig
    train: list[Prompt]
    held_out: list[Prompt]

    @property
    def data_digest(self) -> str:
        """A hash of both prompt lists: a checkpoint resumes only on the same prompts."""
        text = "\x00".join(["train", *(p.key for p in self.train), "held-out"])
        text += "\x00".join(p.key for p in self.held_out)
        return hashlib.sha256(text.encode()).hexdigest()


def read_prompts(spec: RunSpec, config: PPOConfig) -> tuple[list[Prompt], list[Prompt]]:
    """(training prompts, held-out prompts), each prompt once, in file order."""
    return split_prompt_files(
        spec.paths("helpfulness_prompts"),
        spec.paths("safety_prompts"),
        eval_fraction=config.eval_fraction,
        seed=config.seed,
    )


def load_judges(config: PPOConfig, device) -> tuple[Judge, Judge]:
    """The config's helpfulness and safety reward models on ``device``, frozen (bf16 on a GPU
    that has it), each scoring decoded text with its own tokenizer."""
    import torch

    from rlhf.rejection_sampling.sampling import RewardModel
    from rlhf.reward.model import load_reward_model

    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    judges = []
    for path in (config.reward_helpfulness, config.reward_safety):
        model, tokenizer, _ = load_reward_model(path, dtype=torch.bfloat16 if bf16 else None)
        judges.append(RewardModel(model.to(device).requires_grad_(False), tokenizer))
    return judges[0], judges[1]


class PPOStage:
    """The stage. ``judges``: what scores the responses, ``(config, device) → (helpfulness,
    safety)``, each with ``probabilities(contexts, responses, *, batch_size, max_length)`` as
    :class:`rlhf.rejection_sampling.sampling.RewardModel` has; :func:`load_judges` (the
    config's reward models) unless given. The one seam for another judge (a rule, in tests):
    everything else, the gate included, runs as it does with reward models."""

    def __init__(self, judges: JudgeLoader | None = None):
        self.judges = judges or load_judges

    def prepare(self, spec: RunSpec) -> PPOPlan:
        for role in spec.inputs:
            if role not in INPUT_ROLES:
                raise JobError(f"inputs.{role}", f"is not an input of a PPO job: {INPUT_ROLES}")
        if not spec.paths("helpfulness_prompts") + spec.paths("safety_prompts"):
            raise JobError(
                "inputs", "names no prompts: give helpfulness_prompts, safety_prompts or both"
            )
        if spec.options:
            raise JobError(f"options.{next(iter(spec.options))}", "a PPO job takes none")
        config = PPOConfig.from_dict(spec.config)
        if fsdp_launched():  # accelerate launch --use_fsdp: PPO shards the models itself
            config.fsdp = True
        require_directories(config, ("policy", "reward_helpfulness", "reward_safety"))
        train, kept_back = read_prompts(spec, config)
        if not train:
            raise JobError(
                "inputs",
                f"every prompt is held out at eval_fraction {config.eval_fraction}: lower it or "
                "add prompts",
            )
        if config.patience and not kept_back:
            raise JobError(
                "inputs",
                f"no prompt is held out at eval_fraction {config.eval_fraction}, so nothing "
                "decides early stopping: add prompts, raise eval_fraction or set patience 0",
            )
        return PPOPlan(config, train, kept_back)

    def train(self, plan: PPOPlan, context: JobContext) -> dict[str, Any]:
        return PPORun(plan, context, self.judges).run()


def iteration_prompts(prompts: list[Prompt], count: int, seed: int, iteration: int) -> list:
    """The ``count`` prompts of iteration ``iteration`` (1-based): the training prompts taken in
    passes, each pass in its own order (shuffled with seed ``(seed, pass)``), iteration i taking
    the next ``count`` after iteration i − 1's (a pass's end runs into the next pass)."""
    orders: dict[int, list[int]] = {}
    chosen = []
    for position in range((iteration - 1) * count, iteration * count):
        epoch, index = divmod(position, len(prompts))
        if epoch not in orders:
            order = list(range(len(prompts)))
            random.Random(f"pairwise-ppo-prompts\x00{seed}\x00{epoch}").shuffle(order)
            orders[epoch] = order
        chosen.append(prompts[orders[epoch][index]])
    return chosen


@dataclass
class RunState:
    """What a checkpoint keeps besides the weights: where the run is and what it measured."""

    iteration: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per iteration
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the best evaluation so far
    since_best: int = 0  # evaluations since the best one
    stopped: str | None = None  # "patience", "max_kl" or None (it ran its iterations)


class PPORun:
    """One run's models and state; :meth:`run` is the whole job."""

    def __init__(self, plan: PPOPlan, context: JobContext, judges: JudgeLoader = load_judges):
        self.plan, self.config, self.context = plan, plan.config, context
        self.judges = judges
        self.events = context.events
        self.model_dir = context.spec.output_dir / MODEL_DIR
        self.state = RunState()

    # -- models --

    def load(self) -> None:
        import torch
        from accelerate import Accelerator
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlhf.nn.devices import keep_freed_memory, use_cpu
        from rlhf.ppo.processes import Processes
        from rlhf.ppo.update import adamw
        from rlhf.ppo.value import load_value_model

        config = self.config
        # Several processes under `accelerate launch` (rlhf.ppo.processes); one otherwise.
        accelerator = Accelerator(cpu=use_cpu(config.cpu), mixed_precision="no")
        keep_freed_memory(accelerator.device)
        self.processes = Processes(accelerator, fsdp=config.fsdp)
        if self.processes.sharded:
            # Under `accelerate launch --use_fsdp`, transformers' low-memory loading leaves every
            # process but the first with empty weights, for accelerate's wrapping to broadcast;
            # the sharding here takes each process's shard of the weights it loaded itself.
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
        device = self.processes.device
        if config.rollout_batch_size % self.processes.world:
            raise JobError(
                "config.rollout_batch_size",
                f"{config.rollout_batch_size} prompts cannot be shared by "
                f"{self.processes.world} processes: make it a multiple of them",
            )
        torch.manual_seed(config.seed)  # the value head, where one is new: alike on every process
        self.tokenizer = AutoTokenizer.from_pretrained(config.policy)
        # Float32, the reference too: in another precision than the policy's its log-probs
        # would differ from the policy's at the start, a KL that is rounding, not learning.
        self.policy = AutoModelForCausalLM.from_pretrained(config.policy, dtype=torch.float32)
        self.policy.to(device)
        self.reference = AutoModelForCausalLM.from_pretrained(config.policy, dtype=torch.float32)
        self.reference.to(device).eval().requires_grad_(False)
        self.helpfulness, self.safety = self.judges(config, device)
        self.value_model = self.value_optimizer = self.trained_value = None
        if config.algorithm == "ppo":
            self.value_model, note = load_value_model(
                config.value_init, config.policy, self.tokenizer, config.reward_helpfulness
            )
            self.value_model.to(device)
            self.events.write("log", message=note)
        # What the update's forward passes go through: under several processes DDP wrappers,
        # or the models themselves, sharded in place (so the optimizers are made after).
        self.trained_policy = self.processes.wrap(self.policy)
        self.optimizer = adamw(self.policy, config)
        if self.value_model is not None:
            self.trained_value = self.processes.wrap(self.value_model)
            self.value_optimizer = adamw(self.value_model, config)

    # -- checkpoints --

    def record(self) -> dict[str, Any]:
        return {
            "iteration": self.state.iteration,
            "history": self.state.history,
            "evaluations": self.state.evaluations,
            "best": self.state.best,
            "since_best": self.state.since_best,
            "stopped": self.state.stopped,
            "config": self.config.to_dict(),
            "data": self.plan.data_digest,
        }

    def checkpoint(self) -> None:
        """Keep ``model/checkpoints/iteration-N`` (the newest only), written by the main process
        while the others wait for it."""
        import torch

        from rlhf.nn.sharding import full_state

        weights = {"policy": full_state(self.policy, self.optimizer)}  # every process gathers
        if self.value_model is not None:
            weights["value_model"] = full_state(self.value_model, self.value_optimizer)
        if self.processes.main:
            folder = self.model_dir / CHECKPOINTS_DIR / f"iteration-{self.state.iteration}"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(weights, folder / STATE_FILE)
            (folder / RECORD_FILE).write_text(json.dumps(self.record(), indent=1) + "\n")
            for stale in checkpoints(self.model_dir)[:-1]:
                shutil.rmtree(stale, ignore_errors=True)
        self.processes.wait()

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint, if the spec resumes and there is one
        of this config and these prompts (another raises ValueError)."""
        import torch

        from rlhf.nn.sharding import load_full_state

        found = checkpoints(self.model_dir)
        if not self.context.spec.resume or not found:
            return False
        folder = found[-1]
        record = json.loads((folder / RECORD_FILE).read_text())
        for key, expected in (("config", self.config.to_dict()), ("data", self.plan.data_digest)):
            if record[key] != expected:
                raise ValueError(
                    f"{folder} was written by a run with another {key}; use a new output "
                    "directory or delete its checkpoints"
                )
        weights = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        load_full_state(self.policy, self.optimizer, weights["policy"])
        if self.value_model is not None:
            load_full_state(self.value_model, self.value_optimizer, weights["value_model"])
        self.state = RunState(
            iteration=record["iteration"],
            history=record["history"],
            evaluations=record["evaluations"],
            best=record["best"],
            since_best=record["since_best"],
            stopped=record["stopped"],
        )
        self.events.write(
            "log", message=f"resumed from {folder} after iteration {record['iteration']}"
        )
        return True

    # -- evaluation --

    def evaluate(self) -> dict[str, Any]:
        """One response per held-out prompt (seeded by the prompt alone, so every evaluation
        draws with the same seeds), judged by the gate: the mean gated reward and its error."""
        from rlhf.nn.sharding import gathered

        self.policy.eval()
        with gathered(self.policy):  # sharded: gathered once for the whole evaluation
            judgements = self.judge_held_out(self.processes.share(self.plan.held_out))
        judgements = self.processes.gather_objects(judgements, len(self.plan.held_out))
        rewards, by_safety, lengths = (list(column) for column in zip(*judgements, strict=True))
        n = len(rewards)
        return {
            "reward": statistics.fmean(rewards),
            "reward_stderr": statistics.stdev(rewards) / n**0.5 if n > 1 else 0.0,
            "by_safety_share": statistics.fmean(by_safety),
            "response_length": statistics.fmean(lengths),
            "prompts": n,
        }

    def judge_held_out(self, prompts: list[Prompt]) -> list[tuple[float, bool, int]]:
        """(gated reward, decided by safety, tokens) of one response to each prompt."""
        from rlhf.rejection_sampling.sampling import judge, sample_groups, sample_seed

        config = self.config
        judgements = []
        for start in range(0, len(prompts), config.rollout_batch_size):
            batch = prompts[start : start + config.rollout_batch_size]
            seeds = [
                [sample_seed(config.seed, EVAL_ITERATION, p.key, config.temperature, 0)]
                for p in batch
            ]
            groups = sample_groups(
                self.policy, self.tokenizer, batch, seeds, temperature=config.temperature,
                top_p=config.top_p, max_new_tokens=config.max_new_tokens,
            )  # fmt: skip
            judged = judge(
                self.helpfulness, self.safety, batch, groups,
                batch_size=config.reward_batch_size, max_length=config.reward_max_length,
            )  # fmt: skip
            judgements += [(one.reward, one.by_safety, one.tokens) for [one] in judged]
            if self.context.eval_progress is not None:
                self.context.eval_progress(min(start + len(batch), len(prompts)), len(prompts))
        return judgements

    def record_evaluation(self) -> None:
        state = self.state
        metrics = {"iteration": state.iteration, **self.evaluate()}
        state.evaluations.append(metrics)
        self.events.write("evaluation", step=state.iteration, metrics=metrics)
        if state.best is None or metrics["reward"] > state.best["reward"]:
            state.best, state.since_best = metrics, 0
        else:
            state.since_best += 1
        self.events.write(
            "log",
            message=f"held-out gated reward {metrics['reward']:.4f} ± "
            f"{metrics['reward_stderr']:.4f} on {metrics['prompts']:,} prompts "
            f"(iteration {state.iteration}; best {state.best['reward']:.4f} at "
            f"{state.best['iteration']})",
        )
        patience = self.config.patience
        running = state.stopped is None and state.iteration < self.config.iterations
        if patience and state.since_best >= patience and running:
            state.stopped = "patience"

    # -- the run --

    def iterate(self) -> None:
        """One iteration: its rollout, its update (unless the KL bound stops the run first)."""
        from rlhf.nn.sharding import gathered
        from rlhf.ppo.processes import gather_rollout
        from rlhf.ppo.rollout import collect_rollout
        from rlhf.ppo.update import ppo_update, rollout_metrics, rollout_targets

        config, state = self.config, self.state
        iteration = state.iteration + 1
        started = time.perf_counter()
        prompts = iteration_prompts(
            self.plan.train, config.rollout_batch_size, config.seed, iteration
        )
        self.policy.eval()
        with gathered(self.policy):  # sharded: gathered once for the whole rollout
            mine = collect_rollout(
                self.policy, self.tokenizer, self.reference, self.helpfulness, self.safety,
                self.processes.share(prompts), config, iteration=iteration,
            )  # fmt: skip
        rollout = gather_rollout(mine, self.processes, prompts)
        targets_started = time.perf_counter()
        targets = rollout_targets(rollout, config, self.value_model)  # PPO: the values too
        targets_seconds = time.perf_counter() - targets_started
        record: dict[str, Any] = {"iteration": iteration, **rollout_metrics(rollout, targets)}
        times = rollout.times
        record["seconds_by_part"] = {
            "generation": times.generation,
            "scoring": times.scoring,
            "old_logprobs": times.old_logprobs,
            "reference_logprobs": times.reference_logprobs,
            "targets": targets_seconds,
        }
        state.iteration = iteration
        if config.max_kl is not None and record["kl"] > config.max_kl:
            state.stopped = "max_kl"
            state.history.append(record)
            self.events.write(
                "log",
                message=f"iteration {iteration}: KL {record['kl']:.4f} is above max_kl "
                f"{config.max_kl}: stopping before this update",
            )
            return
        update_started = time.perf_counter()
        update = ppo_update(
            self.trained_policy, self.optimizer, rollout, config, iteration=iteration,
            value_model=self.trained_value, value_optimizer=self.value_optimizer,
            targets=targets, processes=self.processes,
        )  # fmt: skip
        record.update(update.to_dict())
        record["seconds_by_part"]["update"] = time.perf_counter() - update_started
        record["seconds"] = time.perf_counter() - started
        state.history.append(record)
        self.events.write(
            "step",
            step=iteration,
            total_steps=config.iterations,
            loss=record["policy_loss"],
            learning_rate=config.learning_rate,
            pairs_per_second=record["responses"] / record["seconds"],
        )
        self.events.write("iteration", step=iteration, metrics=record)
        self.events.write("log", message=iteration_line(record, config.iterations))
        self.events.write("progress", fraction=iteration / config.iterations)

    def run(self) -> dict[str, Any]:
        config, state = self.config, self.state
        self.events.write(
            "log",
            message=f"{config.algorithm}: {len(self.plan.train):,} training prompts, "
            f"{len(self.plan.held_out):,} held out; {config.iterations} iterations of "
            f"{config.rollout_batch_size} prompts × {config.group_size}",
        )
        self.events.write("data", train=len(self.plan.train), held_out=len(self.plan.held_out))
        self.load()
        resumed = self.resume()
        state = self.state
        keeping = config.checkpoint_every > 0
        if not resumed and self.plan.held_out:
            self.record_evaluation()  # before training: the baseline
            if keeping:
                self.checkpoint()
        while state.iteration < config.iterations and state.stopped is None:
            self.iterate()
            due = config.eval_every and state.iteration % config.eval_every == 0
            if self.plan.held_out and due and state.stopped is None:
                self.record_evaluation()
            if keeping and state.iteration % config.checkpoint_every == 0:
                self.checkpoint()
            if self.processes.main:
                write_charts(self.context.spec.output_dir, state.history, state.evaluations)
        last = state.evaluations[-1]["iteration"] if state.evaluations else None
        if self.plan.held_out and last != state.iteration:
            self.record_evaluation()
            if keeping:
                self.checkpoint()
        self.save_model()
        if self.processes.main:
            write_charts(self.context.spec.output_dir, state.history, state.evaluations)
        self.processes.finish()
        return self.metrics()

    def metrics(self) -> dict[str, Any]:
        state = self.state
        trained = [r for r in state.history if "policy_loss" in r]
        stopped = {
            None: "ran its iterations",
            "patience": "stopped early (patience)",
            "max_kl": "stopped at max_kl",
        }
        evaluations = state.evaluations
        summary = (
            f"{self.config.algorithm}: {len(trained)} updates in {state.iteration} iterations "
            f"({stopped[state.stopped]})"
        )
        if evaluations:
            summary += (
                f"; held-out gated reward {evaluations[0]['reward']:.4f} → "
                f"{evaluations[-1]['reward']:.4f}"
            )
        return {
            "summary": summary,
            "algorithm": self.config.algorithm,
            "iterations": state.iteration,
            "updates": len(trained),
            "stopped": state.stopped,
            "train_prompts": len(self.plan.train),
            "held_out_prompts": len(self.plan.held_out),
            "history": state.history,
            "evaluations": evaluations,
            "before": evaluations[0] if evaluations else None,
            "after": evaluations[-1] if evaluations else None,
            "best": state.best,
            "final": state.history[-1] if state.history else None,
        }

    def save_model(self) -> None:
        from rlhf.files import normalize_permissions
        from rlhf.nn.sharding import full_state

        weights = full_state(self.policy)["model"]  # every process gathers
        if not self.processes.main:
            return
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(self.model_dir, state_dict=weights)
        self.tokenizer.save_pretrained(self.model_dir)
        metadata = {
            "base_model": self.config.policy,
            "config": self.config.to_dict(),
            "data": {
                "train_prompts": len(self.plan.train),
                "held_out_prompts": len(self.plan.held_out),
                "sha256": self.plan.data_digest,
            },
            "metrics": {k: v for k, v in self.metrics().items() if k != "history"},
            "history": self.state.history,
        }
        (self.model_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        normalize_permissions(self.model_dir)
        self.events.write("log", message=f"saved the policy to {self.model_dir}")


def write_charts(out_dir: Path, history: list[dict], evaluations: list[dict]) -> None:
    """``reward.svg`` and ``kl.svg`` in ``out_dir``: the rollouts' mean gated score and the
    held-out evaluations' against iteration; the mean KL per response against iteration."""
    from rlhf.charts import line_chart

    reward = line_chart(
        {
            "rollout": [(r["iteration"], r["reward"]) for r in history],
            "held-out": [(e["iteration"], e["reward"]) for e in evaluations],
        },
        title="Gated reward R_c (mean)", x_label="iteration", y_label="R_c", standalone=True,
    )  # fmt: skip
    kl = line_chart(
        {"KL": [(r["iteration"], r["kl"]) for r in history]},
        title="KL to the reference policy (nats per response)", x_label="iteration",
        y_label="KL", standalone=True,
    )  # fmt: skip
    for name, svg in (("reward.svg", reward), ("kl.svg", kl)):
        if svg:
            (out_dir / name).write_text(svg + "\n", encoding="utf-8")


def checkpoints(model_dir: Path) -> list[Path]:
    """The complete checkpoints in ``model_dir``, oldest first."""
    folder = model_dir / CHECKPOINTS_DIR
    found = [p for p in folder.glob("iteration-*") if (p / RECORD_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def iteration_line(record: dict[str, Any], total: int) -> str:
    """``"iteration 3/100: reward 0.512, KL 0.031, 25 % by safety, policy loss …"``."""
    line = (
        f"iteration {record['iteration']}/{total}: reward {record['reward']:.4f}, "
        f"KL {record['kl']:.4f}, {record['by_safety_share']:.0%} decided by safety, "
        f"length {record['response_length']:.1f}, policy loss {record['policy_loss']:.4f}, "
        f"clipped {record['clip_fraction']:.0%}, entropy {record['entropy']:.3f}"
    )
    if record.get("value_loss") is not None:
        line += f", value loss {record['value_loss']:.4f}"
    parts = record["seconds_by_part"]
    total = sum(parts.values())
    split = ", ".join(
        f"{name.replace('_', ' ')} {seconds / total:.0%}" for name, seconds in parts.items()
    )
    return line + f"; {total:.1f} s: {split}"


__all__ = [
    "INPUT_ROLES",
    "PPOPlan",
    "PPORun",
    "PPOStage",
    "iteration_prompts",
    "read_prompts",
    "write_charts",
]
