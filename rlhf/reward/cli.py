"""``python -m rlhf train-reward`` and ``python -m rlhf eval-reward``.

    python -m rlhf train-reward --kind safety --data export.jsonl hh/harmless-base.jsonl.gz \\
        --base models/policy --out models/rm-safety
    python -m rlhf eval-reward --model models/rm-safety --data new-batch.jsonl > metrics.json

Training data: every ``--data`` file is loaded with :func:`rlhf.data.load_pairs` (pairs without a
kind of their own take ``--kind``) and split into train and held-out pairs by context
(:func:`rlhf.data.split`, ``--eval-fraction``, ``--seed``). Without a recipe only the pairs of
``--kind`` are used (the platform's default export holds both kinds; the others are counted and
left out). With ``--recipe paper`` the training parts are mixed with the Llama 2 recipe of
``--kind`` (:data:`rlhf.data.RECIPES`): the pairs of ``--data`` are the platform's helpfulness or
safety data by their kind, those of ``--open-helpfulness`` / ``--open-harmlessness`` the
open-source sets. Held-out pairs are never mixed: they are all evaluated. The command reports what
it used (pairs per file and kind, the mix). Under ``accelerate launch`` only the main process
prints. ``TRAIN_DESCRIPTION`` is the same in plain words, for ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

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
from rlhf.jobs import EVENT_TYPES, MODEL_DIR, JobError
from rlhf.reward.config import ConfigError, RewardTrainingConfig

# A reward job's inputs by role (rlhf/jobs.py): --data, and the open-source sets of the recipe.
REWARD_INPUT_ROLES = ("data", "open_helpfulness", "open_harmlessness")
RECIPE_CHOICES = ("none", "paper")

# The --help text (the module docstring is for readers of the code).
TRAIN_DESCRIPTION = """\
Train a helpfulness or safety reward model on preference pairs.

  python -m rlhf train-reward --kind safety --data export.jsonl hh/harmless-base.jsonl.gz \\
      --base models/policy --out models/rm-safety

