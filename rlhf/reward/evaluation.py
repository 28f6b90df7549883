"""Evaluating a reward model on preference pairs: accuracy, calibration and the safety gate.

    metrics = evaluate_reward_model(model, tokenizer, pairs)   # scores, then the metrics below
    metrics = metrics_from_rewards(pairs, chosen_rewards, rejected_rewards)
    print(format_metrics_table(metrics))

The metrics (a JSON-serialisable dict):

- ``pairs``, ``accuracy`` (ties count ½, :func:`rlhf.reward.losses.pairwise_accuracy`) and ``loss``
  (the margin loss with each pair's margin);
- ``by_strength``: accuracy per rating bucket, the columns of Llama 2's Table 8 (significantly
  better, better, slightly better, negligibly better / unsure; ``unrated`` for pairs without a
  strength, such as HH-RLHF's), only the buckets present;
- ``by_batch`` and ``by_kind``: the same per batch name and per kind (helpfulness, safety);
- ``ece`` and ``calibration``: expected calibration error of the preference probability
  p = σ(r_c − r_r). Each pair's prediction is the reply with the higher reward, its confidence
  max(p, 1 − p) ∈ [0.5, 1]; confidences fall into ``CALIBRATION_BINS`` equal bins and
  ECE = Σ_bins (n_bin / n) · |accuracy_bin − mean confidence_bin|;
- ``safety_gate``: for replies with a safety label, precision and recall of "unsafe" when a reply
  is flagged unsafe by σ(r) < ``threshold`` (0.15, the gate of Llama 2's PPO reward, DESIGN.md);
  None when no reply is labelled (HH-RLHF carries no labels);
- ``score_spread``: the quantiles (0, 10, 50, 90, 100 %) and standard deviation of σ(r) over every
  scored reply (:func:`score_spread`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from rlhf.data.pairs import PreferencePair
from rlhf.data.pairs import margins as pair_margins  # (a local "margins" below)
from rlhf.preferences import TABLE8_BUCKETS, UNRATED
from rlhf.reward.gate import SAFETY_GATE, gate_precision_recall
from rlhf.reward.losses import margin_ranking_loss, pairwise_accuracy, preference_probability

CALIBRATION_BINS = 10


def _accuracy_by(keys: Sequence[str], correct: torch.Tensor, order: Sequence[str] | None = None):
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    names = [k for k in order if k in groups] if order is not None else sorted(groups)
    return {
        name: {"pairs": len(groups[name]), "accuracy": correct[groups[name]].mean().item()}
        for name in names
    }


def calibration(probabilities: torch.Tensor, bins: int = CALIBRATION_BINS):
    """``(ece, bins)`` of preference probabilities p = σ(r_c − r_r), see the module docstring."""
    confidence = torch.maximum(probabilities, 1 - probabilities)
    correct = (probabilities > 0.5).double() + 0.5 * (probabilities == 0.5).double()
    # Bin b holds confidences in [0.5 + b·w, 0.5 + (b+1)·w), the last bin including 1.0.
    width = 0.5 / bins
    inner_edges = torch.tensor(
        [0.5 + (b + 1) * width for b in range(bins - 1)], dtype=torch.float64
    )
    index = torch.bucketize(confidence.double(), inner_edges, right=True)
    table, ece = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        row: dict[str, Any] = {"lower": 0.5 + b * width, "upper": 0.5 + (b + 1) * width}
        row["pairs"] = count
        if count:
            row["confidence"] = confidence[members].double().mean().item()
            row["accuracy"] = correct[members].mean().item()
            ece += count / len(probabilities) * abs(row["accuracy"] - row["confidence"])
        table.append(row)
    return ece, table


def safety_gate(
    pairs: Sequence[PreferencePair],
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    threshold: float = SAFETY_GATE,
) -> dict[str, Any] | None:
    """:func:`gate_precision_recall` over the replies of ``pairs`` that carry a safety label."""
    flagged: list[bool] = []
    unsafe: list[bool] = []
    for i, pair in enumerate(pairs):
        replies = ((pair.chosen_safe, chosen_rewards[i]), (pair.rejected_safe, rejected_rewards[i]))
        for label, reward in replies:
            if label is not None:
                flagged.append(bool(torch.sigmoid(reward.double()) < threshold))
                unsafe.append(not label)
    return gate_precision_recall(flagged, unsafe, threshold)


SPREAD_QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)


def score_spread(rewards: torch.Tensor) -> dict[str, float]:
    """How the scores σ(r) of every scored response spread over [0, 1]: quantiles and standard
    deviation. A reward model whose scores all sit near 0.5 cannot drive a policy, however
    accurate its pairwise ranking: the 0.15 gate never fires and best-of-K has nothing to pick."""
    probabilities = torch.sigmoid(rewards.double())
    quantiles = torch.quantile(probabilities, torch.tensor(SPREAD_QUANTILES, dtype=torch.float64))
    spread = {
        f"q{round(q * 100):02d}": value.item()
        for q, value in zip(SPREAD_QUANTILES, quantiles, strict=True)
    }
    spread["std"] = probabilities.std(unbiased=False).item()
    return spread


def metrics_from_rewards(
    pairs: Sequence[PreferencePair],
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    safety_threshold: float = SAFETY_GATE,
) -> dict[str, Any]:
    """The metrics of the module docstring, from each pair's two rewards (shape (n,) each)."""
    if not len(pairs) == len(chosen_rewards) == len(rejected_rewards):
        raise ValueError("pairs and rewards differ in number")
    if not pairs:
        raise ValueError("no pairs to evaluate")
    chosen = chosen_rewards.double()
    rejected = rejected_rewards.double()
    correct = pairwise_accuracy(chosen, rejected, reduction="none")
    margins = torch.tensor(pair_margins(pairs), dtype=torch.float64)
    ece, bins = calibration(preference_probability(chosen, rejected))
    return {
        "pairs": len(pairs),
        "accuracy": correct.mean().item(),
        "loss": margin_ranking_loss(chosen, rejected, margins).item(),
        "mean_reward_gap": (chosen - rejected).mean().item(),
        "by_strength": _accuracy_by(
            [p.strength or UNRATED for p in pairs], correct, list(TABLE8_BUCKETS)
        ),
        "by_batch": _accuracy_by([p.batch or "(none)" for p in pairs], correct),
        "by_kind": _accuracy_by([p.kind or "(unknown)" for p in pairs], correct),
        "ece": ece,
        "calibration": bins,
        "safety_gate": safety_gate(pairs, chosen, rejected, safety_threshold),
        "score_spread": score_spread(torch.cat([chosen, rejected])),
    }


