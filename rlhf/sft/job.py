"""The "sft" stage of a job (:mod:`rlhf.runner`): supervised fine-tuning from a run spec.

Inputs by role: ``data`` (required): JSONL files of conversations in any format
:mod:`rlhf.sft.data` reads (TRL messages or prompt-completion, the platform's exports, a
rejection-sampling pool), told apart file by file. No options. The config is
:class:`rlhf.sft.config.SFTConfig`; its ``base_model`` is the model fine-tuned. The examples
of all files are split into training and held-out ones by their first user turn
(``eval_fraction``, ``seed``); the model goes to the job's ``model/``, and the metrics hold the
held-out loss and perplexity before and after training.

The contract's "step" event names its rate ``pairs_per_second``; an SFT job writes there the
examples (conversations) it trains on per second, and its tokens per second to the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf.jobs import EVENT_TYPES, MODEL_DIR, JobContext, JobError, RunSpec
from rlhf.sft.config import SFTConfig
from rlhf.sft.data import SFTExample, load_examples, split_examples

INPUT_ROLES = ("data",)


@dataclass
class SFTPlan:
    """What :meth:`SFTStage.prepare` read: the config, the examples, what it noted."""

    config: SFTConfig
    train: list[SFTExample]
    held_out: list[SFTExample]
    notes: list[str]


class SFTStage:
    def prepare(self, spec: RunSpec) -> SFTPlan:
        for role in spec.inputs:
            if role not in INPUT_ROLES:
                raise JobError(f"inputs.{role}", f"is not an input of an SFT job: {INPUT_ROLES}")
        if not spec.paths("data"):
            raise JobError("inputs.data", "names no file: an SFT job trains on conversations")
        if spec.options:
            name = next(iter(spec.options))
            raise JobError(f"options.{name}", "is not an option of an SFT job (it has none)")
        config = SFTConfig.from_dict(spec.config)
        if not config.base_model:
            raise JobError("config.base_model", "is required: the model fine-tuned")
        examples: list[SFTExample] = []
        notes = []
        for path in spec.paths("data"):
            loaded = load_examples(path)
            notes.append(f"data: {loaded.summary()}")
            examples += loaded.examples
        train, held_out = split_examples(examples, config.eval_fraction, config.seed)
        if not train:
            raise JobError(
                "config.eval_fraction",
                f"every example is held out at eval_fraction {config.eval_fraction}: lower it "
                "or add data",
            )
        return SFTPlan(config, train, held_out, notes)

    def train(self, plan: SFTPlan, context: JobContext) -> dict[str, Any]:
        from rlhf.sft.training import train_sft

        events, spec = context.events, context.spec
        for note in plan.notes:
            events.write("log", message=note)
        events.write(
            "log",
            message=f"{len(plan.train):,} conversations to train on, {len(plan.held_out):,} "
            "held out",
        )
        events.write("data", train=len(plan.train), held_out=len(plan.held_out))
        result = train_sft(
            plan.config,
            plan.train,
            plan.held_out,
            spec.output_dir / MODEL_DIR,
            progress=_trainer_events(events),
        )
        step_limit = "max_steps" if plan.config.max_steps is not None else None
        return {
            "summary": result.summary(step_limit),
            "steps": result.steps,
            "train_examples": result.train_examples,
            "eval_examples": len(plan.held_out),
            "left_out": result.left_out,
            "examples_trained": result.examples_trained,
            "tokens_trained": result.tokens_trained,
            "targets_trained": result.targets_trained,
            "seconds": result.seconds,
            "examples_per_second": result.examples_per_second,
            "tokens_per_second": result.tokens_per_second,
            "history": result.history,
            "metrics": result.metrics,
        }


def _trainer_events(events):
    """The trainer's progress callback, writing its events as the job's records."""

    def record(event: dict) -> None:
        if event["event"] == "log":
            events.write("log", message=event["message"])
        elif event["event"] == "step":
            fields = {name: event[name] for name in EVENT_TYPES["step"] if name in event}
            events.write("step", **fields, pairs_per_second=event["examples_per_second"])
            events.write("progress", fraction=event["step"] / event["total_steps"])
        elif event["event"] == "eval":
            events.write("evaluation", step=event["step"], metrics=event["metrics"])

    return record


__all__ = ["INPUT_ROLES", "SFTPlan", "SFTStage"]
