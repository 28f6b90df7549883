"""The "gatt" stage of a job (:mod:`rlhf.runner`): Ghost Attention's data, then SFT on it.

Inputs by role: ``dialogues`` (required): files of multi-turn dialogues
(:func:`rlhf.gatt.data.load_dialogues`: MT-Bench, HH-RLHF, prompt files with later turns).
No options. The config is :class:`rlhf.gatt.config.GAttConfig`: ``policy`` samples,
``base_model`` is fine-tuned (they may differ: the paper samples with its latest, largest
model).

1. Dialogues with fewer than two user turns, and repeats, are left out; the rest are cut to
   ``turns`` user turns and split by their first user turn (``eval_fraction``, ``seed``); at
   most ``max_eval_dialogues`` held-out ones are used.
2. Each dialogue gets an instruction drawn from the seed and its key
   (:func:`instruction_for`), and is sampled by the policy with the instruction in every user
   turn (:func:`rlhf.gatt.data.sample_dialogues`, ``filter_adherent``). The SFT examples —
   the instruction in the first turn only, the loss on the last turn only — go to
   ``gatt_data.jsonl`` (the held-out dialogues' to ``gatt_held_out.jsonl``): ``python -m rlhf
   sft`` reads them too. ``gatt_sampling.json`` is written last; a resumed job that finds it
   reuses the files instead of sampling again.
3. Adherence by turn on the held-out dialogues whose instruction is rule-checkable, with the
   instruction in the first turn only (:mod:`rlhf.gatt.evaluation`): of the base model, then
   of the model fine-tuned on the examples (:func:`rlhf.sft.training.train_sft`, into
   ``model/``).

The metrics: the dialogues read, kept and dropped, the examples, the adherence of the sampled
data by turn (first samples, the instruction in every turn), the adherence by turn before and
after, and the SFT run's.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.data.split import held_out
from rlhf.gatt.config import GAttConfig
from rlhf.gatt.data import (
    Dialogue,
    PolicySampler,
    SampledDialogue,
    adherence_table,
    gatt_accept,
    gatt_examples,
    load_dialogues,
    sample_dialogues,
    write_examples,
)
from rlhf.gatt.instructions import Instruction, draw_instruction
from rlhf.jobs import MODEL_DIR, JobContext, JobError, RunSpec
from rlhf.sft.data import SFTExample, load_examples

INPUT_ROLES = ("dialogues",)
DATA_FILE = "gatt_data.jsonl"
HELD_OUT_FILE = "gatt_held_out.jsonl"
SAMPLING_FILE = "gatt_sampling.json"


@dataclass
class GAttPlan:
    config: GAttConfig
    train: list[Dialogue]
    held_out: list[Dialogue]
    counts: dict[str, int]  # what was read and left out


def read_dialogues(spec: RunSpec, config: GAttConfig) -> GAttPlan:
    """The dialogues of the inputs, split (step 1 of the module docstring)."""
    counts = Counter(read=0, single_turn=0, repeats=0)
    seen: set[str] = set()
    train, kept_back = [], []
    for path in spec.paths("dialogues"):
        for dialogue in load_dialogues(path):
            counts["read"] += 1
            if len(dialogue.user_turns) < 2:
                counts["single_turn"] += 1
                continue
            dialogue = Dialogue(dialogue.user_turns[: config.turns], dialogue.source)
            if dialogue.key in seen:
                counts["repeats"] += 1
                continue
            seen.add(dialogue.key)
            side = held_out(dialogue.opening, config.eval_fraction, config.seed)
            (kept_back if side else train).append(dialogue)
    limit = config.max_eval_dialogues
    return GAttPlan(config, train, kept_back[:limit], dict(counts))


class GAttStage:
    def prepare(self, spec: RunSpec) -> GAttPlan:
        for role in spec.inputs:
            if role not in INPUT_ROLES:
                raise JobError(f"inputs.{role}", f"is not an input of a GAtt job: {INPUT_ROLES}")
        if not spec.paths("dialogues"):
            raise JobError("inputs.dialogues", "names no file: GAtt samples multi-turn dialogues")
        if spec.options:
            raise JobError(f"options.{next(iter(spec.options))}", "a GAtt job takes none")
        config = GAttConfig.from_dict(spec.config)
        if not config.base_model:
            raise JobError("config.base_model", "is required: the model fine-tuned")
        if not config.policy:
            raise JobError("config.policy", "is required: the model that samples")
        if not Path(config.policy).is_dir():
            raise JobError("config.policy", f"{config.policy}: no such directory")
        plan = read_dialogues(spec, config)
        if not plan.train:
            raise JobError(
                "inputs.dialogues",
                f"no multi-turn dialogue to train on ({plan.counts['read']:,} read, "
                f"{plan.counts['single_turn']:,} of one turn; eval_fraction "
                f"{config.eval_fraction} holds out the rest)",
            )
        return plan

    def train(self, plan: GAttPlan, context: JobContext) -> dict[str, Any]:
        return run_gatt(plan, context)


def instruction_for(config: GAttConfig, dialogue: Dialogue) -> Instruction:
    """The dialogue's instruction: drawn from the run's seed and the dialogue's key, so it does
    not depend on the other dialogues nor on their order."""
    rng = random.Random(f"pairwise-gatt\x00{config.seed}\x00{dialogue.key}")
    return draw_instruction(
        rng,
        families=config.families,
        max_families=config.max_families,
        short_fraction=config.short_fraction,
    )


def sampling_report(sampled: list[SampledDialogue], held: list[SampledDialogue]) -> dict[str, Any]:
    """What sampling did: dialogues kept and dropped, resamples, the first samples' adherence
    by turn (the instruction in every turn), the instructions drawn."""
    everything = sampled + held
    families = Counter(f for s in everything for f in s.instruction.families)
    return {
        "dialogues": len(everything),
        "kept": sum(s.kept for s in sampled),
        "held_out_kept": sum(s.kept for s in held),
        "dropped": sum(not s.kept for s in everything),
        "resamples": sum(s.resamples for s in everything),
        "adherence": adherence_table(everything),
        "instructions": {
            "families": dict(sorted(families.items())),
            "combined": sum(len(s.instruction.constraints) > 1 for s in everything),
            "short": sum(s.instruction.short for s in everything),
            "checkable": sum(s.instruction.checkable for s in everything),
        },
    }


# --- the stage's work, with its models loaded ----------------------------------------------------


def _device(config: GAttConfig):
    import torch

    from rlhf.nn.devices import use_cpu

    return torch.device("cpu" if use_cpu(config.cpu) else "cuda")


def _sampler(config: GAttConfig, model_dir: str) -> PolicySampler:
    from rlhf.policy_eval.job import load_policy

    model, tokenizer = load_policy(model_dir, _device(config))
    return PolicySampler(
        model,
        tokenizer,
        config.temperature,
        config.top_p,
        config.max_new_tokens,
        config.prompt_batch_size,
    )


def _examples(path: Path) -> list[SFTExample]:
    return load_examples(path).examples if path.stat().st_size else []


def read_data(out: Path) -> tuple[list[SFTExample], list[SFTExample], dict[str, Any]]:
    """The examples (training, held out) and the sampling report an interrupted run wrote."""
    report = json.loads((out / SAMPLING_FILE).read_text(encoding="utf-8"))
    return _examples(out / DATA_FILE), _examples(out / HELD_OUT_FILE), report


def build_data(
    plan: GAttPlan, context: JobContext, sampler: PolicySampler
) -> tuple[list[SFTExample], list[SFTExample], dict[str, Any]]:
    """Step 2 of the module docstring: the examples (training, held out), written, and the
    sampling report."""
    config, events, out = plan.config, context.events, context.spec.output_dir
    runs = {}
    for side, dialogues in (("training", plan.train), ("held-out", plan.held_out)):

        def logged(turn: int, asked: int, side: str = side) -> None:
            events.write("log", message=f"sampled turn {turn} of {asked:,} {side} dialogues")

        runs[side] = sample_dialogues(
            sampler,
            dialogues,
            [instruction_for(config, d) for d in dialogues],
            turns=config.turns,
            seed=config.seed,
            every_turn=True,
            accept=gatt_accept(config.filter_adherent),
            max_resamples=config.max_resamples,
            repair=config.repair_rules,
            on_turn=logged,
        )
    train, held = gatt_examples(runs["training"]), gatt_examples(runs["held-out"])
    report = sampling_report(runs["training"], runs["held-out"])
    if context.main_process:  # (under accelerate every process samples the same)
        write_examples(out / DATA_FILE, train)
        write_examples(out / HELD_OUT_FILE, held)
        (out / SAMPLING_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return train, held, report


def evaluate_adherence(plan: GAttPlan, model_dir: str, sampler=None) -> list[dict] | None:
    """Adherence by turn (instruction in the first turn only) on the held-out dialogues whose
    instruction is rule-checkable; None without any."""
    from rlhf.gatt.evaluation import adherence_of

    config = plan.config
    pairs = [(d, instruction_for(config, d)) for d in plan.held_out]
    pairs = [(d, i) for d, i in pairs if i.checkable]
    if not pairs:
        return None
    sampler = sampler or _sampler(config, model_dir)
    dialogues, instructions = zip(*pairs, strict=True)
    return adherence_of(sampler, dialogues, instructions, config.turns, config.seed)


def run_gatt(plan: GAttPlan, context: JobContext) -> dict[str, Any]:
    from rlhf.gatt.evaluation import format_adherence
    from rlhf.sft.job import _trainer_events  # the SFT stage's events, written the same way
    from rlhf.sft.training import train_sft

    config, events, out = plan.config, context.events, context.spec.output_dir
    counts = plan.counts
    events.write(
        "log",
        message=f"{counts['read']:,} dialogues read ({counts['single_turn']:,} of one turn and "
        f"{counts['repeats']:,} repeats left out): {len(plan.train):,} to "
        f"train on, {len(plan.held_out):,} held out; sampled by {config.policy}, up to "
        f"{config.turns} turns",
    )
    events.write("data", train=len(plan.train), held_out=len(plan.held_out))
    resuming = context.spec.resume and (out / SAMPLING_FILE).is_file()
    sampler = None if resuming else _sampler(config, config.policy)
    if sampler is None:
        events.write("log", message=f"resuming: the GAtt data of {out / DATA_FILE} kept")
        train, held, report = read_data(out)
    else:
        train, held, report = build_data(plan, context, sampler)
    if not train:
        raise ValueError(
            "no training dialogue was kept: every one had a turn that broke its instruction "
            f"{config.max_resamples + 1} times (raise max_resamples or set filter_adherent false)"
        )
    events.write(
        "log",
        message=f"{report['kept']:,} training dialogues kept ({report['dropped']:,} dropped in "
        f"all, {report['resamples']:,} replies resampled): {len(train):,} examples, "
        f"{len(held):,} held out",
    )
    same = sampler if config.base_model == config.policy else None
    before = evaluate_adherence(plan, config.base_model, same)
    del sampler, same  # the sampling model is not needed while training
    result = train_sft(
        config.sft_config(), train, held, out / MODEL_DIR, progress=_trainer_events(events)
    )
    after = evaluate_adherence(plan, str(out / MODEL_DIR))
    adherence = None if before is None else {"base": before, "trained": after}
    if adherence is not None:
        table = format_adherence({"base": before, "trained": after})
        events.write("log", message=f"adherence by turn, instruction in turn 1 only:\n{table}")
    step_limit = "max_steps" if config.max_steps is not None else None
    return {
        "summary": f"GAtt on {report['kept']:,} dialogues ({len(train):,} examples); "
        + result.summary(step_limit),
        "dialogues": {**counts, "train": len(plan.train), "held_out": len(plan.held_out)},
        "examples": {"train": len(train), "held_out": len(held)},
        "sampling": report,
        "adherence": adherence,
        "data": str(out / DATA_FILE),
        "steps": result.steps,
        "left_out": result.left_out,
        "tokens_trained": result.tokens_trained,
        "seconds": result.seconds,
        "tokens_per_second": result.tokens_per_second,
        "history": result.history,
        "metrics": result.metrics,
    }


__all__ = ["DATA_FILE", "HELD_OUT_FILE", "INPUT_ROLES", "GAttPlan", "GAttStage", "instruction_for"]
