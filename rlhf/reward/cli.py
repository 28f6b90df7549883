"""``python -m rlhf train-reward`` and ``python -m rlhf eval-reward``.

    python -m rlhf train-reward --kind safety --data export.jsonl hh/harmless-base.jsonl.gz \\
        --base models/policy --out runs/rm-safety
    python -m rlhf eval-reward --model runs/rm-safety --data new-batch.jsonl > metrics.json

``train-reward`` is a job like the platform's (:mod:`rlhf.jobs`): it writes the spec its flags
describe to ``OUT/spec.json`` and runs it in this process (:func:`rlhf.runner.run_job`), so a
command-line run and a platform run are one code path; ``OUT`` then holds ``events.jsonl``,
``metrics.json`` and the model in ``model/``. Its settings' flags come from the declarations
of :class:`rlhf.reward.config.RewardTrainingConfig`. How the pairs are chosen is
:func:`rlhf.reward.job.training_data`; ``TRAIN_DESCRIPTION`` says it in plain words, for
``--help``. Under ``accelerate launch`` every process runs the job and only the main one
writes and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rlhf import hyperparameters
from rlhf.data.pairs import KINDS, DataError
from rlhf.jobs import MODEL_DIR, InputFile, RunSpec
from rlhf.nn.devices import use_cpu
from rlhf.reward.config import RewardEvalConfig, RewardTrainingConfig
from rlhf.reward.job import RECIPE_CHOICES
from rlhf.runner import prepare_command, run_job

# The --help text (the module docstring is for readers of the code).
TRAIN_DESCRIPTION = """\
Train a helpfulness or safety reward model on preference pairs.

  python -m rlhf train-reward --kind safety --data export.jsonl hh/harmless-base.jsonl.gz \\
      --base models/policy --out runs/rm-safety

The run's directory (--out) receives the spec it ran (spec.json), its event log (events.jsonl),
its final metrics (metrics.json) and the model (model/, with checkpoints); --resume continues
an interrupted run from its last checkpoint.

