"""The reward stages of a job (:mod:`rlhf.runner`): "reward" trains a reward model from a run
spec, "reward-eval" evaluates one (``eval-reward``; see :class:`RewardEvalStage`).

Inputs by role: ``data`` (preference pairs, required), ``open_helpfulness`` and
``open_harmlessness`` (the open-source sets of the paper's recipe). Options:

- ``recipe``: "none" (the pairs of the config's kind only) or "paper" (the Llama 2 mix);
- ``baseline``: ``{"model": DIR, "batch": NAME}``: before training, evaluate that model (the
  current reward model of the kind) on the pairs of batch NAME (the newest), Llama 2's check of
  how well the old model predicts new data. Its result is a "baseline" event and part of the
  final metrics; a model that cannot be evaluated is reported there, not fatal.

How the pairs are chosen, split and mixed is :func:`training_data`; ``train-reward`` builds the
same spec from its flags. The model goes to the job's ``model/``.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.data.mixes import (
    HELPFULNESS,
    OPEN_SOURCE_HARMLESSNESS,
    OPEN_SOURCE_HELPFULNESS,
    RECIPES,
    SAFETY,
    mix,
)
from rlhf.data.pairs import KINDS, DataError, PreferencePair, load_pairs
from rlhf.data.split import split
from rlhf.jobs import EVENT_TYPES, MODEL_DIR, JobContext, JobError, RunSpec, read_events
from rlhf.reward.config import RewardEvalConfig, RewardTrainingConfig

INPUT_ROLES = ("data", "open_helpfulness", "open_harmlessness")
# none: the pairs of the model's kind; all: every pair, whatever its kind (the platform, whose
# staff chose the batches); paper: the Llama 2 mix.
RECIPE_CHOICES = ("none", "all", "paper")
OPTIONS = ("recipe", "baseline")


@dataclass
class Sources:
    """The files a reward model trains on, by role, and how they are mixed."""

    kind: str
    data: list[Path]
    recipe: str = "none"
    open_helpfulness: list[Path] = field(default_factory=list)
    open_harmlessness: list[Path] = field(default_factory=list)


@dataclass
class RewardPlan:
    """What :meth:`RewardStage.prepare` read: the config, the pairs, what it noted."""

    config: RewardTrainingConfig
    train: list[PreferencePair]
    held_out: list[PreferencePair]
    notes: list[str]
    baseline: dict[str, Any] | None = None  # {"model", "batch", "pairs": [PreferencePair]}


def load_files(files: list[Path], kind: str | None, margin_table: str) -> list[PreferencePair]:
    """Every pair of ``files``; pairs whose records carry no kind take ``kind``.

    A record's own kind is kept: the platform's default export holds both kinds.
    """
    pairs: list[PreferencePair] = []
    for file in files:
        if not file.is_file():
            raise DataError(str(file), None, None, "no such file")
        for pair in load_pairs(file, margin_table=margin_table):
            if pair.kind is None and kind is not None:
                pair = dataclasses.replace(pair, kind=kind)
            pairs.append(pair)
    return pairs


def count_by_kind(pairs: list[PreferencePair]) -> str:
    """``"1,512 helpfulness and 369 safety pairs"``."""
    kinds = Counter(pair.kind or "unlabelled" for pair in pairs)
    parts = [f"{kinds[kind]:,} {kind}" for kind in (*KINDS, "unlabelled") if kinds[kind]]
    return (" and ".join(parts) or "0") + " pairs"


def _count_by_source(pairs: list[PreferencePair], source_of: dict[int, str], names) -> str:
    """``"369 helpfulness, 124 safety, 245 open_source_helpfulness"``, in the order of names."""
    counts = Counter(source_of[id(pair)] for pair in pairs)
    return ", ".join(f"{counts[name]:,} {name}" for name in names if counts[name])


def training_data(
    sources: Sources, config: RewardTrainingConfig, report: Callable[[str], None] = print
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out) pairs (see ``train-reward --help``).

    Without a recipe only the pairs of ``sources.kind`` are used (the others are counted and
    left out). With the paper's recipe the training parts are mixed the Llama 2 way
    (:data:`rlhf.data.mixes.RECIPES`); held-out pairs are never mixed: all are evaluated.
    ``report`` receives a line per thing used: each file's pairs by kind, and what was left out
    or mixed in.
    """
    table = config.margin_table
    data = []
    for file in sources.data:
        pairs = load_files([file], sources.kind, table)
        report(f"data: {file}: {count_by_kind(pairs)}")
        data += pairs
    if sources.recipe == "all":
        return split(data, config.eval_fraction, config.seed)
    if sources.recipe == "none":
        if sources.open_helpfulness or sources.open_harmlessness:
            raise ValueError("--open-helpfulness/--open-harmlessness need --recipe paper")
        wanted = [pair for pair in data if pair.kind == sources.kind]
        if not wanted:
            raise ValueError(
                f"no {sources.kind} pairs in {', '.join(map(str, sources.data))} (they hold "
                f"{count_by_kind(data)}): pass --kind to match the data, or --recipe paper to "
                "mix the other kind in the Llama 2 way"
            )
        left_out = len(data) - len(wanted)
        if left_out:
            report(
                f"training the {sources.kind} model on the {len(wanted):,} {sources.kind} "
                f"pairs; {left_out:,} pairs of another kind are left out (--recipe paper mixes "
                "them in)"
            )
        return split(wanted, config.eval_fraction, config.seed)
    train, held_out = split(data, config.eval_fraction, config.seed)
    by_source: dict[str, list[PreferencePair]] = {HELPFULNESS: [], SAFETY: []}
    for pair in train:
        by_source[pair.kind or sources.kind].append(pair)
    for name, files, kind in (
        (OPEN_SOURCE_HELPFULNESS, sources.open_helpfulness, "helpfulness"),
        (OPEN_SOURCE_HARMLESSNESS, sources.open_harmlessness, "safety"),
    ):
        open_pairs = []
        for file in files:
            pairs = load_files([file], kind, table)
            report(f"data ({name}): {file}: {len(pairs):,} pairs")
            open_pairs += pairs
        open_train, open_held_out = split(open_pairs, config.eval_fraction, config.seed)
        by_source[name] = open_train
        held_out += open_held_out
    source_of = {id(pair): name for name, pairs in by_source.items() for pair in pairs}
    recipe = RECIPES[sources.kind]
    mixed = mix(recipe, by_source, seed=config.seed)
    report(
        f"recipe paper ({sources.kind}): {len(mixed):,} training pairs: "
        f"{_count_by_source(mixed, source_of, recipe.sources)} (all of {', '.join(recipe.base)}, "
        f"{recipe.proportion[0]}:{recipe.proportion[1]} with {', '.join(recipe.extra)}); "
        f"{len(held_out):,} held out ({count_by_kind(held_out)})"
    )
    return mixed, held_out


