"""Packed rows: many conversations in one row of tokens, none attending to another.

A *row* holds whole examples, one after the other, up to ``max_length`` tokens
(:func:`pack_rows`); no padding. A micro-batch's rows go through the model as one packed
sequence (:func:`collate`), each example one causal block of
:mod:`rlhf.nn.packed_attention` with its positions restarting at 0::

    tokens     [ a0 a1 … aA-1 | b0 b1 … bB-1 | … ]
    positions  [ 0  1  … A-1  | 0  1  … B-1  | … ]
    targets    [ a1 a2 … −100 | b1 b2 … −100 | … ]     (−100 where the next token does not count)

so every example is computed exactly as on its own (same tokens, same positions, same visible
keys), and the last token of one example predicts nothing (never the next example's first).
:class:`PackedCausalLM` runs a causal LM on such a row and returns the cross-entropy of each
counted target, the language-model head applied at those positions only (the prompt's tokens
need no logits). :func:`packs_exactly` checks once that a model gives its own numbers packed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhf.nn.packed_attention import AttentionBlock, PackedLayout, packed_attention_of
from rlhf.sft.data import IGNORE_INDEX, EncodedExample
from rlhf.sft.losses import causal_lm_loss, masked_token_cross_entropy

OPEN_ROWS = 64  # first fit looks at the rows opened last, so packing stays linear in examples


def pack_rows(lengths: Sequence[int], order: Sequence[int], capacity: int) -> list[list[int]]:
    """The indices of ``order`` in rows of at most ``capacity`` tokens (``lengths[i]`` each,
    none above ``capacity``): first fit, in order, among the :data:`OPEN_ROWS` rows opened last
    (a row that has room is filled before a new one is opened). Deterministic."""
    rows: list[list[int]] = []
    free: list[int] = []
    for index in order:
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"example {index} has {length} tokens, more than a row's {capacity}")
        first_open = max(0, len(rows) - OPEN_ROWS)
        for row in range(first_open, len(rows)):
            if free[row] >= length:
                rows[row].append(index)
                free[row] -= length
                break
        else:
            rows.append([index])
            free.append(capacity - length)
    return rows


@dataclass
class PackedBatch:
    """A micro-batch: the model's ``inputs`` and each counted target's ``weights`` (that of its
    example: 0 for a filler that keeps processes in step)."""

    inputs: dict[str, Any]
    weights: torch.Tensor

    def to(self, device) -> PackedBatch:
        inputs = {
            name: value.to(device) if isinstance(value, torch.Tensor) else value
            for name, value in self.inputs.items()
        }
        return PackedBatch(inputs, self.weights.to(device))


def collate(
    examples: Sequence[EncodedExample], weights: Sequence[float] | None = None
) -> PackedBatch:
    """One packed sequence of ``examples`` (see the module docstring): ``input_ids`` and
    ``position_ids`` (1, N), ``packed_layout``, and the counted targets' ``target_positions``
    and ``target_ids`` (K,), the packed position predicting each and the token it predicts."""
    weights = [1.0] * len(examples) if weights is None else list(weights)
    token_ids: list[int] = []
    positions: list[int] = []
    blocks = []
    target_positions: list[int] = []
    target_ids: list[int] = []
    target_weights: list[float] = []
    for example, weight in zip(examples, weights, strict=True):
        start, end = len(token_ids), len(token_ids) + len(example)
        token_ids += example.input_ids
        positions += range(len(example))
        blocks.append(AttentionBlock((range(start, end),), range(start, end), causal=True))
        for offset, label in enumerate(example.labels[1:]):
            if label != IGNORE_INDEX:
                target_positions.append(start + offset)
                target_ids.append(label)
                target_weights.append(weight)
    inputs = {
        "input_ids": torch.tensor([token_ids]),
        "position_ids": torch.tensor([positions]),
        "packed_layout": PackedLayout(len(token_ids), tuple(blocks), ()),
        "target_positions": torch.tensor(target_positions, dtype=torch.long),
        "target_ids": torch.tensor(target_ids, dtype=torch.long),
    }
    return PackedBatch(inputs, torch.tensor(target_weights, dtype=torch.float32))


class PackedCausalLM(nn.Module):
    """A causal LM (``self.model``, an ``AutoModelForCausalLM``) mapping a packed batch to the
    cross-entropy of each counted target (K,), float32.

    A thin wrapper, so that the whole forward runs inside one module call: what ``accelerate``
    wraps for DDP or FSDP and autocasts.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.training = model.training

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        packed_layout: PackedLayout,
        target_positions: torch.Tensor,
        target_ids: torch.Tensor,
    ) -> torch.Tensor:
        with packed_attention_of(self.model):
            hidden = self.model.base_model(
                input_ids=input_ids,
                position_ids=position_ids,
                packed_layout=packed_layout,
                use_cache=False,
            ).last_hidden_state[0]  # (N, H)
        logits = self.model.get_output_embeddings()(hidden[target_positions])  # (K, V)
        return masked_token_cross_entropy(logits, target_ids, reduction="none")


def packs_exactly(model) -> bool:
    """Whether :class:`PackedCausalLM` gives ``model``'s own losses: two random sequences, every
    token counted, scored packed and one by one with the model's own forward (float32 to 1e-4,
    lower precisions to 2e-2). Packing relies on the model routing attention through
    ``transformers``' attention interface and computing its logits with its output embeddings
    alone; rather than trust an architecture's name, this checks. No gradients, eval mode."""
    vocabulary = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    probe = []
    for length in (5, 7):
        ids = torch.randint(0, vocabulary, (length,), generator=generator).tolist()
        probe.append(EncodedExample(ids, [IGNORE_INDEX, *ids[1:]]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = PackedCausalLM(model)(**collate(probe).to(device).inputs)
            expected = torch.cat(
                [
                    causal_lm_loss(
                        model(input_ids=torch.tensor([e.input_ids], device=device)).logits[0],
                        torch.tensor(e.labels, device=device),
                        reduction="none",
                    )
                    for e in probe
                ]
            )
    except Exception:  # a model that cannot take a packed row at all
        return False
    finally:
        model.train(was_training)
    tolerance = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2
    return torch.allclose(packed, expected, atol=tolerance, rtol=tolerance)


__all__ = ["OPEN_ROWS", "PackedBatch", "PackedCausalLM", "collate", "pack_rows", "packs_exactly"]
