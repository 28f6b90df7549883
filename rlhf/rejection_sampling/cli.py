"""``python -m rlhf rejection-sample``: one rejection-sampling iteration, as a job.

    python -m rlhf rejection-sample --policy models/policy \\
        --reward-helpfulness runs/rm-h --reward-safety runs/rm-s \\
        --helpfulness-prompts prompts/oasst.jsonl --safety-prompts prompts/harmbench.csv \\
        [--pool runs/rs-1/pool.jsonl] --iteration 2 --samples 8 --temperatures 0.8 1.0 1.2 \\
        --out runs/rs-2
    python -m rlhf sft --base models/policy --data runs/rs-2/pool.jsonl --out runs/policy-2

It writes the spec its flags describe to ``OUT/spec.json`` and runs it (:mod:`.job`); ``OUT``
then holds every sample (``samples.jsonl``), the pool (``pool.jsonl``), the events and the
metrics (the best-of-N curve per temperature, printed as a table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf import hyperparameters
from rlhf.data.pairs import DataError
from rlhf.jobs import InputFile, RunSpec
from rlhf.rejection_sampling.config import RejectionSamplingConfig
from rlhf.runner import prepare_command, run_job

DESCRIPTION = """\
One rejection-sampling iteration (Llama 2, section 3.2.3): K samples of every prompt from the
policy, each judged by the gated reward (the safety reward model for safety prompts and for any
response it scores below 0.15, the helpfulness one otherwise), and each prompt's best kept in a
pool that persists across iterations (--pool names the previous one). Fine-tune on the pool
with "python -m rlhf sft --data OUT/pool.jsonl". Several --temperatures sample every prompt at
each and report which gives the best samples (the paper re-tunes it every round)."""


def add_commands(commands) -> None:
    command = commands.add_parser(
        "rejection-sample",
        help="sample K responses per prompt, keep each prompt's best in a pool",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--policy", required=True, help="the sampling model's directory")
    command.add_argument("--reward-helpfulness", required=True, metavar="DIR")
    command.add_argument("--reward-safety", required=True, metavar="DIR")
    command.add_argument("--helpfulness-prompts", type=Path, nargs="*", default=[], metavar="FILE")
    command.add_argument("--safety-prompts", type=Path, nargs="*", default=[], metavar="FILE")
    command.add_argument("--pool", type=Path, default=None, help="the previous iteration's pool")
    command.add_argument("--out", type=Path, required=True, help="the iteration's directory")
    command.add_argument(
        "--temperatures", type=float, nargs="+", default=None, help="default 1.0; several: a sweep"
    )
    hyperparameters.add_flags(command, RejectionSamplingConfig)
    command.add_argument("--cpu", action="store_true", help="sample on the CPU even with a GPU")
    command.add_argument("--resume", action="store_true", help="continue an interrupted run")
    command.set_defaults(run=rejection_sample)


def spec_of(args: argparse.Namespace) -> RunSpec:
    config = {
        "policy": args.policy,
        "reward_helpfulness": args.reward_helpfulness,
        "reward_safety": args.reward_safety,
        "cpu": args.cpu,
        **hyperparameters.flag_values(args, RejectionSamplingConfig),
    }
    if args.temperatures:
        config["temperatures"] = args.temperatures
    inputs = {
        "helpfulness_prompts": args.helpfulness_prompts,
        "safety_prompts": args.safety_prompts,
        "pool": [args.pool] if args.pool else [],
    }
    for files in inputs.values():
        for file in files:
            if not file.is_file():
                raise DataError(str(file), None, None, "no such file")
    return RunSpec(
        stage="rejection-sampling",
        output_dir=args.out,
        config=config,
        inputs={role: [InputFile.of(f) for f in files] for role, files in inputs.items() if files},
        resume=args.resume,
    )


def format_curves(metrics: dict) -> str:
    """The best-of-N curve of each temperature: the mean best and median reward of N samples."""
    lines = ["temperature  N  best (± s.e.)     median"]
    for temperature, report in metrics["temperatures"].items():
        for point in report["curve"]:
            lines.append(
                f"{temperature:>11} {point['n']:>2}  {point['max']:.3f} ± {point['max_stderr']:.3f}"
                f"    {point['median']:.3f}"
            )
    return "\n".join(lines)


def rejection_sample(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        spec = spec_of(args)
        plan = prepare_command(spec)
        with tqdm(total=1000, unit="‰", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:

            def show(record: dict) -> None:
                if record["type"] == "log":
                    tqdm.write(record["message"], file=sys.stderr)
                elif record["type"] == "progress":
                    bar.update(round(record["fraction"] * 1000) - bar.n)

            metrics = run_job(spec, plan=plan, listener=show)
    except ValueError as error:  # JobError, ConfigError, DataError
        print(f"error: {error}", file=sys.stderr)
        return 2
    pool = metrics["pool"]
    print(format_curves(metrics))
    print(
        f"best temperature {metrics['best_temperature']}; the pool holds {pool['size']:,} "
        f"prompts ({pool['new']:,} new, {pool['improved']:,} improved), mean gated reward "
        f"{pool['mean_reward']:.3f}, {pool['by_safety_share']:.0%} judged for safety: "
        f"{pool['path']}"
    )
    return 0
