"""rlhf.reward.losses: the margin ranking loss against hand computations, its gradients and
stability."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.preferences import MARGIN_TABLES, Strength, margin_for_rating
from rlhf.reward.losses import margin_ranking_loss, pairwise_accuracy, preference_probability

STRENGTHS = [s.value for s in Strength]  # significantly, better, slightly, negligibly


def hand_loss(chosen: float, rejected: float, margin: float) -> float:
    """-log σ(r_c − r_r − m) = log(1 + exp(−(r_c − r_r − m))), written out."""
    return math.log(1.0 + math.exp(-(chosen - rejected - margin)))


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_the_formula_written_out_for_one_pair():
    # r_c = 0.8, r_r = 0.3: the gap is 0.5.
    assert hand_loss(0.8, 0.3, 0.0) == pytest.approx(0.47407698418010663)  # log(1 + e^-0.5)
    assert hand_loss(0.8, 0.3, 1.0) == pytest.approx(0.97407698418010663)  # log(1 + e^0.5)
    assert hand_loss(0.8, 0.3, 3.0) == pytest.approx(2.5788897342925496)  # log(1 + e^2.5)
    loss = margin_ranking_loss(tensor([0.8]), tensor([0.3]), tensor([1.0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(0.5)), rel=1e-12)


@pytest.mark.parametrize("table", sorted(MARGIN_TABLES))
def test_loss_matches_a_hand_computation_for_every_margin_table(table):
    chosen = [0.8, -1.2, 2.5, 0.1]
    rejected = [0.3, -0.4, 2.5, 1.7]
    margins = [margin_for_rating(strength, table) for strength in STRENGTHS]
    assert margins == [MARGIN_TABLES[table][Strength(s)] for s in STRENGTHS]
    expected = [hand_loss(c, r, m) for c, r, m in zip(chosen, rejected, margins, strict=True)]

    per_pair = margin_ranking_loss(tensor(chosen), tensor(rejected), tensor(margins), "none")
    assert per_pair.tolist() == pytest.approx(expected, rel=1e-12)
    mean = margin_ranking_loss(tensor(chosen), tensor(rejected), tensor(margins))
    assert mean.item() == pytest.approx(sum(expected) / 4, rel=1e-12)
    total = margin_ranking_loss(tensor(chosen), tensor(rejected), tensor(margins), "sum")
    assert total.item() == pytest.approx(sum(expected), rel=1e-12)


def test_larger_margins_give_larger_losses_for_the_same_rewards():
    chosen, rejected = tensor([1.0] * 4), tensor([0.0] * 4)
    for table in ("small", "large"):
        margins = tensor([margin_for_rating(s, table) for s in STRENGTHS])
        losses = margin_ranking_loss(chosen, rejected, margins, "none").tolist()
        assert losses == sorted(losses, reverse=True)  # significantly better costs most
    none = margin_ranking_loss(chosen, rejected, None, "none")
    assert torch.equal(none, margin_ranking_loss(chosen, rejected, 0.0, "none"))
    assert none[0].item() == pytest.approx(math.log(1 + math.exp(-1.0)))


def test_a_scalar_margin_is_broadcast():
    chosen, rejected = tensor([0.5, 1.5]), tensor([0.0, 0.0])
    scalar = margin_ranking_loss(chosen, rejected, 2.0 / 3.0, "none")
    full = margin_ranking_loss(chosen, rejected, tensor([2.0 / 3.0] * 2), "none")
    assert torch.equal(scalar, full)


def test_gradients_push_chosen_up_and_rejected_down():
    chosen = tensor([0.8, -1.2, 2.5]).requires_grad_()
    rejected = tensor([0.3, -0.4, 2.5]).requires_grad_()
    margins = tensor([1.0, 2.0 / 3.0, 0.0]).requires_grad_()
    margin_ranking_loss(chosen, rejected, margins).backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all() and (margins.grad > 0).all()
    # ∂L/∂r_c = −σ(−x) / B with x = r_c − r_r − m (mean over B = 3 pairs).
    x = [0.8 - 0.3 - 1.0, -1.2 + 0.4 - 2 / 3, 2.5 - 2.5 - 0.0]
    expected = [-1.0 / (1.0 + math.exp(value)) / 3 for value in x]
    assert chosen.grad.tolist() == pytest.approx(expected, rel=1e-12)
    assert rejected.grad.tolist() == pytest.approx([-g for g in expected], rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("gap", [100.0, -100.0, 1e4, -1e4])
def test_large_differences_stay_finite(dtype, gap):
    chosen = torch.tensor([gap], dtype=dtype, requires_grad=True)
    rejected = torch.zeros(1, dtype=dtype, requires_grad=True)
    loss = margin_ranking_loss(chosen, rejected, torch.tensor([1.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(chosen.grad).all()
    assert loss.dtype == torch.promote_types(dtype, torch.float32)  # bf16 is upcast
    if gap > 0:
        assert loss.item() == pytest.approx(0.0, abs=1e-30)
        assert chosen.grad.item() == pytest.approx(0.0, abs=1e-30)
    else:
        x = chosen.item() - 1.0  # the gap as the dtype holds it (bf16 rounds -1e4 to -9984)
        assert loss.item() == pytest.approx(-x, rel=1e-6)  # −log σ(x) ≈ −x for x ≪ 0
        assert chosen.grad.item() == pytest.approx(-1.0)
    probability = preference_probability(chosen.detach(), rejected.detach())
    assert torch.isfinite(probability).all()


def test_preference_probability_is_the_sigmoid_of_the_gap():
    chosen, rejected = tensor([0.8, 0.0, -3.0]), tensor([0.3, 0.0, 1.0])
    probability = preference_probability(chosen, rejected)
    assert probability.tolist() == pytest.approx(
        [1 / (1 + math.exp(-0.5)), 0.5, 1 / (1 + math.exp(4.0))], rel=1e-12
    )
    loss = margin_ranking_loss(chosen, rejected, reduction="none")
    assert torch.allclose(loss, -torch.log(probability))


def test_pairwise_accuracy_counts_ties_as_half():
    chosen, rejected = tensor([1.0, 0.0, 2.0, 5.0]), tensor([0.0, 1.0, 2.0, -5.0])
    assert pairwise_accuracy(chosen, rejected).item() == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert pairwise_accuracy(chosen, rejected, "none").tolist() == [1.0, 0.0, 0.5, 1.0]
    assert pairwise_accuracy(chosen, rejected, "sum").item() == 2.5
    assert pairwise_accuracy(torch.zeros(8), torch.zeros(8)).item() == 0.5  # a constant model


def test_bad_shapes_and_reductions_are_rejected():
    with pytest.raises(ValueError, match="differ in shape"):
        margin_ranking_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        margin_ranking_loss(torch.zeros(3), torch.zeros(3), reduction="max")
    with pytest.raises(ValueError, match="differ in shape"):
        pairwise_accuracy(torch.zeros(3, 1), torch.zeros(3))