def evaluate_reward_model(
    model,
    tokenizer,
    pairs: Sequence[PreferencePair],
    *,
    batch_size: int = 16,
    max_length: int = 512,
    safety_threshold: float = SAFETY_GATE,
    progress=None,
) -> dict[str, Any]:
    """Score every pair (:func:`rlhf.reward.scoring.score_pairs`) and compute the metrics.

    ``progress`` is called with the number of pairs scored after each batch.
    """
    from rlhf.reward.scoring import score_pairs

    chosen, rejected = score_pairs(
        model, tokenizer, pairs, batch_size=batch_size, max_length=max_length, progress=progress
    )
    return metrics_from_rewards(pairs, chosen, rejected, safety_threshold=safety_threshold)


# --- the table ----------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{100 * value:.1f}"


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """Accuracy (%) per rating bucket in Table 8's layout, one row per set, then the rest."""
    buckets = [b for b in TABLE8_BUCKETS if b in metrics["by_strength"]]
    header = ["Set", "Pairs", *(TABLE8_BUCKETS[b] for b in buckets), "Avg"]
    rows = [["all", str(metrics["pairs"])]]
    rows[0] += [_percent(metrics["by_strength"][b]["accuracy"]) for b in buckets]
    rows[0].append(_percent(metrics["accuracy"]))
    for group in ("by_kind", "by_batch"):
        if len(metrics[group]) > 1:
            for name, entry in metrics[group].items():
                rows.append([name, str(entry["pairs"])] + [""] * len(buckets))
                rows[-1].append(_percent(entry["accuracy"]))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    out = [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]
    out.append(f"loss {metrics['loss']:.4f}   ECE {metrics['ece']:.4f}")
    spread = metrics.get("score_spread")
    if spread:
        out.append(
            f"scores σ(r): min {spread['q00']:.3f}, 10 % {spread['q10']:.3f}, median "
            f"{spread['q50']:.3f}, 90 % {spread['q90']:.3f}, max {spread['q100']:.3f} "
            f"(std {spread['std']:.3f})"
        )
    gate = metrics.get("safety_gate")
    if gate:
        out.append(
            f"unsafe at σ(r) < {gate['threshold']}: precision {_percent(gate['precision'])} %, "
            f"recall {_percent(gate['recall'])} % ({gate['unsafe']} of "
            f"{gate['labelled_responses']} labelled replies unsafe)"
        )
    return "\n".join(out)


__all__ = [
    "calibration",
    "evaluate_reward_model",
    "format_metrics_table",
    "metrics_from_rewards",
    "safety_gate",
    "score_spread",
]
