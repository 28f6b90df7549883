"""``python -m rlhf sft``: supervised fine-tuning from the command line.

    python -m rlhf sft --base models/policy --data conversations.jsonl pool.jsonl --out runs/sft

A job like the platform's (:mod:`rlhf.jobs`), as ``train-reward`` is: the spec its flags
describe is written to ``OUT/spec.json`` and run in this process (:func:`rlhf.runner.run_job`);
``OUT`` then holds ``events.jsonl``, ``metrics.json`` and the model in ``model/``. The settings'
flags come from the declarations of :class:`rlhf.sft.config.SFTConfig`. Under ``accelerate
launch`` every process runs the job and only the main one writes and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf import hyperparameters
from rlhf.data.pairs import DataError
from rlhf.jobs import MODEL_DIR, InputFile, RunSpec
from rlhf.nn.devices import use_cpu
from rlhf.reward.cli import TrainingProgress
from rlhf.runner import prepare_command, run_job
from rlhf.sft.config import SFTConfig

# The --help text (the module docstring is for readers of the code).
DESCRIPTION = """\
Fine-tune a policy on conversations (supervised fine-tuning, Llama 2 section 3.1).

  python -m rlhf sft --base models/policy --data conversations.jsonl pool.jsonl --out runs/sft

--data takes JSON Lines files (gzip-compressed or not), each in one of these formats:
  {"messages": [{"role": ..., "content": ...}, ...]}   TRL's conversational format; every
      assistant turn is trained on (--train-on last, or a record's "train_on": "last", keeps
      only the last one)
  {"prompt": ..., "completion": ...}                    TRL's prompt-completion format
  {"prompt": ..., "response": "..."}                    a rejection-sampling pool
  {"prompt": ..., "chosen": ..., "rejected": ...}       the platform's training export (and
      HH-RLHF transcripts, canonical exports): the prompt answered by the chosen reply; chosen
      replies labelled unsafe and repeats are left out
The loss counts the assistant's tokens only (its end-of-turn token included), never the
system's, the user's or the chat template's. Conversations are packed into rows of
--max-length tokens, none attending to another; the loss is the mean over the counted tokens
of each batch. The conversations are split into training and held-out ones by their first
user turn (--eval-fraction, --seed); the held-out loss and perplexity are reported before and
after training.

The run's directory (--out) receives the spec it ran (spec.json), its event log (events.jsonl),
its final metrics (metrics.json) and the model (model/, with its tokenizer, pairwise_sft.json
and checkpoints); --resume continues an interrupted run from its last checkpoint
(--checkpoint-every). On a terminal, training shows a progress bar; into a file or a pipe, a
line per tenth of the run."""


def add_commands(commands) -> None:
    sft = commands.add_parser(
        "sft",
        help="fine-tune a policy on conversations (SFT)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sft.add_argument("--base", required=True, help="the model fine-tuned: a directory or hub id")
    sft.add_argument("--data", type=Path, nargs="+", required=True, metavar="FILE")
    sft.add_argument("--out", type=Path, required=True, help="output directory")
    hyperparameters.add_flags(sft, SFTConfig)
    sft.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    sft.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    sft.add_argument("--no-progress", action="store_true", help="no progress bar")
    sft.set_defaults(run=run_sft)


class SFTProgress(TrainingProgress):
    """The reward commands' display (:class:`rlhf.reward.cli.TrainingProgress`), with the SFT's
    evaluation (held-out loss and perplexity) and rate (conversations per second)."""

    def __call__(self, record: dict) -> None:
        if record["type"] == "evaluation":
            if record["metrics"]:
                when = "before training" if record["step"] == 0 else f"step {record['step']}"
                self.write(f"{when}: {describe(record['metrics'])}")
        elif record["type"] == "step" and self.enabled:
            self._step(record)
        else:
            super().__call__(record)

    def _step(self, event: dict) -> None:
        step, total = event["step"], event["total_steps"]
        rate = event["pairs_per_second"]  # the contract's name; an SFT job's conversations/s
        if not self.interactive:
            every = max(1, total // self.LINES_PER_RUN)
            if step % every == 0 or step == total:
                self.write(
                    f"step {step}/{total}: loss {event['loss']:.4f}, "
                    f"lr {event['learning_rate']:.2e}, {rate:.1f} conversations/s"
                )
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, initial=step - 1, unit="step", file=self.stream)
        self.bar.set_postfix(
            loss=f"{event['loss']:.4f}", lr=f"{event['learning_rate']:.2e}", refresh=False
        )
        self.bar.update(step - self.bar.n)
        if step == total:
            self.bar.close()
            self.bar = None


def describe(metrics: dict) -> str:
    """``"held-out loss 2.3026 (perplexity 10.00) on 1,234 tokens"``."""
    return (
        f"held-out loss {metrics['loss']:.4f} (perplexity {metrics['perplexity']:.2f}) on "
        f"{metrics['tokens']:,} tokens"
    )


def sft_spec(args: argparse.Namespace) -> RunSpec:
    """The job the flags describe; its input files hashed as they are now."""
    for file in args.data:
        if not file.is_file():
            raise DataError(str(file), None, None, "no such file")
    return RunSpec(
        stage="sft",
        output_dir=args.out,
        config={
            "base_model": args.base,
            "cpu": args.cpu,
            **hyperparameters.flag_values(args, SFTConfig),
        },
        inputs={"data": [InputFile.of(file) for file in args.data]},
        resume=args.resume,
    )


def run_sft(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    main_process = PartialState(cpu=use_cpu(args.cpu)).is_main_process
    progress = SFTProgress(enabled=not args.no_progress)
    try:
        spec = sft_spec(args)
        # Checked and prepared before anything is written: bad input leaves --out as it was.
        plan = prepare_command(spec, main_process=main_process)
        metrics = run_job(
            spec, main_process=main_process, listener=progress if main_process else None, plan=plan
        )
    except (ValueError, OSError) as error:  # JobError, ConfigError, DataError
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    if main_process:
        summary = metrics["summary"].replace("max_steps stopped", "--max-steps stopped")
        print(
            f"{summary} in {metrics['seconds']:.1f} s ({metrics['tokens_per_second']:,.0f} "
            f"tokens/s); saved to {args.out / MODEL_DIR}"
        )
        for when in ("before", "after"):
            if metrics["metrics"].get(when):
                print(f"{when}: {describe(metrics['metrics'][when])}")
    return 0
