"""SFT examples: conversations read from JSON Lines, split by prompt, and tokenized with the
loss mask that says which tokens the model learns to write.

Reading (:func:`load_examples`): JSON Lines, plain or gzip-compressed (known from the content),
one example a record. A file's format is told from its first record (:func:`detect_format`):

- ``messages`` — what TRL's ``SFTTrainer`` reads: ``{"messages": [{"role", "content"}, …]}``.
  The conversation ends with an assistant turn, and every assistant turn follows a user turn
  (a system turn may open it). Every assistant turn is trained on, unless the record's optional
  ``"train_on": "last"`` (or the run's ``train_on`` setting) says only the last one counts:
  the earlier turns are then context, as Ghost Attention needs;
- ``prompt-completion`` — TRL's other format: ``{"prompt": messages or a string, "completion":
  a string or [one assistant message]}``; the prompt ends with a user turn;
- ``pool`` — a rejection-sampling pool: ``{"prompt": messages or a string, "response": "…"}``,
  the prompt ending with a user turn, ``response`` the kept sample's text; any other field
  (iteration, model, temperature, scores) is the pool's own and ignored here;
- preference pairs — the platform's training export (``trl``: ``prompt`` / ``chosen`` /
  ``rejected``), and whatever else :func:`rlhf.data.pairs.load_pairs` reads (implicit-prompt
  TRL, HH-RLHF transcripts, the canonical export): each pair gives the conversation whose
  answer is its *chosen* reply. A chosen reply labelled unsafe (``chosen_safe: false``) is
  left out (SFT would teach it), and so is a repeat of a (context, chosen) already read
  (several annotations of one comparison); the counts are reported.

In the last three formats only the answer (the last assistant turn) counts; turns in the prompt
are context. A bad record raises :class:`rlhf.data.pairs.DataError` naming the file, line and
field.

The split (:func:`split_examples`) is :func:`rlhf.data.split.split` by the conversation's first
user turn: conversations that open alike stay on one side, whatever their answers.

Tokenization (:func:`encode_example`): the conversation is rendered once, with the tokenizer's
chat template if it has one, else in the plain format of :mod:`rlhf.data.chat`, and tokenized
once (as the policy's prompt is when it samples). ``labels[t]`` is ``input_ids[t]`` for a token
that counts and ``IGNORE_INDEX`` (-100) for every other one; a token counts when its first
character lies in an assistant turn that is trained on:

- with a chat template, the turn is the text the template adds for the assistant's message
  after the generation prompt, up to and including the tokenizer's EOS token (SmolLM2's
  ``<|im_end|>``, which ends the turn, so the model learns to stop): the content and the
  end-of-turn token count; the generation prompt (``<|im_start|>assistant\\n``), whatever
  follows the EOS (a newline), the system and user turns and a default system prompt the
  template writes do not. Without an EOS in the turn, all the text it adds counts;
- in the plain format, the turn is the content after ``"Assistant:"``, with its leading space
  (``" Paris."``), and the EOS token id is appended after the last turn and counts; the
  ``"User: …"``, ``"System: …"`` and ``"Assistant:"`` cues, the blank lines between turns and
  the BOS token do not. An earlier assistant turn ends at the blank line before the next
  ``"User:"``: the worker cuts a plain-format reply there.

The first token never counts (nothing predicts it). A conversation longer than ``max_length``
keeps its first ``max_length`` tokens (an answer cut short loses its end).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.data import messages as checks
from rlhf.data.chat import conversation_text, format_prompt, has_chat_template
from rlhf.data.messages import FieldError
from rlhf.data.pairs import DataError, load_pairs
from rlhf.data.records import RecordReader, UnreadableGzip
from rlhf.data.records import detect_format as pair_format
from rlhf.data.split import split
from rlhf.sft.config import TRAIN_ON, ConfigError

IGNORE_INDEX = -100  # a label that does not count (PyTorch's and Hugging Face's convention)
FORMATS = ("messages", "prompt-completion", "pool", "pairs")
PAIR_FORMATS = ("trl", "hh-rlhf", "canonical")  # of rlhf.data.records: read by load_pairs


@dataclass(frozen=True)
class SFTExample:
    """A conversation ending with an assistant turn; ``train_on`` says which assistant turns
    count ("all", "last"; None: the run's ``train_on``)."""

    messages: list[dict[str, str]]
    train_on: str | None = None
    source: str = ""  # "file.jsonl:12"

    @property
    def context(self) -> list[dict[str, str]]:
        """The conversation, under the name :func:`rlhf.data.split.split` reads."""
        return self.messages


@dataclass
class LoadedFile:
    """The examples of one file, its format, and what was left out (reason → count)."""

    path: str
    format: str
    examples: list[SFTExample]
    left_out: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """``"export.jsonl: 120 examples (preference pairs: their chosen replies); left out 3
        chosen replies labelled unsafe"``."""
        what = "preference pairs: their chosen replies" if self.format == "pairs" else self.format
        text = f"{self.path}: {len(self.examples):,} examples ({what})"
        for reason, count in self.left_out.items():
            if count:
                text += f"; left out {count:,} {reason}"
        return text


# --- reading ------------------------------------------------------------------------------------


def detect_format(record: Any) -> str:
    """The format (one of :data:`FORMATS`) of a file whose first record is ``record``."""
    if isinstance(record, dict):
        if "messages" in record:
            return "messages"
        if "prompt" in record and "completion" in record:
            return "prompt-completion"
        if "prompt" in record and "response" in record:
            return "pool"
    if isinstance(record, dict | str) and pair_format(record) in PAIR_FORMATS:
        return "pairs"
    raise FieldError(
        "the first record is none of the SFT formats: {messages}, {prompt, completion}, "
        "{prompt, response} (a rejection-sampling pool), or preference pairs "
        "({prompt, chosen, rejected}, HH-RLHF, canonical)"
    )


def _train_on(record: dict) -> str | None:
    value = record.get("train_on")
    if value is not None and value not in TRAIN_ON:
        raise FieldError(f"must be one of {list(TRAIN_ON)}, not {value!r}", "train_on")
    return value


def conversation(value: Any, key: str) -> list[dict[str, str]]:
    """Checked messages of a whole conversation (see the module docstring): a non-empty
    assistant turn last, every assistant turn right after a non-empty user turn."""
    turns = checks.messages(value, key)
    if turns[-1]["role"] != "assistant":
        raise FieldError("the conversation must end with an assistant turn", key)
    for index, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        where = f"{key}[{index}]"
        if index == 0 or turns[index - 1]["role"] != "user":
            raise FieldError("an assistant turn must follow a user turn", where)
        checks.context(turns[:index], key)  # the user turn before it is not empty
        if not turn["content"].strip():
            raise FieldError("the assistant turn is empty", where)
    return turns


def _answered(prompt: list[dict[str, str]], answer: str, key: str) -> list[dict[str, str]]:
    if not answer.strip():
        raise FieldError("is empty", key)
    return [*prompt, {"role": "assistant", "content": answer}]


def _parse(record: Any, file_format: str) -> SFTExample:
    if not isinstance(record, dict):
        raise FieldError("each line must be a JSON object")
    if file_format == "messages":
        if "messages" not in record:
            raise FieldError("is missing", "messages")
        return SFTExample(conversation(record["messages"], "messages"), _train_on(record))
    answer_key = "completion" if file_format == "prompt-completion" else "response"
    for key in ("prompt", answer_key):
        if key not in record:
            raise FieldError("is missing", key)
    prompt = checks.context(record["prompt"], "prompt")
    if answer_key == "completion":
        answer = checks.completion(record["completion"], "completion")
    elif isinstance(record["response"], str):
        answer = record["response"]
    else:
        raise FieldError("must be a string", "response")
    return SFTExample(_answered(prompt, answer, answer_key), "last")


def _records(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    """(line number, decoded JSON) of every record; an unreadable line is a DataError."""
    with path.open("rb") as stream:
        try:
            for line, record in RecordReader(stream):
                if isinstance(record, FieldError):
                    raise DataError(name, line, record.field, str(record))
                yield line, record
        except UnreadableGzip as error:
            raise DataError(name, None, None, str(error)) from None


def _from_pairs(path: Path, name: str) -> LoadedFile:
    """Each preference pair's context answered by its chosen reply (see the module docstring)."""
    examples: list[SFTExample] = []
    seen: set[str] = set()
    unsafe = repeated = 0
    for pair in load_pairs(path):
        if pair.chosen_safe is False:
            unsafe += 1
            continue
        key = json.dumps([pair.context, pair.chosen], ensure_ascii=False)
        if key in seen:
            repeated += 1
            continue
        seen.add(key)
        messages = [*pair.context, {"role": "assistant", "content": pair.chosen}]
        examples.append(SFTExample(messages, "last", pair.source))
    left_out = {"chosen replies labelled unsafe": unsafe, "repeats": repeated}
    return LoadedFile(name, "pairs", examples, left_out)


def load_examples(path: str | os.PathLike) -> LoadedFile:
    """Every example of a JSONL file (plain or gzip-compressed), in file order (see the module
    docstring). Raises :class:`DataError` naming file, line and field on the first bad record,
    and for a missing file or one without examples."""
    name = os.fspath(path)
    path = Path(path)
    if not path.is_file():
        raise DataError(name, None, None, "no such file")
    records = _records(path, name)
    first = next(records, None)
    if first is None:
        raise DataError(name, None, None, "the file holds no examples")
    try:
        file_format = detect_format(first[1])
    except FieldError as error:
        raise DataError(name, first[0], error.field, str(error)) from None
    if file_format == "pairs":
        records.close()
        return _from_pairs(path, name)
    examples = []
    for line, record in [first, *records]:
        try:
            example = _parse(record, file_format)
        except FieldError as error:
            raise DataError(name, line, error.field, str(error)) from None
        examples.append(SFTExample(example.messages, example.train_on, f"{name}:{line}"))
    return LoadedFile(name, file_format, examples)


def split_examples(
    examples: Sequence[SFTExample], eval_fraction: float, seed: int
) -> tuple[list[SFTExample], list[SFTExample]]:
    """(train, held-out), each in input order: :func:`rlhf.data.split.split` by the first user
    turn, so the held-out prompts of a seed are the same whatever else the files hold."""
    return split(examples, eval_fraction, seed, by="first_user_turn")


def examples_digest(examples: Sequence[SFTExample]) -> str:
    """A SHA-256 of the examples' content in order (what a checkpoint must be resumed with)."""
    digest = hashlib.sha256()
    for example in examples:
        record = [example.messages, example.train_on]
        digest.update(json.dumps(record, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# --- tokenization -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedExample:
    """Token ids and labels (``labels[t]``: ``input_ids[t]`` where it counts, else
    :data:`IGNORE_INDEX`), of equal length."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def target_count(self) -> int:
        """The tokens that count: the loss's terms."""
        return sum(label != IGNORE_INDEX for label in self.labels)


def answer_spans(tokenizer, messages: Sequence[dict[str, str]]) -> tuple[str, list[range]]:
    """The conversation's text and, for each assistant turn, the characters that count (see
    the module docstring). Raises ConfigError for a chat template that does not render a
    conversation as the continuation of its shorter beginnings."""
    messages = [dict(m) for m in messages]
    text = conversation_text(tokenizer, messages[:-1], messages[-1]["content"])
    eos = tokenizer.eos_token if has_chat_template(tokenizer) else None
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = format_prompt(tokenizer, messages[:index])
        through = conversation_text(tokenizer, messages[:index], message["content"])
        if not through.startswith(prompt) or not text.startswith(through):
            raise ConfigError(
                "base_model",
                "the tokenizer's chat template does not write a conversation as the "
                "continuation of its beginning, so its assistant turns cannot be told apart",
            )
        turn = through[len(prompt) :]
        end = len(turn)
        if eos:
            content_at = turn.find(message["content"].strip())
            after = content_at + len(message["content"].strip()) if content_at >= 0 else 0
            eos_at = turn.find(eos, after)
            if eos_at >= 0:
                end = eos_at + len(eos)
        spans.append(range(len(prompt), len(prompt) + end))
    return text, spans


def encode_example(
    tokenizer, example: SFTExample, *, train_on: str = "all", max_length: int | None = None
) -> EncodedExample:
    """Token ids and labels of ``example`` (see the module docstring); ``train_on`` applies
    where the example names none. Needs a fast tokenizer (character offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("base_model", "SFT needs a fast tokenizer (character offsets)")
    which = example.train_on or train_on
    if which not in TRAIN_ON:
        raise ConfigError("train_on", f"must be one of {list(TRAIN_ON)}, not {which!r}")
    text, spans = answer_spans(tokenizer, example.messages)
    counted = spans if which == "all" else spans[-1:]
    template = has_chat_template(tokenizer)
    encoding = tokenizer(text, add_special_tokens=not template, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for position, (start, stop) in enumerate(encoding["offset_mapping"]):
        if position and stop > start and any(start in span for span in counted):
            labels[position] = input_ids[position]
    if not template and tokenizer.eos_token_id is not None:  # the plain format's end of turn
        input_ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return EncodedExample(input_ids, labels)


__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "EncodedExample",
    "LoadedFile",
    "SFTExample",
    "answer_spans",
    "conversation",
    "detect_format",
    "encode_example",
    "examples_digest",
    "load_examples",
    "split_examples",
]
