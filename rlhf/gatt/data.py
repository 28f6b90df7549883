"""Ghost Attention's training data: multi-turn dialogues, sampled with the instruction in every
user turn, turned into SFT examples that keep it in the first turn only.

Dialogues (:func:`load_dialogues`) are the user turns of a conversation, the assistant's to be
sampled: MT-Bench's ``turns``, the human turns of HH-RLHF transcripts (and of any preference
file :func:`rlhf.data.pairs.load_pairs` reads), the user turns of a prompt record and its later
turns (:func:`rlhf.data.prompts.load_prompts`).

The instruction is placed as the paper does: concatenated to the user's message, before it and
separated by a blank line (:func:`with_instruction`), not as a system message — so a chat
template's own default system prompt stays as it is, and a model without a template (the
plain format) reads it inside the turn.

Sampling (:func:`sample_dialogues`) goes turn by turn, the conversation growing: turn t of every
dialogue still running is sampled together (one reply each, seeded by the dialogue, the turn
and the attempt: :func:`reply_seed`), then turn t + 1 is asked with the replies so far in the
context. For the data the instruction is in every user turn; for the evaluation
(:mod:`rlhf.gatt.evaluation`) in the first only. An ``accept`` test may refuse a reply: it is
sampled again (a new seed) up to ``max_resamples`` times, after which the dialogue is dropped
(:func:`gatt_accept`: a blank reply is never kept, and with ``filter_adherent`` one that breaks
a rule-checkable instruction is not either — the paper relies on the model following an
instruction it sees in every turn; a small one often does not).

The examples (:func:`gatt_examples`): one per assistant turn t of a kept dialogue — the
conversation up to turn t, the instruction in the first user turn only, ``train_on="last"`` so
that only turn t's reply counts in the loss, every earlier turn (user and assistant) zeroed
(:func:`rlhf.sft.data.encode_example`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.data import pairs as pair_files
from rlhf.data.pairs import DataError, context_key, load_pairs, read_records
from rlhf.data.prompts import load_prompts
from rlhf.data.records import detect_format
from rlhf.gatt.instructions import Instruction
from rlhf.sft.data import SFTExample

INSTRUCTION_SEPARATOR = "\n\n"

Messages = list[dict[str, str]]
# One reply to each conversation (it ends with a user turn), seeded by the matching seed.
Sampler = Callable[[Sequence[Messages], Sequence[int]], list[str]]
# Whether a reply sampled under an instruction may be kept.
Accept = Callable[[Instruction, str], bool]


@dataclass(frozen=True)
class Dialogue:
    """The user turns of a conversation (the assistant's are sampled), and where it was read."""

    user_turns: tuple[str, ...]
    source: str = ""

    @property
    def key(self) -> str:
        """A hash of its user turns: the same dialogue read twice has one key."""
        return context_key(user_messages(self.user_turns))

    @property
    def opening(self) -> Messages:
        """Its first user turn, by which dialogues are held out (as SFT splits conversations)."""
        return user_messages(self.user_turns[:1])


def user_messages(turns: Sequence[str]) -> Messages:
    return [{"role": "user", "content": turn} for turn in turns]


# --- reading --------------------------------------------------------------------------------------


def _first_record(path: Path, name: str, csv: bool) -> Any:
    records = read_records(path, name, csv=csv)
    try:
        first = next(records, None)
    finally:
        records.close()
    if first is None:
        raise DataError(name, None, None, "the file holds no dialogues")
    return first[1]


def load_dialogues(path: str | os.PathLike) -> list[Dialogue]:
    """The dialogues of a file, in file order (see the module docstring); one turn or many.
    A bad record raises :class:`DataError` naming the file, line and field."""
    name, path = os.fspath(path), Path(path)
    if not path.is_file():
        raise DataError(name, None, None, "no such file")
    csv = path.name.removesuffix(".gz").endswith(".csv")
    first = _first_record(path, name, csv)
    dialogues = []
    if not csv and isinstance(first, dict) and detect_format(first) in pair_files.FORMATS:
        for pair in load_pairs(path):
            turns = tuple(m["content"] for m in pair.context if m["role"] == "user")
            dialogues.append(Dialogue(turns, pair.source))
        return dialogues
    for index, record in enumerate(load_prompts(path)):
        turns = [m["content"] for m in record.context if m["role"] == "user"]
        dialogues.append(Dialogue((*turns, *record.later_turns), f"{name}:{index + 1}"))
    return dialogues


# --- sampling -----------------------------------------------------------------------------------


def with_instruction(user_turn: str, instruction: Instruction) -> str:
    """The user's message with the instruction before it (see the module docstring)."""
    return f"{instruction.text}{INSTRUCTION_SEPARATOR}{user_turn}"


def conversation(
    dialogue: Dialogue, instruction: Instruction, replies: Sequence[str], *, every_turn: bool
) -> Messages:
    """The dialogue's user turns up to the one after ``replies``, with the replies between
    them; the instruction in the first user turn, and in every one with ``every_turn``."""
    messages: Messages = []
    for turn, user in enumerate(dialogue.user_turns[: len(replies) + 1]):
        text = with_instruction(user, instruction) if turn == 0 or every_turn else user
        messages.append({"role": "user", "content": text})
        if turn < len(replies):
            messages.append({"role": "assistant", "content": replies[turn]})
    return messages


@dataclass
class PolicySampler:
    """A causal language model as a :data:`Sampler`: one reply per conversation
    (:func:`rlhf.rejection_sampling.sampling.sample_groups` with K = 1), ``batch_size``
    conversations sampled together."""

    model: Any
    tokenizer: Any
    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int = 8

    def __call__(self, contexts: Sequence[Messages], seeds: Sequence[int]) -> list[str]:
        from rlhf.data.prompts import Prompt
        from rlhf.rejection_sampling.sampling import sample_groups

        replies = []
        for start in range(0, len(contexts), self.batch_size):
            batch = contexts[start : start + self.batch_size]
            groups = sample_groups(
                self.model,
                self.tokenizer,
                [Prompt(list(context), safety_prompt=False) for context in batch],
                [[seed] for seed in seeds[start : start + self.batch_size]],
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=self.max_new_tokens,
            )
            replies += [group[0][0] for group in groups]
        return replies


def reply_seed(seed: int, key: str, turn: int, attempt: int) -> int:
    """The seed of one reply: a hash of the run's seed, the dialogue, the turn and the attempt,
    so a rerun draws the same and a resample draws anew."""
    text = f"pairwise-gatt\x00{seed}\x00{key}\x00{turn}\x00{attempt}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def gatt_accept(filter_adherent: bool) -> Accept:
    """The data's test of a reply (see the module docstring)."""

    def accept(instruction: Instruction, reply: str) -> bool:
        if not reply.strip():
            return False
        return not (filter_adherent and instruction.checkable) or instruction.adheres(reply)

    return accept


@dataclass
class SampledDialogue:
    """A dialogue's sampled replies. ``first_try[t]``: whether turn t's first sample kept the
    instruction (None when no function can tell); ``dropped_at``: the turn (from 1) whose
    samples were all refused, which ended the dialogue (None: kept)."""

    dialogue: Dialogue
    instruction: Instruction
    replies: list[str] = field(default_factory=list)
    first_try: list[bool | None] = field(default_factory=list)
    resamples: int = 0
    dropped_at: int | None = None

    @property
    def kept(self) -> bool:
        return self.dropped_at is None


def sample_dialogues(
    sampler: Sampler,
    dialogues: Sequence[Dialogue],
    instructions: Sequence[Instruction],
    *,
    turns: int,
    seed: int,
    every_turn: bool,
    accept: Accept | None = None,
    max_resamples: int = 0,
    repair: bool = False,
    on_turn: Callable[[int, int], None] | None = None,
) -> list[SampledDialogue]:
    """Each dialogue's first ``turns`` assistant turns, sampled turn by turn (see the module
    docstring); with ``repair`` a reply that breaks a rule-checkable instruction is made to
    keep it (:meth:`Instruction.repair`) before ``accept`` sees it, its first try still counted
    as the policy wrote it; ``on_turn(turn, dialogues sampled)`` is called as each turn ends."""
    results = [SampledDialogue(d, i) for d, i in zip(dialogues, instructions, strict=True)]
    for turn in range(turns):
        # The dialogues still running that have a user turn left.
        pending = [r for r in results if r.kept and len(r.dialogue.user_turns) > turn]
        if not pending:
            break
        asked = len(pending)
        for attempt in range(max_resamples + 1):
            if not pending:
                break
            contexts = [
                conversation(r.dialogue, r.instruction, r.replies, every_turn=every_turn)
                for r in pending
            ]
            seeds = [reply_seed(seed, r.dialogue.key, turn, attempt) for r in pending]
            refused = []
            for result, reply in zip(pending, sampler(contexts, seeds), strict=True):
                if attempt == 0:
                    instruction = result.instruction
                    checked = instruction.adheres(reply) if instruction.checkable else None
                    result.first_try.append(checked)
                else:
                    result.resamples += 1
                if repair and result.instruction.checkable:
                    reply = result.instruction.repair(reply)
                if accept is None or accept(result.instruction, reply):
                    result.replies.append(reply)
                else:
                    refused.append(result)
            pending = refused
        for result in pending:
            result.dropped_at = turn + 1
        if on_turn is not None:
            on_turn(turn + 1, asked)
    return results


def adherence_table(sampled: Sequence[SampledDialogue]) -> list[dict[str, Any]]:
    """For each turn (from 1), the first samples of a rule-checkable instruction that kept it:
    ``{"turn", "responses", "adhering", "rate"}`` (rate None without responses)."""
    table = []
    turns = max((len(s.first_try) for s in sampled), default=0)
    for turn in range(turns):
        found = [s.first_try[turn] for s in sampled if len(s.first_try) > turn]
        checked = [value for value in found if value is not None]
        adhering = sum(checked)
        rate = adhering / len(checked) if checked else None
        table.append(
            {"turn": turn + 1, "responses": len(checked), "adhering": adhering, "rate": rate}
        )
    return table


# --- the examples ---------------------------------------------------------------------------------


def gatt_examples(sampled: Sequence[SampledDialogue]) -> list[SFTExample]:
    """One example per assistant turn of each kept dialogue (see the module docstring)."""
    examples = []
    for result in sampled:
        if not result.kept:
            continue
        for turn in range(1, len(result.replies) + 1):
            replies = result.replies[:turn]
            messages = conversation(
                result.dialogue, result.instruction, replies[:-1], every_turn=False
            )
            messages.append({"role": "assistant", "content": replies[-1]})
            source = f"{result.dialogue.source}, turn {turn}"
            examples.append(SFTExample(messages, "last", source))
    return examples


def write_examples(path: str | os.PathLike, examples: Sequence[SFTExample]) -> None:
    """The examples as JSON Lines in the messages format SFT reads, each with its ``train_on``
    (written to a temporary file first: a file that exists is whole)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        for example in examples:
            record = {"messages": example.messages, "train_on": example.train_on}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    partial.replace(path)


__all__ = [
    "INSTRUCTION_SEPARATOR",
    "Dialogue",
    "PolicySampler",
    "SampledDialogue",
    "adherence_table",
    "conversation",
    "gatt_accept",
    "gatt_examples",
    "load_dialogues",
    "reply_seed",
    "sample_dialogues",
    "with_instruction",
    "write_examples",
]
