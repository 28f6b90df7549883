"""``python -m rlhf ppo``: PPO (or GRPO, RLOO) against the gated reward, as a job.

    python -m rlhf ppo --policy runs/policy-1/model \\
        --reward-helpfulness runs/rm-h --reward-safety runs/rm-s \\
        --helpfulness-prompts oasst.jsonl --safety-prompts harmbench.csv \\
        [--algorithm ppo|grpo|rloo] --iterations 100 --out runs/ppo-1 [--resume]

It writes the spec its flags describe to ``OUT/spec.json`` and runs it (:mod:`.job`); ``OUT``
then holds the events, the metrics (every iteration's and every evaluation's) and the policy in
``model/``. Every flag of :class:`rlhf.ppo.config.PPOConfig` is an option.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf import hyperparameters
from rlhf.data.pairs import DataError
from rlhf.jobs import MODEL_DIR, InputFile, RunSpec
from rlhf.ppo.config import PPOConfig
from rlhf.runner import prepare_command, run_job

DESCRIPTION = """\
Improve a policy against the gated reward (Llama 2, section 3.2.3): each iteration samples
--group-size responses to --rollout-batch-size prompts, judges each by the Llama 2 gate (the
safety reward model for safety prompts and for any response it scores below 0.15, the
helpfulness one otherwise), and updates the policy on R = WHITEN(LOGIT(R_c)) − β·KL(π ‖ π_0)
with clipped steps, one per minibatch. --algorithm ppo (the paper's: GAE with a value model
started from the helpfulness reward model), grpo or rloo (each prompt's other responses are
the baseline; no value model). Prompts held out by hash (--eval-fraction) are never trained on:
their mean gated reward is measured every --eval-every iterations and stops the run after
--patience evaluations without a better one; --max-kl stops it when the policy strays too far.
Each iteration prints its reward, KL and the share decided by safety; the policy goes to
OUT/model, --resume continues an interrupted run from its last iteration."""


def add_commands(commands) -> None:
    command = commands.add_parser(
        "ppo",
        help="improve a policy against the gated reward (PPO, GRPO, RLOO)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--policy", required=True, help="the policy improved (and π_0)")
    command.add_argument("--reward-helpfulness", required=True, metavar="DIR")
    command.add_argument("--reward-safety", required=True, metavar="DIR")
    command.add_argument("--helpfulness-prompts", type=Path, nargs="*", default=[], metavar="FILE")
    command.add_argument("--safety-prompts", type=Path, nargs="*", default=[], metavar="FILE")
    command.add_argument("--out", type=Path, required=True, help="the run's directory")
    hyperparameters.add_flags(command, PPOConfig)
    command.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    command.add_argument(
        "--fsdp", action="store_true",
        help="shard the policy and the value model over the processes (FSDP2) instead of DDP "
        "replicas; implied by accelerate launch --use_fsdp",
    )  # fmt: skip
    command.add_argument("--resume", action="store_true", help="continue an interrupted run")
    command.set_defaults(run=run_ppo)


def spec_of(args: argparse.Namespace) -> RunSpec:
    """The job the flags describe; its prompt files hashed as they are now."""
    inputs = {
        "helpfulness_prompts": args.helpfulness_prompts,
        "safety_prompts": args.safety_prompts,
    }
    for files in inputs.values():
        for file in files:
            if not file.is_file():
                raise DataError(str(file), None, None, "no such file")
    return RunSpec(
        stage="ppo",
        output_dir=args.out,
        config={
            "policy": args.policy,
            "reward_helpfulness": args.reward_helpfulness,
            "reward_safety": args.reward_safety,
            "cpu": args.cpu,
            "fsdp": args.fsdp,
            **hyperparameters.flag_values(args, PPOConfig),
        },
        inputs={role: [InputFile.of(f) for f in files] for role, files in inputs.items() if files},
        resume=args.resume,
    )


def run_ppo(args: argparse.Namespace) -> int:
    from accelerate import PartialState
    from tqdm import tqdm

    from rlhf.nn.devices import use_cpu

    main_process = PartialState(cpu=use_cpu(args.cpu)).is_main_process
    try:
        spec = spec_of(args)
        plan = prepare_command(spec, main_process=main_process)
        total = plan.config.iterations
        shown = sys.stderr.isatty() and main_process
        with tqdm(total=total, unit="it", file=sys.stderr, disable=not shown) as bar:

            def show(record: dict) -> None:
                if record["type"] == "log":
                    tqdm.write(record["message"], file=sys.stderr)
                elif record["type"] == "iteration":
                    metrics = record["metrics"]
                    bar.set_postfix(
                        reward=f"{metrics['reward']:.3f}",
                        KL=f"{metrics['kl']:.3f}",
                        safety=f"{metrics['by_safety_share']:.0%}",
                        refresh=False,
                    )
                elif record["type"] == "step":
                    bar.update(record["step"] - bar.n)

            listener = show if main_process else None
            metrics = run_job(spec, plan=plan, main_process=main_process, listener=listener)
    except (ValueError, OSError) as error:  # JobError, ConfigError, DataError
        print(f"error: {error}", file=sys.stderr)
        return 2
    if main_process:
        print(f"{metrics['summary']}; saved to {args.out / MODEL_DIR}")
    return 0


__all__ = ["add_commands", "run_ppo", "spec_of"]
