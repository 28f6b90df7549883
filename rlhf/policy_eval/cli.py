"""``python -m rlhf eval-policy``: a policy on held-out prompt sets, as a job (:mod:`.job`).

    python -m rlhf eval-policy --policy runs/policy-2/model \\
        --reward-helpfulness runs/rm-h --reward-safety runs/rm-s \\
        --helpfulness-prompts oasst.jsonl --safety-prompts harmbench.csv \\
        --overrefusal-prompts xstest_prompts.csv --eval-fraction 0.2 \\
        [--reference models/policy] [--compare-with models/policy] --out runs/eval-2

Prints a table (per prompt set: rewards with standard errors, refusal rate, KL, win rate) and
writes the metrics (``metrics.json``) and every response (``responses.jsonl``) to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rlhf import hyperparameters
from rlhf.data.pairs import DataError
from rlhf.jobs import InputFile, RunSpec
from rlhf.policy_eval.config import PolicyEvalConfig
from rlhf.policy_eval.job import PROMPT_SETS
from rlhf.runner import prepare_command, run_job


def add_commands(commands) -> None:
    command = commands.add_parser(
        "eval-policy",
        help="evaluate a policy: rewards, refusals, over-refusal, KL, win rate",
        description=__doc__.split("\n\n")[0].strip("`"),
    )
    command.add_argument("--policy", required=True, metavar="DIR")
    command.add_argument("--reward-helpfulness", required=True, metavar="DIR")
    command.add_argument("--reward-safety", required=True, metavar="DIR")
    command.add_argument("--reference", default="", metavar="DIR", help="report KL to it")
    command.add_argument("--compare-with", default="", metavar="DIR", help="win rate against it")
    for role in PROMPT_SETS:
        command.add_argument(
            "--" + role.replace("_", "-"), type=Path, nargs="*", default=[], metavar="FILE"
        )
    hyperparameters.add_flags(command, PolicyEvalConfig)
    command.add_argument("--cpu", action="store_true")
    command.add_argument("--out", type=Path, default=None, help="keep the job's directory")
    command.set_defaults(run=eval_policy)


def spec_of(args: argparse.Namespace, out: Path) -> RunSpec:
    config = {
        "policy": args.policy,
        "reward_helpfulness": args.reward_helpfulness,
        "reward_safety": args.reward_safety,
        "reference": args.reference,
        "compare_with": args.compare_with,
        "cpu": args.cpu,
        **hyperparameters.flag_values(args, PolicyEvalConfig),
    }
    inputs = {role: getattr(args, role) for role in PROMPT_SETS if getattr(args, role)}
    for files in inputs.values():
        for file in files:
            if not file.is_file():
                raise DataError(str(file), None, None, "no such file")
    return RunSpec(
        stage="policy-eval",
        output_dir=out,
        config=config,
        inputs={role: [InputFile.of(f) for f in files] for role, files in inputs.items()},
        resume=True,  # an evaluation writes no model: its directory may be reused
    )


def format_report(metrics: dict) -> str:
    def cell(stat: dict | None, percent: bool = False) -> str:
        if not stat or stat["n"] == 0:
            return "—"
        scale, unit = (100, " %") if percent else (1, "")
        return f"{stat['mean'] * scale:.3f} ± {stat['stderr'] * scale:.3f}{unit}"

    lines = [f"{'set':<22}{'n':>5}  {'gated reward':<16}{'safety':<16}{'refusals':<20}extra"]
    for name, summary in [*metrics["sets"].items(), ("all", metrics["all"])]:
        extra = []
        if "kl" in summary:
            extra.append(f"KL {cell(summary['kl'])} nats")
        if "win_rate" in summary:
            win = summary["win_rate"]
            extra.append(
                f"win rate {win['win_rate']:.1%} [{win['ci95_low']:.1%}, {win['ci95_high']:.1%}]"
            )
        lines.append(
            f"{name:<22}{summary['reward']['n']:>5}  {cell(summary['reward']):<16}"
            f"{cell(summary['safety']):<16}{cell(summary['refusal_rate'], True):<20}"
            + "; ".join(extra)
        )
    gate = metrics.get("safety_gate")
    if gate and gate["predicted_unsafe"] is not None:
        precision, recall = gate["precision"], gate["recall"]
        lines.append(
            f"safety gate σ(R_safety) < {gate['threshold']}: flags {gate['predicted_unsafe']} of "
            f"{gate['labelled_responses']} responses; precision "
            + ("—" if precision is None else f"{precision:.2f}")
            + ", recall "
            + ("—" if recall is None else f"{recall:.2f}")
            + f" against the {gate['unsafe']} non-refusals to harmful prompts"
        )
    return "\n".join(lines)


def eval_policy(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="eval-policy-") as scratch:
        out = args.out or Path(scratch)
        try:
            spec = spec_of(args, out)
            plan = prepare_command(spec)
            with tqdm(total=1000, file=sys.stderr, disable=not sys.stderr.isatty()) as bar:

                def show(record: dict) -> None:
                    if record["type"] == "progress":
                        bar.update(round(record["fraction"] * 1000) - bar.n)

                metrics = run_job(spec, plan=plan, listener=show)
        except ValueError as error:  # JobError, ConfigError, DataError
            print(f"error: {error}", file=sys.stderr)
            return 2
    print(format_report(metrics))
    if args.out:
        print(f"metrics and responses in {args.out}")
    return 0