def _check_options(spec: RunSpec) -> None:
    for role in spec.inputs:
        if role not in INPUT_ROLES:
            raise JobError(f"inputs.{role}", f"is not an input of a reward job: {INPUT_ROLES}")
    if not spec.paths("data"):
        raise JobError("inputs.data", "names no file: a reward job trains on preference pairs")
    for name in spec.options:
        if name not in OPTIONS:
            raise JobError(f"options.{name}", f"is not an option of a reward job: {OPTIONS}")
    if spec.options.get("recipe", "none") not in RECIPE_CHOICES:
        raise JobError("options.recipe", f"must be one of {RECIPE_CHOICES}")
    baseline = spec.options.get("baseline")
    if baseline is not None and (
        not isinstance(baseline, dict)
        or set(baseline) != {"model", "batch"}
        or not all(isinstance(value, str) and value for value in baseline.values())
    ):
        raise JobError("options.baseline", "must be {model: directory, batch: batch name}")


def _evaluate_baseline(plan: RewardPlan, context: JobContext) -> dict[str, Any]:
    """The current model on the newest batch's pairs (see the module docstring)."""
    import torch

    from rlhf.reward.evaluation import evaluate_reward_model
    from rlhf.reward.model import load_reward_backbone

    baseline = plan.baseline
    result: dict[str, Any] = {
        "model": baseline["model"],
        "batch": baseline["batch"],
        "pairs": len(baseline["pairs"]),
        "metrics": None,
        "error": None,
    }
    if not baseline["pairs"]:
        result["error"] = f"batch {baseline['batch']!r} holds no preference pairs"
    else:
        context.events.write(
            "log",
            message=f"evaluating the current model {baseline['model']} on the newest batch "
            f"{baseline['batch']!r} ({len(baseline['pairs'])} pairs) before training",
        )
        try:
            # The backbone loader reads a saved reward model's head too, and needs no
            # pairwise_reward.json (a model registered by hand).
            model, tokenizer = load_reward_backbone(baseline["model"])
            if torch.cuda.is_available() and not plan.config.cpu:
                model.to("cuda")
            result["metrics"] = evaluate_reward_model(
                model,
                tokenizer,
                baseline["pairs"],
                batch_size=plan.config.eval_batch_size,
                max_length=plan.config.max_length,
            )
            del model
        except Exception as error:
            result["error"] = f"{type(error).__name__}: {error}"
            context.events.write(
                "log", message=f"could not evaluate {baseline['model']}:\n{traceback.format_exc()}"
            )
    context.events.write("baseline", **result)
    return result


