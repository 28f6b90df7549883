"""Instruction adherence by turn: what Ghost Attention is meant to raise.

Each dialogue is sampled turn by turn with its instruction in the first user turn only, the
conversation growing with the model's own replies (:func:`rlhf.gatt.data.sample_dialogues`,
nothing resampled), and every reply is checked against the instruction's rule-checkable
constraints. Turn 1 has the instruction in front of it; turns 2 and later have to remember it.
The seeds depend on the run's seed, the dialogue and the turn only, so two models evaluated
with the same seed are compared on the same draws.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from rlhf.gatt.data import Dialogue, PolicySampler, Sampler, adherence_table, sample_dialogues
from rlhf.gatt.instructions import Constraint, Instruction


def _instructions(
    instruction: Constraint | Instruction | Sequence[Instruction], count: int
) -> list[Instruction]:
    if isinstance(instruction, Constraint):
        instruction = Instruction((instruction,))
    found = [instruction] * count if isinstance(instruction, Instruction) else list(instruction)
    if len(found) != count:
        raise ValueError(f"{len(found)} instructions for {count} dialogues")
    for each in found:
        if not each.checkable:
            raise ValueError(f"{each.text!r} has no rule-checkable constraint to measure")
    return found


def adherence_of(
    sampler: Sampler,
    dialogues: Sequence[Dialogue],
    instruction: Constraint | Instruction | Sequence[Instruction],
    turns: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Adherence by turn of ``sampler``'s replies: for each turn (from 1) the replies that keep
    the instruction, ``{"turn", "responses", "adhering", "rate"}``. ``instruction``: one for
    every dialogue, or one each; it must be rule-checkable."""
    instructions = _instructions(instruction, len(dialogues))
    sampled = sample_dialogues(
        sampler, dialogues, instructions, turns=turns, seed=seed, every_turn=False
    )
    return adherence_table(sampled)


def adherence_by_turn(
    policy_dir: str | os.PathLike,
    dialogues: Sequence[Dialogue],
    instruction: Constraint | Instruction | Sequence[Instruction],
    turns: int,
    seed: int,
    *,
    temperature: float = 0.7,
    top_p: float = 0.9,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    cpu: bool = False,
) -> list[dict[str, Any]]:
    """:func:`adherence_of` the model in ``policy_dir`` (float32 on CPUs, bf16 on a GPU that
    has it), sampling with these settings."""
    import torch

    from rlhf.nn.devices import use_cpu
    from rlhf.policy_eval.job import load_policy

    device = torch.device("cpu" if use_cpu(cpu) else "cuda")
    model, tokenizer = load_policy(os.fspath(policy_dir), device)
    sampler = PolicySampler(model, tokenizer, temperature, top_p, max_new_tokens, batch_size)
    return adherence_of(sampler, dialogues, instruction, turns, seed)


def format_adherence(tables: dict[str, list[dict[str, Any]]]) -> str:
    """Adherence by turn of several models, a row per turn::

    turn  base             trained
       1  12/16 (75.0 %)   16/16 (100.0 %)
    """
    names = list(tables)
    lines = ["turn  " + "".join(f"{name:<18}" for name in names).rstrip()]
    for turn in range(max((len(t) for t in tables.values()), default=0)):
        cells = []
        for name in names:
            row = tables[name][turn] if turn < len(tables[name]) else None
            if row is None or not row["responses"]:
                cells.append(f"{'—':<18}")
            else:
                shown = f"{row['adhering']}/{row['responses']} ({row['rate']:.1%})"
                cells.append(f"{shown.replace('%', ' %'):<18}")
        lines.append(f"{turn + 1:>4}  " + "".join(cells).rstrip())
    return "\n".join(lines)


__all__ = ["adherence_by_turn", "adherence_of", "format_adherence"]
