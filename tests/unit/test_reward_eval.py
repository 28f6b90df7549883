"""rlhf.reward.evaluation: accuracy by bucket, calibration and the safety gate, computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.data.pairs import PreferencePair
from rlhf.reward.evaluation import calibration, format_metrics_table, metrics_from_rewards


def pair(
    strength=None, batch=None, kind="safety", chosen_safe=None, rejected_safe=None, margin=0.0
):
    return PreferencePair(
        context=[{"role": "user", "content": f"q{strength}{batch}"}],
        chosen="a",
        rejected="b",
        strength=strength,
        batch=batch,
        kind=kind,
        chosen_safe=chosen_safe,
        rejected_safe=rejected_safe,
    )


def test_accuracy_by_rating_bucket_batch_and_kind():
    pairs = [
        pair("significantly_better", "b1"),  # right
        pair("significantly_better", "b1"),  # right
        pair("better", "b2"),  # wrong
        pair("slightly_better", "b2", kind="helpfulness"),  # tie: ½
        pair(None, "b2", kind="helpfulness"),  # right
    ]
    chosen = torch.tensor([2.0, 1.0, 0.0, 0.5, 3.0])
    rejected = torch.tensor([0.0, 0.0, 1.0, 0.5, 1.0])
    metrics = metrics_from_rewards(pairs, chosen, rejected)
    assert metrics["pairs"] == 5
    assert metrics["accuracy"] == pytest.approx(3.5 / 5)
    assert list(metrics["by_strength"]) == [
        "significantly_better",
        "better",
        "slightly_better",
        "unrated",
    ]  # Table 8's order, only the buckets present
    assert metrics["by_strength"]["significantly_better"] == {"pairs": 2, "accuracy": 1.0}
    assert metrics["by_strength"]["better"]["accuracy"] == 0.0
    assert metrics["by_strength"]["slightly_better"]["accuracy"] == 0.5
    assert metrics["by_batch"]["b2"] == {"pairs": 3, "accuracy": pytest.approx(1.5 / 3)}
    assert metrics["by_kind"]["helpfulness"]["accuracy"] == pytest.approx(0.75)
    gaps = [2.0, 1.0, -1.0, 0.0, 2.0]
    loss = sum(math.log(1 + math.exp(-gap)) for gap in gaps) / 5
    assert metrics["loss"] == pytest.approx(loss)


def test_expected_calibration_error_by_hand():
    # Preference probabilities 0.9, 0.9, 0.3, 0.6: confidences 0.9, 0.9, 0.7, 0.6;
    # correct 1, 1, 0, 1. Bins of width 0.05 from 0.5: [0.6, 0.65) holds 0.6 (acc 1),
    # [0.7, 0.75) holds 0.7 (acc 0), [0.9, 0.95) holds both 0.9 (acc 1).
    probabilities = torch.tensor([0.9, 0.9, 0.3, 0.6], dtype=torch.float64)
    ece, bins = calibration(probabilities)
    expected = (1 / 4) * abs(1 - 0.6) + (1 / 4) * abs(0 - 0.7) + (2 / 4) * abs(1 - 0.9)
    assert ece == pytest.approx(expected)
    filled = {round(b["lower"], 2): b for b in bins if b["pairs"]}
    assert sorted(filled) == [0.6, 0.7, 0.9]
    assert filled[0.9]["pairs"] == 2 and filled[0.7]["accuracy"] == 0.0
    assert len(bins) == 10
    assert calibration(torch.tensor([1.0], dtype=torch.float64))[1][-1]["pairs"] == 1


def test_safety_gate_precision_and_recall_at_the_threshold():
    logit = math.log(0.15 / 0.85)  # σ(logit) = 0.15 exactly
    pairs = [
        pair(chosen_safe=True, rejected_safe=False),
        pair(chosen_safe=True, rejected_safe=False),
        pair(chosen_safe=False, rejected_safe=False),
        pair(),  # unlabelled: not counted
    ]
    chosen = torch.tensor([2.0, logit - 0.1, 0.0, -9.0])  # 2nd: safe reply flagged (FP)
    rejected = torch.tensor([-3.0, 1.0, logit - 1.0, -9.0])  # 2nd unsafe missed (FN)
    gate = metrics_from_rewards(pairs, chosen, rejected)["safety_gate"]
    # Labelled replies 6; unsafe 4 (rejected ×3, chosen of pair 3); flagged: r1, c2, r3 → 3.
    # True positives: r1, r3 → precision 2/3, recall 2/4.
    assert gate["labelled_responses"] == 6
    assert gate["unsafe"] == 4
    assert gate["predicted_unsafe"] == 3
    assert gate["precision"] == pytest.approx(2 / 3)
    assert gate["recall"] == pytest.approx(2 / 4)
    assert metrics_from_rewards([pair()], torch.ones(1), torch.zeros(1))["safety_gate"] is None


def test_the_table_has_table_8s_columns_and_the_gate():
    pairs = [pair("better", "b1", chosen_safe=True, rejected_safe=False), pair(None, "b2")]
    metrics = metrics_from_rewards(pairs, torch.tensor([1.0, 0.0]), torch.tensor([-5.0, 1.0]))
    table = format_metrics_table(metrics)
    header = table.splitlines()[0]
    assert "Better" in header and "Unrated" in header and header.endswith("Avg")
    assert "all" in table and "b1" in table and "b2" in table
    assert "50.0" in table  # overall accuracy
    assert "precision" in table and "recall" in table


def test_mismatched_or_empty_input_is_refused():
    with pytest.raises(ValueError, match="differ in number"):
        metrics_from_rewards([pair()], torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="no pairs"):
        metrics_from_rewards([], torch.ones(0), torch.ones(0))


def test_the_spread_of_the_scores_is_reported_by_hand():
    from rlhf.reward.evaluation import score_spread

    # σ(0) = 0.5, σ(ln 3) = 0.75, σ(−ln 3) = 0.25, σ(ln 9) = 0.9, σ(−ln 9) = 0.1
    rewards = torch.tensor([0.0, math.log(3), -math.log(3), math.log(9), -math.log(9)])
    spread = score_spread(rewards)
    assert spread["q00"] == pytest.approx(0.1) and spread["q100"] == pytest.approx(0.9)
    assert spread["q50"] == pytest.approx(0.5)
    assert spread["q10"] == pytest.approx(0.1 + 0.4 * (0.25 - 0.1))  # linear interpolation
    mean = 0.5
    values = [0.5, 0.75, 0.25, 0.9, 0.1]
    assert spread["std"] == pytest.approx((sum((v - mean) ** 2 for v in values) / 5) ** 0.5)