--data takes the platform's training export (trl), TRL-format JSONL, canonical exports and
HH-RLHF transcripts, gzip-compressed or not; pairs whose records carry no kind (HH-RLHF, say)
take --kind. The pairs are split into training and held-out pairs by prompt (--eval-fraction,
--seed). Without a recipe, the model trains on the pairs of its --kind only: the pairs of the
other kind in a mixed file (the platform's default export holds both) are left out, and the
command says how many; --recipe all trains on every pair whatever its kind. With --recipe
paper, the training pairs are mixed the Llama 2 way: a helpfulness model trains on all
helpfulness pairs plus as many drawn from the safety and open-source pairs; a safety model
on all safety and open-source harmlessness pairs plus 10 % from helpfulness data
(--open-helpfulness / --open-harmlessness name the open-source files). Held-out pairs are
never mixed: all of them are evaluated. The command prints what it used.

On a terminal, training shows a progress bar; into a file or a pipe, it writes a line per
tenth of the run instead. Under "accelerate launch" only the main process prints."""


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
    hyperparameters.add_flags(train, RewardTrainingConfig)
    train.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
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
    hyperparameters.add_flags(evaluate, RewardEvalConfig)
    evaluate.add_argument("--cpu", action="store_true", help="evaluate on the CPU even with a GPU")
    evaluate.add_argument(
        "--out", type=Path, default=None, help="keep the job's directory (spec, events, metrics)"
    )
    evaluate.add_argument("--table", action="store_true", help="also print a table on stderr")
    evaluate.set_defaults(run=eval_reward)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


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

    def __call__(self, record: dict) -> None:
        """Show one record of the job's event log (rlhf.jobs.EVENT_TYPES)."""
        if record["type"] == "log":
            self.write(record["message"])
        elif record["type"] == "step" and self.enabled:
            self._step(record)
        elif record["type"] == "evaluation" and record["metrics"]:
            accuracy = record["metrics"]["accuracy"]
            self.write(f"step {record['step']}: held-out accuracy {accuracy:.3f}")
        elif record["type"] == "baseline":
            accuracy = (record["metrics"] or {}).get("accuracy")
            shown = f"accuracy {accuracy:.3f}" if accuracy is not None else record["error"]
            self.write(f"before training, {record['model']} on {record['batch']!r}: {shown}")

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


def reward_spec(args: argparse.Namespace) -> RunSpec:
    """The job the flags describe; its input files hashed as they are now."""
    config = {
        "kind": args.kind,
        "base_model": args.base,
        "cpu": args.cpu,
        **hyperparameters.flag_values(args, RewardTrainingConfig),
    }
    inputs = {"data": args.data}
    if args.open_helpfulness:
        inputs["open_helpfulness"] = args.open_helpfulness
    if args.open_harmlessness:
        inputs["open_harmlessness"] = args.open_harmlessness
    for files in inputs.values():
        for file in files:
            if not file.is_file():
                raise DataError(str(file), None, None, "no such file")
    return RunSpec(
        stage="reward",
        output_dir=args.out,
        config=config,
        inputs={role: [InputFile.of(file) for file in files] for role, files in inputs.items()},
        options={"recipe": args.recipe},
        resume=args.resume,
    )


def train_reward(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from rlhf.reward.evaluation import format_metrics_table

    # Accelerator(cpu=...) builds this same state again; only the main process prints.
    main_process = PartialState(cpu=use_cpu(args.cpu)).is_main_process
    progress = TrainingProgress(enabled=not args.no_progress)
    try:
        spec = reward_spec(args)
        # Checked and prepared before anything is written: bad input leaves --out as it was.
        plan = prepare_command(spec, main_process=main_process)
        metrics = run_job(
            spec,
            main_process=main_process,
            listener=progress if main_process else None,
            eval_progress=progress.eval_progress if main_process else None,
            plan=plan,
        )
    except ValueError as error:  # JobError, ConfigError, DataError, a recipe that cannot be met
        return _error(str(error))
    except OSError as error:
        return _error(str(error))
    finally:
        progress.close()
    if main_process:
        # The job names its setting; here the user typed the flag.
        summary = metrics["summary"].replace("max_steps stopped", "--max-steps stopped")
        print(
            f"{summary} in "
            f"{metrics['seconds']:.1f} s ({metrics['pairs_per_second']:.1f} pairs/s); "
            f"saved to {args.out / MODEL_DIR}"
        )
        if metrics["metrics"]:
            print(format_metrics_table(metrics["metrics"]))
    return 0


def eval_reward(args: argparse.Namespace) -> int:
    """The "reward-eval" job the flags describe, run here; the metrics go to stdout as JSON."""
    from tqdm import tqdm

    from rlhf.reward.evaluation import format_metrics_table

    with tempfile.TemporaryDirectory(prefix="eval-reward-") as scratch:
        out = args.out or Path(scratch)
        try:
            for file in args.data:
                if not file.is_file():
                    raise DataError(str(file), None, None, "no such file")
            spec = RunSpec(
                stage="reward-eval",
                output_dir=out,
                config={"cpu": args.cpu, **hyperparameters.flag_values(args, RewardEvalConfig)},
                inputs={"data": [InputFile.of(file) for file in args.data]},
                options={"model": str(args.model)},
                resume=True,  # an evaluation writes no model: its directory may be reused
            )
            plan = prepare_command(spec)
            # A bar on a terminal only: into a file, its redraws would pile up.
            with tqdm(
                total=len(plan.pairs), unit="pair", file=sys.stderr, disable=not sys.stderr.isatty()
            ) as bar:
                metrics = run_job(
                    spec, plan=plan, eval_progress=lambda done, _total: bar.update(done - bar.n)
                )
        except ValueError as error:  # JobError, ConfigError, DataError
            return _error(str(error))
    if args.table:
        print(format_metrics_table(metrics), file=sys.stderr)
    json.dump(metrics, sys.stdout, indent=2)
    print()
    return 0
