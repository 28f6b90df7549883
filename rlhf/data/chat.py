"""The text of a conversation, for sampling a reply and for scoring one: one format, one place.

A tokenizer with a chat template formats the conversation itself. Without one (small base
models such as stories260K, the tiny test models) the *plain format* is used: each turn on its
own as ``"System: …"``, ``"User: …"`` or ``"Assistant: …"`` (content stripped), turns separated
by a blank line; a prompt ends with the cue for the model's turn::

    System: You are concise.

    User: What is the capital of France?

    Assistant: Paris.

    User: And of Italy?

    Assistant:

A base model continues that text and may go on to write the next "User:" turn itself;
:func:`response_text` keeps what comes before it. A scored text is the prompt followed by the
response (:func:`conversation_text`), so a reward model reads what the policy wrote after the
cue it was given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
TURN_SEPARATOR = "\n\n"
NEXT_USER_TURN = "\nUser:"

Messages = Sequence[Mapping[str, str]]


def role_label(role: str) -> str:
    return ROLE_LABELS.get(role, role.capitalize())


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def plain_prompt(messages: Messages) -> str:
    """The plain format of ``messages``, ending with the cue for the assistant's turn."""
    turns = [f"{role_label(m['role'])}: {m['content'].strip()}" for m in messages]
    return TURN_SEPARATOR.join([*turns, f"{ROLE_LABELS['assistant']}:"])


def plain_text(context: Messages, response: str) -> str:
    """The plain format: the context's turns, then the response as the last assistant turn."""
    return f"{plain_prompt(context)} {response.strip()}"


def format_prompt(tokenizer, messages: Messages) -> str:
    """The prompt to sample a reply from: the tokenizer's chat template, else the plain format."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
        )
    return plain_prompt(messages)


def conversation_text(tokenizer, context: Messages, response: str) -> str:
    """The text a (context, response) pair is scored as: the chat template's whole conversation
    with the response as its last assistant turn, else the plain format."""
    if has_chat_template(tokenizer):
        conversation = [dict(m) for m in context]
        conversation.append({"role": "assistant", "content": response})
        return tokenizer.apply_chat_template(conversation, tokenize=False)
    return plain_text(context, response)


def response_text(raw: str) -> str:
    """A plain-format completion up to the next "User:" turn the model wrote, if any, stripped."""
    cut = raw.find(NEXT_USER_TURN)
    return (raw if cut < 0 else raw[:cut]).strip()


def completion_text(tokenizer, token_ids) -> str:
    """The response text of sampled tokens. NUL characters are dropped: byte-level tokens (tiny
    models, Llama's ``<0x00>``) can produce them, and PostgreSQL text cannot hold them. Line
    breaks become ``\n``, as browsers show them. In the plain format, text after a "User:" turn
    the model went on to write is cut (:func:`response_text`)."""
    raw = tokenizer.decode(token_ids, skip_special_tokens=True).replace("\x00", "")
    raw = raw.replace("\r\n", "\n").replace("\r", "\n")
    return raw.strip() if has_chat_template(tokenizer) else response_text(raw)


def encode_prompt(tokenizer, messages: Messages, room: int | None = None) -> tuple[list[int], int]:
    """The prompt's token ids (the chat template writes its own BOS; the plain format relies on
    the tokenizer's), cut from the left to at most ``room`` tokens (a leading BOS kept), and how
    many tokens were cut."""
    add_special = not has_chat_template(tokenizer)
    ids = tokenizer(format_prompt(tokenizer, messages), add_special_tokens=add_special)["input_ids"]
    if room is None:
        return ids, 0
    kept = truncate_left(ids, room, tokenizer.bos_token_id)
    return kept, len(ids) - len(kept)


def truncate_left(ids: list[int], limit: int, bos_id: int | None) -> list[int]:
    """The last ``limit`` tokens of ``ids``, keeping a leading BOS in front."""
    if len(ids) <= limit:
        return ids
    if bos_id is not None and ids[0] == bos_id and limit > 1:
        return [bos_id, *ids[len(ids) - limit + 1 :]]
    return ids[len(ids) - limit :]
