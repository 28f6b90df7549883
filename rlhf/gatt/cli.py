"""``python -m rlhf gatt``: Ghost Attention, as a job (:mod:`.job`).

    python -m rlhf gatt --policy runs/policy-3/model --base runs/policy-3/model \\
        --dialogues mt-bench/question.jsonl hh-rlhf/helpful-online/test.jsonl.gz \\
        --families lowercase first_word figure --out runs/gatt

It writes the spec its flags describe to ``OUT/spec.json`` and runs it; ``OUT`` then holds the
GAtt data (``gatt_data.jsonl``, ``gatt_held_out.jsonl``, ``gatt_sampling.json``), the events,
the metrics and the fine-tuned model (``model/``). The settings' flags are the SFT stage's and
GAtt's own (:class:`rlhf.gatt.config.GAttConfig`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf import hyperparameters
from rlhf.data.pairs import DataError
from rlhf.gatt.config import GAttConfig
from rlhf.gatt.instructions import FAMILIES
from rlhf.jobs import MODEL_DIR, InputFile, RunSpec
from rlhf.nn.devices import use_cpu
from rlhf.runner import prepare_command, run_job

DESCRIPTION = """\
Ghost Attention (Llama 2, section 3.3): teach the policy to keep an instruction given in the
first turn of a dialogue. Every multi-turn dialogue of --dialogues (MT-Bench's turns, the human
turns of HH-RLHF transcripts, prompt files with later turns) gets an instruction — hobbies,
languages, public figures to act as, and rule-checkable ones (lowercase only, a fixed first or
last word), randomly combined and sometimes shortened — attached to every user turn; --policy
samples each assistant turn (with --filter-adherent, a reply that breaks a rule-checkable
instruction is resampled, else its dialogue dropped). Then the instruction is kept in the first
turn only, the loss zeroed on every earlier turn, and --base is fine-tuned on that (the SFT
stage, its flags). Dialogues held out by --eval-fraction give the held-out loss and the
adherence by turn, with the instruction in the first turn only, before and after."""


def add_commands(commands) -> None:
    command = commands.add_parser(
        "gatt",
        help="Ghost Attention: keep a first-turn instruction through a dialogue",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--policy", required=True, metavar="DIR", help="the sampling model")
    command.add_argument("--base", required=True, help="the model fine-tuned (a directory, hub id)")
    command.add_argument("--dialogues", type=Path, nargs="+", required=True, metavar="FILE")
    command.add_argument("--out", type=Path, required=True, help="the run's directory")
    command.add_argument(
        "--families",
        nargs="+",
        choices=list(FAMILIES),
        default=None,
        help="the constraint families instructions combine (default: all)",
    )
    hyperparameters.add_flags(command, GAttConfig)
    command.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    command.add_argument("--resume", action="store_true", help="continue an interrupted run")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    command.set_defaults(run=gatt)


def spec_of(args: argparse.Namespace) -> RunSpec:
    """The job the flags describe; its input files hashed as they are now."""
    for file in args.dialogues:
        if not file.is_file():
            raise DataError(str(file), None, None, "no such file")
    config = {
        "policy": args.policy,
        "base_model": args.base,
        "cpu": args.cpu,
        **hyperparameters.flag_values(args, GAttConfig),
    }
    if args.families:
        config["families"] = args.families
    return RunSpec(
        stage="gatt",
        output_dir=args.out,
        config=config,
        inputs={"dialogues": [InputFile.of(file) for file in args.dialogues]},
        resume=args.resume,
    )


def gatt(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from rlhf.gatt.evaluation import format_adherence
    from rlhf.sft.cli import SFTProgress, describe

    main_process = PartialState(cpu=use_cpu(args.cpu)).is_main_process
    progress = SFTProgress(enabled=not args.no_progress)
    try:
        spec = spec_of(args)
        plan = prepare_command(spec, main_process=main_process)  # bad input: --out untouched
        metrics = run_job(
            spec, main_process=main_process, listener=progress if main_process else None, plan=plan
        )
    except (ValueError, OSError) as error:  # JobError, ConfigError, DataError
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    if main_process:
        print(f"{metrics['summary']}; saved to {args.out / MODEL_DIR}")
        for when in ("before", "after"):
            if metrics["metrics"].get(when):
                print(f"{when}: {describe(metrics['metrics'][when])}")
        if metrics["adherence"]:
            print("adherence by turn on held-out dialogues, the instruction in turn 1 only:")
            print(format_adherence(metrics["adherence"]))
    return 0
