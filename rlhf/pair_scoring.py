"""Scoring a preference pair's two replies in one forward pass, their shared context computed once.

A pair's chosen and rejected texts are the same conversation up to the last assistant turn, so
their token sequences share a long prefix (on HH-RLHF harmless-base, most of the tokens). A
decoder's hidden state at a token depends only on the tokens before it, so the prefix needs to be
computed once. Each pair becomes one packed row::

    tokens     [ p0 p1 … pP-1 | c0 c1 … cA-1 | r0 r1 … rB-1 | pad … ]
    positions  [ 0  1  … P-1  | P  P+1 … P+A-1 | P  P+1 … P+B-1 | … ]

with a 4-D attention mask in which prefix tokens attend causally to the prefix, chosen tokens to
the prefix and the chosen tokens before them, and rejected tokens to the prefix and the rejected
tokens before them — never to the chosen ones. The rewards are the score head applied to the last
chosen token (index P+A-1) and to the last rejected token (P+A+B-1). This is exactly the
computation of scoring the two sequences separately (same tokens, same positions, same visible
keys), with P fewer tokens; :mod:`tests.unit.test_pair_scoring` checks it to 1e-4.

Encoders attend in both directions (a context token "sees" the reply), so their prefix cannot be
shared: they score the chosen and the rejected sequences as 2B separate rows of one batch.
:func:`uses_prefix_sharing` decides which; both paths return the same ``(chosen, rejected)``.

Tokens are those of :func:`rlhf.reward_model.score_texts` (its text format; a pair too long for
``max_length`` is cut by :func:`truncate_pair`, which keeps the two replies' context the same), so
scoring a pair that fits equals scoring its two texts there.

    encoded = encode_pairs(tokenizer, pairs, max_length=512)
    batch = collate(encoded[:8], pad_token_id=tokenizer.pad_token_id, prefix_sharing=True)
    chosen_rewards, rejected_rewards = PairRewardModel(model)(**batch)        # (8,), (8,)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rlhf.data import PreferencePair
from rlhf.reward_model import encode_texts, format_text, has_chat_template, usable_length


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


def common_prefix_length(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


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
    :func:`rlhf.reward_model.score_texts` scores; a longer pair keeps the same context for both
    replies (where single-text truncation would cut the shorter text's context less).
    """
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    if not pairs:
        return []
    texts = []
    for pair in pairs:
        texts.append(format_text(tokenizer, pair.context, pair.chosen))
        texts.append(format_text(tokenizer, pair.context, pair.rejected))
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