class RewardStage:
    def prepare(self, spec: RunSpec) -> RewardPlan:
        _check_options(spec)
        config = RewardTrainingConfig.from_dict(spec.config)
        sources = Sources(
            kind=config.kind,
            data=spec.paths("data"),
            recipe=spec.options.get("recipe", "none"),
            open_helpfulness=spec.paths("open_helpfulness"),
            open_harmlessness=spec.paths("open_harmlessness"),
        )
        notes: list[str] = []
        train, held_out = training_data(sources, config, report=notes.append)
        if not train:
            raise JobError(
                "config.eval_fraction",
                f"every pair is held out at eval_fraction {config.eval_fraction}: lower it or "
                "add data",
            )
        plan = RewardPlan(config, train, held_out, notes)
        if "baseline" in spec.options:
            batch = spec.options["baseline"]["batch"]
            pairs = load_files(sources.data, config.kind, config.margin_table)
            # The model's kind only, unless the run trains on every kind (recipe "all").
            kinds = set(KINDS) if sources.recipe == "all" else {config.kind}
            plan.baseline = {
                **spec.options["baseline"],
                "pairs": [pair for pair in pairs if pair.batch == batch and pair.kind in kinds],
            }
        return plan

    def train(self, plan: RewardPlan, context: JobContext) -> dict[str, Any]:
        from rlhf.reward.training import train_reward_model

        events, spec = context.events, context.spec
        for note in plan.notes:
            events.write("log", message=note)
        events.write(
            "log", message=f"{len(plan.train):,} pairs to train on, {len(plan.held_out):,} held out"
        )
        events.write("data", train=len(plan.train), held_out=len(plan.held_out))
        baseline = None
        if plan.baseline is not None:
            done = [e for e in read_events(events.path) if e["type"] == "baseline"]
            baseline = done[-1] if done else _evaluate_baseline(plan, context)
            baseline = {key: baseline[key] for key in EVENT_TYPES["baseline"]}
        result = train_reward_model(
            plan.config,
            plan.train,
            plan.held_out,
            spec.output_dir / MODEL_DIR,
            progress=_trainer_events(events),
            eval_progress=context.eval_progress,
        )
        step_limit = "max_steps" if plan.config.max_steps is not None else None
        return {
            "summary": result.summary(step_limit),
            "steps": result.steps,
            "train_pairs": result.train_pairs,
            "eval_pairs": len(plan.held_out),
            "pairs_trained": result.pairs_trained,
            "distinct_pairs_trained": result.distinct_pairs_trained,
            "seconds": result.seconds,
            "pairs_per_second": result.pairs_per_second,
            "history": result.history,
            "metrics": result.metrics,
            "baseline": baseline,
        }


