"""Anthropic HH-RLHF transcripts: a shared context and two final replies.

An HH-RLHF record holds two whole transcripts, ``chosen`` and ``rejected``, written as
``"\\n\\nHuman: …\\n\\nAssistant: …"``. They share their beginning and differ in the last
Assistant reply. :func:`context_and_replies` turns them into the context (a list of
``{role, content}`` messages ending with the user turn) and the two replies:

- the context is the shared beginning of both transcripts (character by character), cut at the
  last ``"\\n\\nAssistant:"`` marker that lies wholly inside it — so replies that begin alike
  ("I think yes." / "I think no.") are cut at the marker, not inside the reply;
- what follows that marker is each side's reply, taken as is (only stripped): a reply that
  contains ``"Human:"`` text, or even a further ``"\\n\\nHuman:"`` turn, is kept whole;
- every message is stripped of surrounding whitespace; identical transcripts and empty replies
  are allowed.

This is the one implementation of these rules: the platform's importer uses the same semantics,
and errors carry the record field they concern (``TranscriptError.field``).
"""

from __future__ import annotations

HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


class TranscriptError(ValueError):
    """A transcript that cannot be split; ``field`` names the record field at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def split_transcript(text: str) -> list[dict[str, str]]:
    """Split a transcript into messages: Human turns become ``user``, Assistant turns ``assistant``.

    Text before the first marker is an error unless it is blank; a transcript with no marker at
    all gives no messages. Each message's content is stripped.
    """
    messages: list[dict[str, str]] = []
    position = 0
    while position < len(text):
        human = text.find(HH_HUMAN, position)
        assistant = text.find(HH_ASSISTANT, position)
        starts = [
            (start, marker)
            for start, marker in ((human, HH_HUMAN), (assistant, HH_ASSISTANT))
            if start >= 0
        ]
        if not starts:
            break
        start, marker = min(starts)
        if not messages and text[position:start].strip():
            raise TranscriptError("text before the first Human/Assistant marker")
        if messages:
            messages[-1]["content"] = text[position:start].strip()
        role = "user" if marker == HH_HUMAN else "assistant"
        messages.append({"role": role, "content": ""})
        position = start + len(marker)
    if messages:
        messages[-1]["content"] = text[position:].strip()
    return messages


def _check_text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise TranscriptError(f"must be a string, not {type(value).__name__}", field)
    if not value.strip():
        raise TranscriptError("is empty", field)
    return value


def context_and_replies(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str]:
    """(context, chosen reply, rejected reply) of an HH-RLHF pair of transcripts.

    Raises :class:`TranscriptError` (a ``ValueError``) naming the field at fault when either
    transcript is not a non-blank string, when the two share no Human turn before their
    replies (``rejected``), or when the shared context does not start with a Human turn or has
    text before its first marker (``chosen``).
    """
    chosen = _check_text(chosen, "chosen")
    rejected = _check_text(rejected, "rejected")
    shared_length = 0
    for chosen_char, rejected_char in zip(chosen, rejected, strict=False):
        if chosen_char != rejected_char:
            break
        shared_length += 1
    cut = chosen.rfind(HH_ASSISTANT, 0, shared_length)  # the marker lies wholly in the prefix
    if cut < 0:
        raise TranscriptError(
            "chosen and rejected share no Human turn before their replies", "rejected"
        )
    try:
        context = split_transcript(chosen[:cut])
    except TranscriptError as error:
        raise TranscriptError(str(error), "chosen") from None
    if not context or context[0]["role"] != "user":
        raise TranscriptError("the transcript must start with a Human turn", "chosen")
    reply_start = cut + len(HH_ASSISTANT)
    return context, chosen[reply_start:].strip(), rejected[reply_start:].strip()