def uses_prefix_sharing(model) -> bool:
    """True for decoder-only models with a ``score`` head (Llama, Mistral, Qwen, GPT-2, …).

    They take a 4-D attention mask and position ids, and their reward is ``score(hidden)`` of
    the last token. Encoders and encoder-decoders score the two replies separately.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = model.config
    model_type = config.model_type
    return (
        isinstance(getattr(model, "score", None), nn.Linear)
        and not config.is_encoder_decoder
        and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


# --- collating ----------------------------------------------------------------------------------


def collate(
    encoded: Sequence[EncodedPair],
    *,
    pad_token_id: int,
    prefix_sharing: bool,
    pad_to_multiple_of: int = 1,
) -> dict[str, torch.Tensor]:
    """Model inputs for a batch of B pairs (right padding).

    Prefix sharing: ``input_ids``, ``position_ids`` and ``segment_ids`` (B, T) — segment 0 the
    shared prefix, 1 the chosen tail, 2 the rejected tail, 3 padding, from which
    :func:`prefix_sharing_mask` builds the attention mask where the model runs —, and
    ``chosen_index`` and ``rejected_index`` (B,). Separate: ``input_ids`` and
    ``attention_mask`` (2B, T), chosen rows first. ``pad_to_multiple_of`` rounds T up (on GPUs,
    a few distinct shapes let kernels be planned once).
    """
    if prefix_sharing:
        return _collate_shared(encoded, pad_token_id, pad_to_multiple_of)
    return _collate_separate(encoded, pad_token_id, pad_to_multiple_of)


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


PREFIX, CHOSEN, REJECTED, PADDING = 0, 1, 2, 3  # segment ids of a packed row


def _collate_shared(encoded: Sequence[EncodedPair], pad_token_id: int, multiple: int) -> dict:
    width = _round_up(max(pair.packed_length for pair in encoded), multiple)
    batch = len(encoded)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    segment_ids = torch.full((batch, width), PADDING, dtype=torch.long)
    position_ids = torch.arange(width).repeat(batch, 1)
    chosen_index = torch.empty(batch, dtype=torch.long)
    rejected_index = torch.empty(batch, dtype=torch.long)
    for i, pair in enumerate(encoded):
        prefix = pair.shared_length
        rejected_tail = pair.rejected_ids[prefix:]
        end_chosen = len(pair.chosen_ids)
        end = end_chosen + len(rejected_tail)
        input_ids[i, :end] = torch.tensor(pair.chosen_ids + rejected_tail)
        segment_ids[i, :prefix] = PREFIX
        segment_ids[i, prefix:end_chosen] = CHOSEN
        segment_ids[i, end_chosen:end] = REJECTED
        position_ids[i, end_chosen:end] = torch.arange(prefix, prefix + len(rejected_tail))
        chosen_index[i] = end_chosen - 1
        rejected_index[i] = end - 1
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "chosen_index": chosen_index,
        "rejected_index": rejected_index,
    }


def prefix_sharing_mask(segment_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """The (B, 1, T, T) boolean attention mask of packed rows (True: may attend).

    A query sees the keys at or before its position that are in the prefix or in its own
    tail, so the chosen and the rejected tail never see each other; padding sees only itself
    (a query with no visible key would give NaN).
    """
    query_segment, key_segment = segment_ids[:, :, None], segment_ids[:, None, :]
    visible = position_ids[:, None, :] <= position_ids[:, :, None]
    visible &= (key_segment == PREFIX) | (key_segment == query_segment)
    visible &= (key_segment != PADDING) & (query_segment != PADDING)
    diagonal = torch.eye(segment_ids.shape[1], dtype=torch.bool, device=segment_ids.device)
    visible |= diagonal & (query_segment == PADDING)
    return visible[:, None]


# --- the forward pass ---------------------------------------------------------------------------


class PairRewardModel(nn.Module):
    """A reward model that maps a collated batch of pairs to ``(chosen, rejected)`` rewards.

    A thin wrapper around an ``AutoModelForSequenceClassification`` (``self.model``), so that
    the whole pair forward runs inside one module call: what ``accelerate`` wraps for DDP or
    FSDP (which gathers parameters around a module's forward) and autocasts.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.prefix_sharing = uses_prefix_sharing(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        chosen_index: torch.Tensor | None = None,
        rejected_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if segment_ids is None:  # separate rows: (2B, T), chosen first
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            chosen, rejected = logits[:, 0].chunk(2)
            return chosen, rejected
        # Built here, on the model's device; as an additive float mask, which every attention
        # implementation takes (eager adds it, SDPA accepts it).
        visible = prefix_sharing_mask(segment_ids, position_ids)
        dtype = self.model.score.weight.dtype
        if torch.is_autocast_enabled(input_ids.device.type):
            dtype = torch.get_autocast_dtype(input_ids.device.type)
        additive_mask = torch.zeros(visible.shape, dtype=dtype, device=input_ids.device)
        additive_mask.masked_fill_(~visible, torch.finfo(dtype).min)
        hidden = self.model.base_model(
            input_ids=input_ids, attention_mask=additive_mask, position_ids=position_ids
        ).last_hidden_state  # (B, T, H)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        chosen = self.model.score(hidden[rows, chosen_index])[:, 0]  # (B,)
        rejected = self.model.score(hidden[rows, rejected_index])[:, 0]
        return chosen, rejected


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
    shared = wrapper.prefix_sharing if prefix_sharing is None else prefix_sharing
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
                inputs = collate(
                    [encoded[i] for i in batch],
                    pad_token_id=tokenizer.pad_token_id,
                    prefix_sharing=shared,
                    pad_to_multiple_of=multiple,
                )
                inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
                chosen_rewards, rejected_rewards = wrapper(**inputs)
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
    "prefix_sharing_mask",
    "score_pairs",
    "uses_prefix_sharing",
]
