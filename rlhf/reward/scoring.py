"""Scoring a batch of preference pairs in one forward pass: no padding, each shared context once.

A pair's chosen and rejected texts are the same conversation up to the last assistant turn, so
their token sequences share a long prefix (on HH-RLHF harmless-base, most of the context). A
decoder's hidden state at a token depends only on the tokens before it, so the prefix needs to be
computed once. A batch of B pairs becomes one packed row, the pairs one after the other::

    tokens     [ p0 p1 … pP-1 | c0 c1 … cA-1 | r0 r1 … rB-1 | next pair … ]
    positions  [ 0  1  … P-1  | P  P+1 … P+A-1 | P  P+1 … P+B-1 | 0 1 … ]

and attention keeps them apart (:mod:`rlhf.nn.packed_attention`): the prefix and the chosen reply
attend causally to themselves, the rejected reply to the prefix and to itself, never to the
chosen one. The rewards are the score head at the last chosen token (index P+A-1) and at the last
rejected one (P+A+B-1). This is exactly the computation of scoring the two sequences separately
(same tokens, same positions, same visible keys), with P fewer tokens and no padding;
:mod:`tests.unit.test_pair_scoring` checks it to 1e-4.

Encoders attend in both directions (a context token "sees" the reply), so their prefix cannot be
shared: the chosen and the rejected sequence go into the packed row one after the other, each
attending to itself, the reward read at ``[CLS]``. A model whose packed scoring would not equal
its own forward (:func:`packs_exactly` checks once, on two small random pairs) gets 2B padded rows
through its own forward instead. Both ways return the same ``(chosen, rejected)``.

Tokens are those of :func:`rlhf.reward.model.score_texts` (its text format; a pair too long for
``max_length`` is cut by :func:`truncate_pair`, which keeps the two replies' context the same), so
scoring a pair that fits equals scoring its two texts there.

    encoded = encode_pairs(tokenizer, pairs, max_length=512)
    reward_model = PairRewardModel(model)
    batch = reward_model.collate(encoded[:8], pad_token_id=tokenizer.pad_token_id)
    chosen_rewards, rejected_rewards = reward_model(**batch)                  # (8,), (8,)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhf.data.chat import conversation_text, has_chat_template
from rlhf.data.pairs import PreferencePair
from rlhf.nn.packed_attention import PackedLayout
from rlhf.reward.model import encode_texts, usable_length
from rlhf.reward.packed import (
    common_prefix_length,
    pack_sequences,
    packed_rewards,
    reward_head,
    uses_prefix_sharing,
)


@dataclass(frozen=True)
class EncodedPair:
    """A pair's two token sequences and the length of their common prefix.

    ``shared_length`` is at most ``len - 1`` of either sequence, so each reply keeps at least
    its own last token (whose hidden state is its reward), also when one text is a prefix of
    the other or both are equal.
    """

    chosen_ids: list[int]
    rejected_ids: list[int]
    shared_length: int

    @property
    def packed_length(self) -> int:
        """Tokens of the packed row: the prefix once, then both tails."""
        return len(self.chosen_ids) + len(self.rejected_ids) - self.shared_length

    @property
    def separate_length(self) -> int:
        """Tokens of the longer of the two separate rows."""
        return max(len(self.chosen_ids), len(self.rejected_ids))


def leading_special_tokens(tokenizer) -> int:
    """How many special tokens the tokenizer puts before a text (BOS or CLS: usually 1)."""
    if has_chat_template(tokenizer):
        return 0  # the template writes its own; nothing is added
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return start
    return 0


def truncate_pair(
    chosen_ids: list[int], rejected_ids: list[int], max_length: int, lead: int
) -> tuple[list[int], list[int]]:
    """Cut a pair's two sequences to ``max_length``, keeping their shared context aligned.

    The tokens cut go from the front of the text, after the ``lead`` special tokens. Both
    sequences first lose the same number of context tokens — as many as the longer one must
    lose, at most their whole common prefix — so they keep the very same (shortened) context;
    a sequence still too long (its reply alone overflows) is then cut further on its own.
    """
    overflow = max(len(chosen_ids), len(rejected_ids)) - max_length
    if overflow <= 0:
        return chosen_ids, rejected_ids
    common = common_prefix_length(chosen_ids, rejected_ids) - lead
    cut = max(0, min(overflow, common))

    def shorten(ids: list[int]) -> list[int]:
        ids = ids[:lead] + ids[lead + cut :]
        extra = len(ids) - max_length
        return ids if extra <= 0 else ids[:lead] + ids[lead + extra :]

    return shorten(chosen_ids), shorten(rejected_ids)


def encode_pairs(
    tokenizer, pairs: Sequence[PreferencePair], *, max_length: int = 512
) -> list[EncodedPair]:
    """Tokenise each pair's chosen and rejected texts and cut them with :func:`truncate_pair`.

    A pair whose two texts fit in ``max_length`` gets exactly the tokens
    :func:`rlhf.reward.model.score_texts` scores; a longer pair keeps the same context for both
    replies (where single-text truncation would cut the shorter text's context less).
    """
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    if not pairs:
        return []
    texts = []
    for pair in pairs:
        texts.append(conversation_text(tokenizer, pair.context, pair.chosen))
        texts.append(conversation_text(tokenizer, pair.context, pair.rejected))
    ids = encode_texts(tokenizer, texts, max_length=None)
    lead = leading_special_tokens(tokenizer)
    encoded = []
    for chosen_ids, rejected_ids in zip(ids[0::2], ids[1::2], strict=True):
        chosen_ids, rejected_ids = truncate_pair(chosen_ids, rejected_ids, max_length, lead)
        shared = min(
            common_prefix_length(chosen_ids, rejected_ids),
            len(chosen_ids) - 1,
            len(rejected_ids) - 1,
        )
        encoded.append(EncodedPair(chosen_ids, rejected_ids, max(shared, 0)))
    return encoded


# --- collating ----------------------------------------------------------------------------------


def collate(
    encoded: Sequence[EncodedPair],
    *,
    pad_token_id: int,
    prefix_sharing: bool,
    packed: bool = True,
    reward_token: str = "last",
    pad_to_multiple_of: int = 1,
) -> dict[str, Any]:
    """Model inputs for a batch of B pairs.

    Packed (the default): one row of all the batch's tokens, no padding — ``input_ids`` and
    ``position_ids`` (1, N), ``packed_layout`` (a :class:`rlhf.nn.packed_attention.PackedLayout`)
    and ``chosen_index`` / ``rejected_index`` (B,), the tokens whose hidden state is each reward
    (``reward_token``: ``"last"`` for decoders, ``"first"`` for encoders' ``[CLS]``). With
    ``prefix_sharing`` a pair is its context once, then the chosen reply, then the rejected
    reply, whose positions restart where the context ends (see the module docstring); without,
    its chosen and its rejected sequence one after the other.

    Not packed: ``input_ids`` and ``attention_mask`` (2B, T), chosen rows first, padded on the
    right (``pad_to_multiple_of`` rounds T up), for the model's own forward.
    """
    if not packed:
        return _collate_separate(encoded, pad_token_id, pad_to_multiple_of)
    return _collate_packed(encoded, reward_token, prefix_sharing)


def _round_up(width: int, multiple: int) -> int:
    return -(-width // multiple) * multiple


def _collate_separate(encoded: Sequence[EncodedPair], pad_token_id: int, multiple: int) -> dict:
    rows = [pair.chosen_ids for pair in encoded] + [pair.rejected_ids for pair in encoded]
    width = _round_up(max(len(row) for row in rows), multiple)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _collate_packed(encoded: Sequence[EncodedPair], reward_token: str, sharing: bool) -> dict:
    """The pairs' sequences one after the other on one row; with ``sharing`` each rejected
    reply takes its context from the chosen sequence (a decoder's: see the module docstring)."""
    sequences = [ids for pair in encoded for ids in (pair.chosen_ids, pair.rejected_ids)]
    if sharing:
        shared = [length for pair in encoded for length in (0, pair.shared_length)]
        inputs = pack_sequences(sequences, "last", shared)
    else:
        inputs = pack_sequences(sequences, reward_token)
    reads = inputs.pop("reward_index")
    return inputs | {"chosen_index": reads[0::2], "rejected_index": reads[1::2]}


def to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    """A collated batch with its tensors on ``device`` (the packed layout stays as it is)."""
    return {
        name: value.to(device) if isinstance(value, torch.Tensor) else value
        for name, value in batch.items()
    }


# --- the forward pass ---------------------------------------------------------------------------


def packs_exactly(model) -> bool:
    """Whether packed scoring of ``model`` gives the rewards of its own padded forward.

    Packed scoring relies on the model routing attention through ``transformers``' attention
    interface, passing keywords down to it, and numbering its layers; rather than trust an
    architecture's name, two small pairs of random tokens are scored both ways (float32 to
    1e-4, lower precisions to 2e-2). Runs without gradients in eval mode.
    """
    if reward_head(model) is None:
        return False
    config = model.config
    vocabulary, pad = config.vocab_size, config.pad_token_id
    generator = torch.Generator().manual_seed(0)

    def tokens(count: int) -> list[int]:
        ids = torch.randint(0, vocabulary, (count,), generator=generator).tolist()
        return [(i + 1) % vocabulary if i == pad else i for i in ids]

    shared = tokens(5)
    probe = [
        EncodedPair(shared + tokens(3), shared + tokens(4), 5),
        EncodedPair(tokens(4), tokens(6), 0),
    ]
    separate = PairRewardModel(model, packed=False)
    packed = PairRewardModel(model, packed=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = separate(**to_device(separate.collate(probe, pad_token_id=pad), device))
            found = packed(**to_device(packed.collate(probe, pad_token_id=pad), device))
    except Exception:  # a model that cannot take a packed row at all
        return False
    finally:
        model.train(was_training)
    tolerance = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2
    return torch.allclose(
        torch.cat(found).float(), torch.cat(expected).float(), atol=tolerance, rtol=tolerance
    )


class PairRewardModel(nn.Module):
    """A reward model that maps a collated batch of pairs to ``(chosen, rejected)`` rewards.

    A thin wrapper around an ``AutoModelForSequenceClassification`` (``self.model``), so that
    the whole pair forward runs inside one module call: what ``accelerate`` wraps for DDP or
    FSDP (which gathers parameters around a module's forward) and autocasts. ``packed``
    (default: :func:`packs_exactly`) says whether it takes packed batches; else 2B padded rows
    through the model's own forward.
    """

    def __init__(self, model, packed: bool | None = None):
        super().__init__()
        self.model = model
        self.prefix_sharing = uses_prefix_sharing(model)
        self.reward_token = "last" if self.prefix_sharing else "first"
        self.packed = packs_exactly(model) if packed is None else packed
        self.training = model.training  # a new module says "training"; the model may not be

    def collate(
        self,
        encoded: Sequence[EncodedPair],
        *,
        pad_token_id: int,
        prefix_sharing: bool = True,
        pad_to_multiple_of: int = 1,
    ) -> dict[str, Any]:
        """:func:`collate` for this model: packed if it packs, sharing the prefix if it can
        and ``prefix_sharing`` allows."""
        return collate(
            encoded,
            pad_token_id=pad_token_id,
            prefix_sharing=self.packed and self.prefix_sharing and prefix_sharing,
            packed=self.packed,
            reward_token=self.reward_token,
            pad_to_multiple_of=pad_to_multiple_of,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        packed_layout: PackedLayout | None = None,
        chosen_index: torch.Tensor | None = None,
        rejected_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if packed_layout is None:  # separate rows: (2B, T), chosen first
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            chosen, rejected = logits[:, 0].chunk(2)
            return chosen, rejected
        reads = torch.stack([chosen_index, rejected_index], dim=1).flatten()  # chosen, rejected…
        rewards = packed_rewards(self.model, input_ids, position_ids, packed_layout, reads)
        return rewards[0::2], rewards[1::2]


# --- batching -----------------------------------------------------------------------------------


def length_grouped_order(
    lengths: Sequence[int], batch_size: int, *, seed: int, group_batches: int = 16
) -> list[int]:
    """A shuffled order of indices in which consecutive ``batch_size`` runs have similar lengths.

    The indices are shuffled, cut into groups of ``group_batches × batch_size``, each group
    sorted by length (longest first), cut into batches, and the batches shuffled: batches pad
    little, yet their order and content stay random (the megabatch scheme of Hugging Face's
    ``LengthGroupedSampler``). Deterministic for given lengths and seed.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * group_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        members = sorted(order[start : start + group], key=lambda i: -lengths[i])
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return [index for batch in batches for index in batch]


def batches_by_length(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices sorted by length, in batches: for evaluation, where order does not matter."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def padding_multiple(device: torch.device | str) -> int:
    """Batch widths are rounded up to this: 64 on GPUs, whose attention kernels are planned per
    shape (with free lengths, nearly every batch is a new shape), 1 on CPUs."""
    return 64 if torch.device(device).type == "cuda" else 1


def score_pairs(
    model,
    tokenizer,
    pairs: Sequence[PreferencePair],
    *,
    batch_size: int = 16,
    max_length: int = 512,
    prefix_sharing: bool | None = None,
    progress: Callable[[int], None] | None = None,
    pad_to_multiple_of: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen and rejected rewards of every pair: two float32 CPU tensors of shape (n,).

    ``model`` is an ``AutoModelForSequenceClassification`` (or a :class:`PairRewardModel`).
    Runs without gradients in eval mode (restored afterwards), in batches grouped by length; the
    rewards come back in input order. ``prefix_sharing=None`` uses it where the model allows.
    ``progress`` is called with the number of pairs scored after each batch.
    ``pad_to_multiple_of`` defaults to :func:`padding_multiple` of the model's device.
    """
    wrapper = model if isinstance(model, PairRewardModel) else PairRewardModel(model)
    shared = wrapper.packed and wrapper.prefix_sharing and prefix_sharing is not False
    max_length = usable_length(wrapper.model, max_length)
    encoded = encode_pairs(tokenizer, pairs, max_length=max_length)
    chosen = torch.empty(len(encoded), dtype=torch.float32)
    rejected = torch.empty(len(encoded), dtype=torch.float32)
    if not encoded:
        return chosen, rejected
    lengths = [p.packed_length if shared else p.separate_length for p in encoded]
    device = next(wrapper.parameters()).device
    multiple = pad_to_multiple_of or padding_multiple(device)
    was_training = wrapper.training
    wrapper.eval()
    try:
        with torch.no_grad():
            for batch in batches_by_length(lengths, batch_size):
                inputs = wrapper.collate(
                    [encoded[i] for i in batch],
                    pad_token_id=tokenizer.pad_token_id,
                    prefix_sharing=shared,
                    pad_to_multiple_of=multiple,
                )
                chosen_rewards, rejected_rewards = wrapper(**to_device(inputs, device))
                chosen[batch] = chosen_rewards.float().cpu()
                rejected[batch] = rejected_rewards.float().cpu()
                if progress is not None:
                    progress(len(batch))
    finally:
        wrapper.train(was_training)
    return chosen, rejected


__all__ = [
    "EncodedPair",
    "PairRewardModel",
    "collate",
    "common_prefix_length",
    "encode_pairs",
    "length_grouped_order",
    "packs_exactly",
    "reward_head",
    "score_pairs",
    "to_device",
    "uses_prefix_sharing",
]
