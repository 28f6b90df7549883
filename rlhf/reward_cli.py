"""``python -m rlhf train-reward`` and ``python -m rlhf eval-reward``.

    python -m rlhf train-reward --kind safety --data export.jsonl hh/harmless-base.jsonl.gz \\
        --base models/policy --out models/rm-safety
    python -m rlhf eval-reward --model models/rm-safety --data new-batch.jsonl > metrics.json

Training data: every ``--data`` file is loaded with :func:`rlhf.data.load_pairs` (pairs without
a kind of their own take ``--kind``) and split into train and held-out pairs by context
(:func:`rlhf.data.split`, ``--eval-fraction``, ``--seed``). With ``--recipe paper`` the training
parts are mixed with the Llama 2 recipe of ``--kind`` (:data:`rlhf.data.RECIPES`): the pairs of
``--data`` are the platform's helpfulness or safety data by their kind, those of
``--open-helpfulness`` / ``--open-harmlessness`` the open-source sets. Held-out pairs are never
mixed: they are all evaluated. Under ``accelerate launch`` only the main process prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlhf.data import (
    HELPFULNESS,
    KINDS,
    OPEN_SOURCE_HARMLESSNESS,
    OPEN_SOURCE_HELPFULNESS,
    RECIPES,
    SAFETY,
    DataError,
    PreferencePair,
    load_pairs,
    mix,
    split,
)
from rlhf.reward_training import ConfigError, RewardTrainingConfig

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
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--kind", choices=KINDS, required=True)
    train.add_argument("--data", type=Path, nargs="+", required=True, metavar="FILE")
    train.add_argument("--base", required=True, help="backbone: a model directory or hub id")
    train.add_argument("--out", type=Path, required=True, help="output directory")
    train.add_argument("--recipe", choices=("none", "paper"), default="none")
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
        "eval-reward", help="evaluate a reward model; prints the metrics as JSON"
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
    pairs: list[PreferencePair] = []
    for file in files:
        if not file.is_file():
            raise DataError(str(file), None, None, "no such file")
        pairs += load_pairs(file, kind=kind, margin_table=margin_table)
    return pairs


def training_data(args, config: RewardTrainingConfig):
    """(train, held-out) pairs from the command line's files, see the module docstring."""
    table = config.margin_table
    data = _load(args.data, args.kind, table)
    train, held_out = split(data, config.eval_fraction, config.seed)
    if args.recipe == "none":
        extra = args.open_helpfulness + args.open_harmlessness
        if extra:
            raise ValueError("--open-helpfulness/--open-harmlessness need --recipe paper")
        return train, held_out
    sources: dict[str, list[PreferencePair]] = {HELPFULNESS: [], SAFETY: []}
    for pair in train:
        sources[pair.kind or args.kind].append(pair)
    for name, files, kind in (
        (OPEN_SOURCE_HELPFULNESS, args.open_helpfulness, "helpfulness"),
        (OPEN_SOURCE_HARMLESSNESS, args.open_harmlessness, "safety"),
    ):
        open_pairs = _load(files, kind, table)
        open_train, open_held_out = split(open_pairs, config.eval_fraction, config.seed)
        sources[name] = open_train
        held_out += open_held_out
    return mix(RECIPES[args.kind], sources, seed=config.seed), held_out


class _ProgressBar:
    """Turns training events into a tqdm bar (stderr) and log lines above it."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def __call__(self, event: dict) -> None:
        from tqdm import tqdm

        if event["event"] == "log":
            (tqdm.write if self.bar else print)(event["message"], file=sys.stderr)
        elif event["event"] == "step" and self.enabled:
            if self.bar is None:
                self.bar = tqdm(total=event["total_steps"], unit="step", file=sys.stderr)
                self.bar.update(event["step"] - 1)
            self.bar.update(event["step"] - self.bar.n)
            self.bar.set_postfix(
                loss=f"{event['loss']:.4f}",
                lr=f"{event['learning_rate']:.2e}",
                pairs_s=f"{event['pairs_per_second']:.1f}",
            )
        elif event["event"] == "eval" and event["metrics"]:
            message = f"step {event['step']}: held-out accuracy {event['metrics']['accuracy']:.3f}"
            (tqdm.write if self.bar else print)(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_reward(args: argparse.Namespace) -> int:
    from rlhf.reward_eval import format_metrics_table
    from rlhf.reward_training import train_reward_model

    values = {"kind": args.kind, "base_model": args.base, "cpu": args.cpu}
    for option, (name, _) in HYPERPARAMETERS.items():
        if getattr(args, option) is not None:
            values[name] = getattr(args, option)
    try:
        config = RewardTrainingConfig.from_dict(values)
        train, held_out = training_data(args, config)
    except ValueError as error:  # ConfigError, DataError, a recipe that cannot be met
        return _error(str(error))
    progress = _ProgressBar(enabled=not args.no_progress)
    try:
        result = train_reward_model(config, train, held_out, args.out, progress=progress)
    except (ConfigError, OSError) as error:
        return _error(str(error))
    finally:
        progress.close()
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(
            f"trained {result.steps} steps on {result.train_pairs} pairs in "
            f"{result.seconds:.1f} s ({result.pairs_per_second:.1f} pairs/s); saved to {args.out}"
        )
        if result.metrics:
            print(format_metrics_table(result.metrics))
    return 0


def eval_reward(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rlhf.reward_eval import evaluate_reward_model, format_metrics_table
    from rlhf.reward_model import METADATA_FILE, load_reward_model

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
    with tqdm(total=len(pairs), unit="pair", file=sys.stderr) as bar:
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