--data takes the platform's training export (trl), TRL-format JSONL, canonical exports and
HH-RLHF transcripts, gzip-compressed or not; pairs whose records carry no kind (HH-RLHF, say)
take --kind. The pairs are split into training and held-out pairs by prompt (--eval-fraction,
--seed). Without a recipe, the model trains on the pairs of its --kind only: the pairs of the
other kind in a mixed file (the platform's default export holds both) are left out, and the
command says how many. With --recipe paper, the training pairs are mixed the Llama 2 way: a
helpfulness model trains on all helpfulness pairs plus as many drawn from the safety and
open-source pairs; a safety model on all safety and open-source harmlessness pairs plus 10 %
from helpfulness data (--open-helpfulness / --open-harmlessness name the open-source files).
Held-out pairs are never mixed: all of them are evaluated. The command prints what it used.

On a terminal, training shows a progress bar; into a file or a pipe, it writes a line per
tenth of the run instead. Under "accelerate launch" only the main process prints."""

# Command-line option -> RewardTrainingConfig field, for the hyperparameters.
HYPERPARAMETERS = {
    "lr": ("learning_rate", float),
    "batch_size": ("micro_batch_size", int),
    "gradient_accumulation": ("gradient_accumulation_steps", int),
    "epochs": ("epochs", int),
    "max_steps": ("max_steps", int),
    "max_length": ("max_length", int),
    "warmup_ratio": ("warmup_ratio", float),
    "min_lr_ratio": ("min_lr_ratio", float),
    "weight_decay": ("weight_decay", float),
    "max_grad_norm": ("max_grad_norm", float),
    "margin_table": ("margin_table", str),
    "prefix_sharing": ("prefix_sharing", str),
    "mixed_precision": ("mixed_precision", str),
    "seed": ("seed", int),
    "eval_fraction": ("eval_fraction", float),
    "eval_every": ("eval_every", int),
    "checkpoint_every": ("checkpoint_every", int),
}


def add_commands(commands) -> None:
    train = commands.add_parser(
        "train-reward",
        help="train a helpfulness or safety reward model",
        description=TRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--kind", choices=KINDS, required=True)
    train.add_argument("--data", type=Path, nargs="+", required=True, metavar="FILE")
    train.add_argument("--base", required=True, help="backbone: a model directory or hub id")
    train.add_argument("--out", type=Path, required=True, help="output directory")
    train.add_argument("--recipe", choices=RECIPE_CHOICES, default="none")
    train.add_argument("--open-helpfulness", type=Path, nargs="*", default=[], metavar="FILE")
    train.add_argument("--open-harmlessness", type=Path, nargs="*", default=[], metavar="FILE")
    defaults = RewardTrainingConfig()
    for option, (name, kind) in HYPERPARAMETERS.items():
        train.add_argument(
            "--" + option.replace("_", "-"),
            dest=option,
            type=kind,
            default=None,
            help=f"default {getattr(defaults, name)}",
        )
    train.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=train_reward)

    evaluate = commands.add_parser(
        "eval-reward",
        help="evaluate a reward model; prints the metrics as JSON",
        description="Evaluate a reward model on preference pairs (the formats of train-reward's "
        "--data) and print the metrics as JSON: accuracy per rating bucket, per batch and kind, "
        "calibration error and, for labelled safety pairs, the unsafe gate's precision and recall.",
    )
    evaluate.add_argument("--model", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, nargs="+", required=True, metavar="FILE")
    evaluate.add_argument(
        "--kind", choices=KINDS, default=None, help="kind of pairs without one (default: model's)"
    )
    evaluate.add_argument("--max-length", type=int, default=None)
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--table", action="store_true", help="also print a table on stderr")
    evaluate.set_defaults(run=eval_reward)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _load(files: list[Path], kind: str | None, margin_table: str) -> list[PreferencePair]:
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


def _count(pairs: list[PreferencePair]) -> str:
    """``"1,512 helpfulness and 369 safety pairs"``."""
    kinds = Counter(pair.kind or "unlabelled" for pair in pairs)
    parts = [f"{kinds[kind]:,} {kind}" for kind in (*KINDS, "unlabelled") if kinds[kind]]
    return (" and ".join(parts) or "0") + " pairs"


def _count_by_source(pairs: list[PreferencePair], source_of: dict[int, str], names) -> str:
    """``"369 helpfulness, 124 safety, 245 open_source_helpfulness"``, in the order of names."""
    counts = Counter(source_of[id(pair)] for pair in pairs)
    return ", ".join(f"{counts[name]:,} {name}" for name in names if counts[name])


def training_data(args, config: RewardTrainingConfig, report=print):
    """(train, held-out) pairs from the command line's files, see ``TRAIN_DESCRIPTION``.

    ``report`` receives a line per thing used: each file's pairs by kind, and what was left
    out or mixed in.
    """
    table = config.margin_table
    data = []
    for file in args.data:
        pairs = _load([file], args.kind, table)
        report(f"data: {file}: {_count(pairs)}")
        data += pairs
    if args.recipe == "none":
        extra = args.open_helpfulness + args.open_harmlessness
        if extra:
            raise ValueError("--open-helpfulness/--open-harmlessness need --recipe paper")
        wanted = [pair for pair in data if pair.kind == args.kind]
        if not wanted:
            raise ValueError(
                f"no {args.kind} pairs in {', '.join(map(str, args.data))} (they hold "
                f"{_count(data)}): pass --kind to match the data, or --recipe paper to mix "
                "the other kind in the Llama 2 way"
            )
        left_out = len(data) - len(wanted)
        if left_out:
            report(
                f"training the {args.kind} model on the {len(wanted):,} {args.kind} pairs; "
                f"{left_out:,} pairs of another kind are left out (--recipe paper mixes them in)"
            )
        return split(wanted, config.eval_fraction, config.seed)
    train, held_out = split(data, config.eval_fraction, config.seed)
    sources: dict[str, list[PreferencePair]] = {HELPFULNESS: [], SAFETY: []}
    for pair in train:
        sources[pair.kind or args.kind].append(pair)
    for name, files, kind in (
        (OPEN_SOURCE_HELPFULNESS, args.open_helpfulness, "helpfulness"),
        (OPEN_SOURCE_HARMLESSNESS, args.open_harmlessness, "safety"),
    ):
        open_pairs = []
        for file in files:
            pairs = _load([file], kind, table)
            report(f"data ({name}): {file}: {len(pairs):,} pairs")
            open_pairs += pairs
        open_train, open_held_out = split(open_pairs, config.eval_fraction, config.seed)
        sources[name] = open_train
        held_out += open_held_out
    source_of = {id(pair): name for name, pairs in sources.items() for pair in pairs}
    recipe = RECIPES[args.kind]
    mixed = mix(recipe, sources, seed=config.seed)
    report(
        f"recipe paper ({args.kind}): {len(mixed):,} training pairs: "
        f"{_count_by_source(mixed, source_of, recipe.sources)} (all of {', '.join(recipe.base)}, "
        f"{recipe.proportion[0]}:{recipe.proportion[1]} with {', '.join(recipe.extra)}); "
        f"{len(held_out):,} held out ({_count(held_out)})"
    )
    return mixed, held_out


def _job_progress(events, main_process: bool):
    """The trainer's progress events, as a job's event records (written by the main process)."""

    def record(event: dict) -> None:
        if not main_process:
            return
        if event["event"] == "log":
            events.write("log", message=event["message"])
        elif event["event"] == "step":
            events.write("step", **{name: event[name] for name in EVENT_TYPES["step"]})
            events.write("progress", fraction=event["step"] / event["total_steps"])
        elif event["event"] == "eval":
            events.write("evaluation", step=event["step"], metrics=event["metrics"])

    return record


def run_reward_job(spec, events) -> dict:
    """The "reward" stage of a job (rlhf/jobs.py): train as ``train-reward`` does, from a spec.

    Inputs by role: ``data`` (required), ``open_helpfulness`` and ``open_harmlessness``;
    options: ``recipe`` ("none" or "paper"). The model goes to the job's ``model/``.
    """
    from accelerate import PartialState

    from rlhf.reward.training import train_reward_model

    for role in spec.inputs:
        if role not in REWARD_INPUT_ROLES:
            raise JobError(
                f"inputs.{role}", f"is not an input of a reward job: {REWARD_INPUT_ROLES}"
            )
    if not spec.paths("data"):
        raise JobError("inputs.data", "names no file: a reward job trains on preference pairs")
    for name, value in spec.options.items():
        if name != "recipe":
            raise JobError(f"options.{name}", "is not an option of a reward job (recipe)")
        if value not in RECIPE_CHOICES:
            raise JobError("options.recipe", f"must be one of {RECIPE_CHOICES}")
    config = RewardTrainingConfig.from_dict(spec.config)
    main_process = PartialState(cpu=config.cpu).is_main_process
    sources = argparse.Namespace(
        data=spec.paths("data"),
        kind=config.kind,
        recipe=spec.options.get("recipe", "none"),
        open_helpfulness=spec.paths("open_helpfulness"),
        open_harmlessness=spec.paths("open_harmlessness"),
    )
    progress = _job_progress(events, main_process)
    train, held_out = training_data(
        sources, config, report=lambda line: progress({"event": "log", "message": line})
    )
    result = train_reward_model(
        config, train, held_out, spec.output_dir / MODEL_DIR, progress=progress
    )
    step_limit = "max_steps" if config.max_steps is not None else None
    return {
        "summary": result.summary(step_limit),
        "steps": result.steps,
        "train_pairs": result.train_pairs,
        "pairs_trained": result.pairs_trained,
        "distinct_pairs_trained": result.distinct_pairs_trained,
        "seconds": result.seconds,
        "pairs_per_second": result.pairs_per_second,
        "history": result.history,
        "metrics": result.metrics,
    }


class TrainingProgress:
    """Training events on stderr: a progress bar on a terminal, plain lines elsewhere.

    On a terminal, one bar for the steps (and one for each evaluation), redrawn in place, with
    the log lines written above it. Into a file or a pipe, no bar (its redraws would pile up):
    a line for every tenth of the run, and the log lines. ``enabled=False`` (``--no-progress``)
    keeps only the log lines.
    """

    LINES_PER_RUN = 10

    def __init__(self, enabled: bool, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = enabled and self.stream.isatty()
        self.bar = self.eval_bar = None

    def write(self, message: str) -> None:
        if self.bar is not None or self.eval_bar is not None:
            from tqdm import tqdm

            tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def __call__(self, event: dict) -> None:
        if event["event"] == "log":
            self.write(event["message"])
        elif event["event"] == "step" and self.enabled:
            self._step(event)
        elif event["event"] == "eval" and event["metrics"]:
            accuracy = event["metrics"]["accuracy"]
            self.write(f"step {event['step']}: held-out accuracy {accuracy:.3f}")

    def _step(self, event: dict) -> None:
        step, total = event["step"], event["total_steps"]
        if not self.interactive:
            every = max(1, total // self.LINES_PER_RUN)
            if step % every == 0 or step == total:
                self.write(
                    f"step {step}/{total}: loss {event['loss']:.4f}, "
                    f"lr {event['learning_rate']:.2e}, {event['pairs_per_second']:.1f} pairs/s"
                )
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, initial=step - 1, unit="step", file=self.stream)
        self.bar.set_postfix(
            loss=f"{event['loss']:.4f}",
            lr=f"{event['learning_rate']:.2e}",
            pairs_s=f"{event['pairs_per_second']:.1f}",
            refresh=False,
        )
        self.bar.update(step - self.bar.n)
        if step == total:  # the last step: the final evaluation gets the screen to itself
            self.bar.close()
            self.bar = None

    def eval_progress(self, done: int, total: int) -> None:
        """How many of the held-out pairs are scored (a bar on a terminal only)."""
        if not self.interactive:
            return
        from tqdm import tqdm

        if self.eval_bar is None:
            self.eval_bar = tqdm(
                total=total, unit="pair", desc="evaluating", leave=False, file=self.stream
            )
        self.eval_bar.update(done - self.eval_bar.n)
        if done >= total:
            self.eval_bar.close()
            self.eval_bar = None

    def close(self) -> None:
        for bar in (self.eval_bar, self.bar):
            if bar is not None:
                bar.close()
        self.bar = self.eval_bar = None


def train_reward(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from rlhf.reward.evaluation import format_metrics_table
    from rlhf.reward.training import train_reward_model

    # Accelerator(cpu=...) builds this same state again; only the main process prints.
    main_process = PartialState(cpu=args.cpu).is_main_process
    values = {"kind": args.kind, "base_model": args.base, "cpu": args.cpu}
    for option, (name, _) in HYPERPARAMETERS.items():
        if getattr(args, option) is not None:
            values[name] = getattr(args, option)
    notes: list[str] = []
    try:
        config = RewardTrainingConfig.from_dict(values)
        train, held_out = training_data(args, config, report=notes.append)
    except ValueError as error:  # ConfigError, DataError, a recipe that cannot be met
        return _error(str(error))
    progress = TrainingProgress(enabled=not args.no_progress)
    if main_process:
        for note in notes:
            progress.write(note)
    try:
        result = train_reward_model(
            config,
            train,
            held_out,
            args.out,
            progress=progress,
            eval_progress=progress.eval_progress,
        )
    except (ConfigError, OSError) as error:
        return _error(str(error))
    finally:
        progress.close()
    if main_process:
        print(
            f"{result.summary('--max-steps' if config.max_steps is not None else None)} "
            f"in {result.seconds:.1f} s "
            f"({result.pairs_per_second:.1f} pairs/s); saved to {args.out}"
        )
        if result.metrics:
            print(format_metrics_table(result.metrics))
    return 0


def eval_reward(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rlhf.reward.evaluation import evaluate_reward_model, format_metrics_table
    from rlhf.reward.model import METADATA_FILE, load_reward_model

    if not (args.model / METADATA_FILE).is_file():
        return _error(f"{args.model}: not a reward model directory (no {METADATA_FILE})")
    model, tokenizer, metadata = load_reward_model(args.model)
    config = metadata.get("config", {})
    kind = args.kind or metadata.get("kind")
    try:
        pairs = _load(args.data, kind, config.get("margin_table", "small"))
    except DataError as error:
        return _error(str(error))
    max_length = args.max_length or config.get("max_length", 512)
    # A bar on a terminal only: into a file, its redraws would pile up.
    with tqdm(
        total=len(pairs), unit="pair", file=sys.stderr, disable=not sys.stderr.isatty()
    ) as bar:
        metrics = evaluate_reward_model(
            model,
            tokenizer,
            pairs,
            batch_size=args.batch_size,
            max_length=max_length,
            progress=bar.update,
        )
    metrics["model"] = str(args.model)
    metrics["data"] = [str(path) for path in args.data]
    if args.table:
        print(format_metrics_table(metrics), file=sys.stderr)
    json.dump(metrics, sys.stdout, indent=2)
    print()
    return 0
