"""Reward models on packed rows: token sequences one after the other in one row, none attending
to another, the reward read at each one's reward token (a decoder's last, an encoder's
``[CLS]``) with the last layer computing only those queries (:mod:`rlhf.nn.packed_attention`).

    inputs = pack_sequences([ids_a, ids_b], "last")      # one row, two causal blocks
    rewards = packed_rewards(model, **inputs)             # (2,)

Text scoring (:func:`rlhf.reward.model.score_texts`) and pair scoring
(:mod:`rlhf.reward.scoring`, which also shares each pair's context) both run on it, for a model
that gives its own forward's rewards this way (:func:`packs_texts`, checked once per model).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
from torch import nn

from rlhf.nn.packed_attention import AttentionBlock, PackedLayout, packed_attention_of


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


def reward_head(model) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The map from the hidden states of reward tokens (S, H) to rewards (S,), for the heads
    packed scoring knows: a decoder's ``score`` (last token) and a BERT-like encoder's pooler
    and ``classifier`` (``[CLS]``); None for any other model."""
    if isinstance(getattr(model, "score", None), nn.Linear):
        return lambda hidden: model.score(hidden)[:, 0]
    pooler = getattr(model.base_model, "pooler", None)
    classifier = getattr(model, "classifier", None)
    if isinstance(pooler, nn.Module) and isinstance(classifier, nn.Linear):
        dropout = getattr(model, "dropout", nn.Identity())
        return lambda hidden: classifier(dropout(pooler(hidden[:, None])))[:, 0]
    return None


def pack_sequences(
    sequences: Sequence[Sequence[int]],
    reward_token: str,
    shared_lengths: Sequence[int] | None = None,
) -> dict:
    """Token sequences one after the other in one packed row, each attending to itself only
    (causally if the reward is read at the ``"last"`` token, a decoder's; both ways at the
    ``"first"``, an encoder's ``[CLS]``): ``input_ids``, ``position_ids``, ``packed_layout``
    and ``reward_index`` (S,), the packed position of each sequence's reward token.

    ``shared_lengths[i]`` > 0 (decoders only): the first that many tokens of sequence i are
    those of its *head*, the last sequence before it with a shared length of 0. They are not
    packed again; i's other tokens attend to the head's copy of them, at the same positions, and
    to themselves: the same numbers as i alone (:func:`shared_prefixes` finds the lengths).
    """
    if reward_token not in ("first", "last"):
        raise ValueError(f"reward_token must be 'first' or 'last', not {reward_token!r}")
    causal = reward_token == "last"  # decoders read the last token, encoders the first
    shared_lengths = [0] * len(sequences) if shared_lengths is None else list(shared_lengths)
    if any(shared_lengths) and not causal:
        raise ValueError("only a decoder's sequences (reward at the last token) share prefixes")
    token_ids: list[int] = []
    positions: list[int] = []
    blocks, reward_blocks, rewards = [], [], []
    head, head_start = None, 0
    for ids, shared in zip(sequences, shared_lengths, strict=True):
        if shared and (head is None or not 0 < shared < len(ids) or ids[:shared] != head[:shared]):
            raise ValueError(f"a shared length of {shared} is not a prefix of the head's tokens")
        if not shared:
            head, head_start = ids, len(token_ids)
        start, end = len(token_ids), len(token_ids) + len(ids) - shared
        token_ids += ids[shared:]
        positions += range(shared, len(ids))
        own = range(start, end)
        keys = (range(head_start, head_start + shared), own) if shared else (own,)
        read = end - 1 if causal else start
        blocks.append(AttentionBlock(keys, own, causal))
        reward_blocks.append(AttentionBlock(keys, range(read, read + 1), causal))
        rewards.append(read)
    layout = PackedLayout(len(token_ids), tuple(blocks), tuple(reward_blocks))
    return {
        "input_ids": torch.tensor([token_ids]),
        "position_ids": torch.tensor([positions]),
        "packed_layout": layout,
        "reward_index": torch.tensor(rewards),
    }


# A sequence shares its head's prefix when that saves at least this many tokens: a shorter one
# saves less than the extra pieces of attention it costs.
MIN_SHARED_PREFIX = 16


def shared_prefixes(sequences: Sequence[Sequence[int]], minimum: int = MIN_SHARED_PREFIX):
    """For :func:`pack_sequences`: each sequence's common prefix with the head of its run (the
    last sequence that shares nothing), at most all but its last token, or 0 when that is
    shorter than ``minimum`` (it starts a new run). Order the sequences so that those with a
    common prefix are adjacent (e.g. the K responses to one prompt)."""
    lengths, head = [], None
    for ids in sequences:
        length = 0 if head is None else min(common_prefix_length(head, ids), len(ids) - 1)
        if length < minimum:
            length, head = 0, ids
        lengths.append(length)
    return lengths


def common_prefix_length(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


def packed_rewards(model, input_ids, position_ids, packed_layout, reward_index) -> torch.Tensor:
    """(S,) rewards of a packed row (:func:`pack_sequences`) from ``model``'s backbone and head,
    the last layer computing only the reward tokens' queries."""
    layout = packed_layout.for_model(last_layer=model.config.num_hidden_layers - 1)
    with packed_attention_of(model):
        hidden = model.base_model(
            input_ids=input_ids, position_ids=position_ids, packed_layout=layout
        ).last_hidden_state[0]  # (N, H)
    return reward_head(model)(hidden[reward_index])


_PACKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → it packs


def packs_texts(model) -> bool:
    """Whether :func:`packed_rewards` gives ``model``'s own padded forward's rewards, on two
    random sequences (float32 to 1e-4, lower precisions to 2e-2); checked once per model,
    without gradients, in eval mode."""
    if model in _PACKS:
        return _PACKS[model]
    _PACKS[model] = _probe(model) if reward_head(model) is not None else False
    return _PACKS[model]


def _probe(model) -> bool:
    config = model.config
    vocabulary, pad = config.vocab_size, config.pad_token_id
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocabulary, (2, 7), generator=generator)
    ids = torch.where(ids == pad, (ids + 1) % vocabulary, ids) if pad is not None else ids
    sequences = [ids[0, :5].tolist(), ids[1].tolist()]
    mask = torch.tensor([[1] * 5 + [0] * 2, [1] * 7])
    padded = torch.where(mask.bool(), ids, pad if pad is not None else 0)
    device = next(model.parameters()).device
    reward_token = "last" if uses_prefix_sharing(model) else "first"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = pack_sequences(sequences, reward_token)
            inputs = {k: v if k == "packed_layout" else v.to(device) for k, v in inputs.items()}
            packed = packed_rewards(model, **inputs).float()
            own = model(input_ids=padded.to(device), attention_mask=mask.to(device)).logits
    except Exception:  # a model that cannot take a packed row at all
        return False
    finally:
        model.train(was_training)
    tolerance = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2
    return torch.allclose(packed, own[:, 0].float(), atol=tolerance, rtol=tolerance)


__all__ = [
    "common_prefix_length",
    "pack_sequences",
    "packed_rewards",
    "packs_texts",
    "reward_head",
    "shared_prefixes",
    "uses_prefix_sharing",
]