def _trainer_events(events):
    """The trainer's progress callback, writing its events as the job's records."""

    def record(event: dict) -> None:
        if event["event"] == "log":
            events.write("log", message=event["message"])
        elif event["event"] == "step":
            events.write("step", **{name: event[name] for name in EVENT_TYPES["step"]})
            events.write("progress", fraction=event["step"] / event["total_steps"])
        elif event["event"] == "eval":
            events.write("evaluation", step=event["step"], metrics=event["metrics"])

    return record


# --- the "reward-eval" stage ---------------------------------------------------------------------


@dataclass
class EvalPlan:
    config: RewardEvalConfig
    model_dir: Path
    pairs: list[PreferencePair]
    max_length: int


class RewardEvalStage:
    """Evaluate a reward model (option ``model``: its directory, or a run holding one) on the
    pairs of ``inputs.data``; the metrics of :mod:`rlhf.reward.evaluation` are the job's."""

    def prepare(self, spec: RunSpec) -> EvalPlan:
        from rlhf.reward.model import METADATA_FILE, read_metadata, reward_model_dir

        for role in spec.inputs:
            if role != "data":
                raise JobError(f"inputs.{role}", "is not an input of an evaluation: data")
        if not spec.paths("data"):
            raise JobError("inputs.data", "names no file: an evaluation scores preference pairs")
        for name in spec.options:
            if name != "model":
                raise JobError(f"options.{name}", "is not an option of an evaluation: model")
        model = spec.options.get("model")
        model_dir = reward_model_dir(model) if isinstance(model, str) and model else None
        if model_dir is None or not (model_dir / METADATA_FILE).is_file():
            raise JobError(
                "options.model",
                f"{model}: not a reward model directory, nor a run holding one (no "
                f"{METADATA_FILE})",
            )
        config = RewardEvalConfig.from_dict(spec.config)
        trained = read_metadata(model_dir).get("config", {})
        kind = config.kind or read_metadata(model_dir).get("kind")
        pairs = load_files(spec.paths("data"), kind, trained.get("margin_table", "small"))
        max_length = config.max_length or trained.get("max_length", 512)
        return EvalPlan(config, model_dir, pairs, max_length)

    def train(self, plan: EvalPlan, context: JobContext) -> dict[str, Any]:
        from rlhf.nn.devices import use_cpu
        from rlhf.reward.evaluation import evaluate_reward_model
        from rlhf.reward.model import load_reward_model

        events = context.events
        events.write("log", message=f"evaluating {plan.model_dir} on {len(plan.pairs):,} pairs")
        model, tokenizer, _ = load_reward_model(plan.model_dir)
        if not use_cpu(plan.config.cpu):
            model.to("cuda")
        total = len(plan.pairs)

        def scored(done: int) -> None:
            events.write("progress", fraction=done / total if total else 1.0)
            if context.eval_progress is not None:
                context.eval_progress(done, total)

        metrics = evaluate_reward_model(
            model,
            tokenizer,
            plan.pairs,
            batch_size=plan.config.batch_size,
            max_length=plan.max_length,
            progress=_running_total(scored),
        )
        metrics["model"] = str(context.spec.options["model"])
        metrics["data"] = [str(path) for path in context.spec.paths("data")]
        return metrics


def _running_total(report: Callable[[int], None]) -> Callable[[int], None]:
    """evaluate_reward_model reports the pairs of each batch; ``report`` wants the total."""
    done = 0

    def add(count: int) -> None:
        nonlocal done
        done += count
        report(done)

    return add
