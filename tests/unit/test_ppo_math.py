"""rlhf.ppo's math against hand computations: the reward (logit, whitening, KL estimators,
per-token rewards with the truncation penalty), GAE, GRPO and RLOO advantages, and the clipped
policy and value losses. Every expected number is worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.ppo.advantages import gae, grpo_advantages, rloo_advantages
from rlhf.ppo.losses import clipped_policy_loss, clipped_value_loss, entropy_from_logits
from rlhf.ppo.rewards import (
    kl_per_token,
    last_token_index,
    logit,
    masked_mean,
    missing_eos,
    normalized_scores,
    sequence_rewards,
    whiten,
)
from rlhf.reward.gate import sigmoid

LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def mask_of(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# --- logit and whitening --------------------------------------------------------------------


def test_logit_by_hand_and_clamped_at_0_and_1():
    # logit(p) = ln(p / (1 − p)): 0.5 → ln 1 = 0; 0.75 → ln 3; 0.2 → ln(0.25) = −ln 4.
    assert logit(tensor([0.5, 0.75, 0.2])).tolist() == pytest.approx([0.0, LN3, -LN4], abs=1e-12)
    # 0 and 1 clamp to 1e-6 and 1 − 1e-6: ln(1e-6 / (1 − 1e-6)) = −13.815510557964274 + 1.0e-6.
    edge = logit(tensor([0.0, 1.0]))
    assert edge.tolist() == pytest.approx([-13.8155095579638, 13.8155095579638], abs=1e-9)
    assert logit(tensor([0.0]), eps=1e-3).item() == pytest.approx(math.log(1e-3 / 0.999))
    # The inverse of the gate's sigmoid.
    for p in (0.01, 0.3, 0.9):
        assert sigmoid(logit(tensor([p])).item()) == pytest.approx(p, rel=1e-12)


def test_whiten_by_hand_without_a_mask():
    # x = [1, 2, 3, 6]: μ = 3, deviations −2, −1, 0, 3, σ² = (4 + 1 + 0 + 9) / 4 = 3.5 (divide
    # by n, not n − 1), σ = 1.8708286933869707.
    out = whiten(tensor([1.0, 2.0, 3.0, 6.0]))
    sd = math.sqrt(3.5 + 1e-8)
    assert out.tolist() == pytest.approx([-2 / sd, -1 / sd, 0.0, 3 / sd], rel=1e-12)
    assert out.tolist() == pytest.approx([-1.0690449, -0.5345225, 0.0, 1.6035675], abs=1e-7)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert out.std(correction=0).item() == pytest.approx(1.0, abs=1e-8)
    # shift_mean=False keeps the mean (3) and still scales to σ = 1.
    kept = whiten(tensor([1.0, 2.0, 3.0, 6.0]), shift_mean=False)
    assert kept.tolist() == pytest.approx([3 - 2 / sd, 3 - 1 / sd, 3.0, 3 + 3 / sd], rel=1e-12)
    # A constant: σ² = 0, the 1e-8 inside the root gives zeros, not NaN.
    assert whiten(tensor([4.0, 4.0, 4.0])).tolist() == [0.0, 0.0, 0.0]


def test_whiten_ignores_masked_entries():
    # The kept entries are the same 1, 2, 3, 6 as above; the masked ones are wild.
    x = tensor([[1.0, 2.0, 100.0], [3.0, 6.0, -50.0]])
    mask = mask_of([[1, 1, 0], [1, 1, 0]])
    out = whiten(x, mask=mask)
    sd = math.sqrt(3.5 + 1e-8)
    expected = [[-2 / sd, -1 / sd, 0.0], [0.0, 3 / sd, 0.0]]
    assert out.tolist() == [pytest.approx(row, rel=1e-12) for row in expected]
    kept = out[mask]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert kept.std(correction=0).item() == pytest.approx(1.0, abs=1e-8)
    # Changing the masked entries (to inf and NaN) changes nothing.
    x[0, 2], x[1, 2] = math.inf, math.nan
    assert torch.equal(whiten(x, mask=mask), out)
    # masked_mean: (1 + 2 + 3 + 6) / 4 = 3.
    assert masked_mean(x, mask).item() == 3.0


# --- KL estimators --------------------------------------------------------------------------


def test_k1_and_k3_on_two_tokens_by_hand():
    # π(y) = 0.5, 0.2 and π_0(y) = 0.25, 0.4 at the two sampled tokens.
    logprobs = tensor([[math.log(0.5), math.log(0.2)]])
    ref = tensor([[math.log(0.25), math.log(0.4)]])
    # k1 = log π − log π_0: ln 2 = 0.693147, then ln(0.2 / 0.4) = −ln 2: negative.
    k1 = kl_per_token(logprobs, ref, "k1")
    assert k1.tolist() == [pytest.approx([LN2, -LN2], abs=1e-12)]
    assert k1[0, 1].item() < 0
    # k3 = (r − 1) − ln r, r = π_0 / π: r = 0.5 → −0.5 + ln 2 = 0.193147;
    # r = 2 → 1 − ln 2 = 0.306853. Both positive.
    k3 = kl_per_token(logprobs, ref, "k3")
    assert k3.tolist() == [pytest.approx([0.1931471805599453, 0.3068528194400547], abs=1e-12)]
    assert (k3 > 0).all()
    # Equal log-probabilities: both exactly 0.
    same = tensor([[math.log(0.3), -7.25]])
    assert kl_per_token(same, same.clone(), "k1").tolist() == [[0.0, 0.0]]
    assert kl_per_token(same, same.clone(), "k3").tolist() == [[0.0, 0.0]]
    assert kl_per_token(logprobs, ref).tolist() == k1.tolist()  # k1 is the default
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_per_token(logprobs, ref, "k2")


def test_k3_is_never_negative_where_k1_is():
    generator = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(8, 16, generator=generator, dtype=torch.float64) * 5
    ref = -torch.rand(8, 16, generator=generator, dtype=torch.float64) * 5
    k1, k3 = kl_per_token(logprobs, ref, "k1"), kl_per_token(logprobs, ref, "k3")
    assert (k1 < 0).any()  # k1 goes negative wherever π_0 > π
    assert (k3 >= 0).all()
    assert (k3[k1 < 0] > 0).all()


def test_both_estimators_average_to_the_exact_kl_under_the_policy():
    # Unbiased: Σ_y π(y)·k(y) = KL(π ‖ π_0) exactly, weighting every token by its probability.
    pi = tensor([0.5, 0.3, 0.2])
    pi0 = tensor([0.2, 0.2, 0.6])
    exact = sum(p * math.log(p / q) for p, q in zip(pi.tolist(), pi0.tolist(), strict=True))
    # 0.5·ln 2.5 + 0.3·ln 1.5 + 0.2·ln(1/3) = 0.458145 + 0.121640 − 0.219722 = 0.360063
    assert exact == pytest.approx(0.3600629, abs=1e-6)
    for estimator in ("k1", "k3"):
        per_token = kl_per_token(pi.log()[None], pi0.log()[None], estimator)[0]
        assert (pi * per_token).sum().item() == pytest.approx(exact, rel=1e-12)


# --- per-token rewards and the truncation penalty -------------------------------------------


def test_normalized_scores_are_the_whitened_logits():
    # R_c = 0.5, 0.75, 0.2, 0.8 → logits 0, ln 3, −ln 4, ln 4; μ = ln 3 / 4 = 0.274653.
    scores = normalized_scores(tensor([0.5, 0.75, 0.2, 0.8]))
    logits = [0.0, LN3, -LN4, LN4]
    mean = sum(logits) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in logits) / 4 + 1e-8)
    assert mean == pytest.approx(0.2746530721670274)
    assert scores.tolist() == pytest.approx([(v - mean) / sd for v in logits], rel=1e-12)


def test_missing_eos_counts_only_response_tokens():
    eos = 2
    ids = torch.tensor([[5, 7, 2, 0], [5, 6, 7, 8], [9, 2, 0, 0], [5, 6, 2, 2]])
    mask = mask_of([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]])
    # Row 1 ran to the limit; row 3's EOS ids are padding (pad = EOS), so it has none either.
    assert missing_eos(ids, mask, eos).tolist() == [False, True, False, True]
    # Several end ids: 8 ends row 1 too.
    assert missing_eos(ids, mask, [2, 8]).tolist() == [False, False, False, True]


def test_sequence_rewards_by_hand_with_the_truncation_penalty():
    beta, penalty = 0.1, 1.0
    mask = mask_of([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0]])
    kl = tensor(
        [
            [0.5, -0.2, 1.0, math.inf],  # padding's KL is never read
            [0.1, 0.2, 0.3, 0.4],
            [1.0, 2.0, 50.0, math.nan],
            [9.0, 0.0, 0.0, 9.0],  # left and right padding: the response is t = 1, 2
        ]
    )
    scores = tensor([0.3, 1.2, -0.4, 0.0])
    truncated = torch.tensor([False, True, False, True])
    rewards = sequence_rewards(scores, kl, mask, beta, truncated, penalty)
    expected = [
        # −0.1·0.5, −0.1·(−0.2), −0.1·1.0 + 0.3 (last token), padding 0
        [-0.05, 0.02, 0.2, 0.0],
        # −0.01, −0.02, −0.03, then −0.04 + 1.2 − 1.0 (truncated: the penalty) = 0.16
        [-0.01, -0.02, -0.03, 0.16],
        # −0.1, then −0.2 − 0.4 = −0.6 at its last token, padding 0
        [-0.1, -0.6, 0.0, 0.0],
        # padding, 0, then 0 + 0.0 − 1.0 = −1.0 at t = 2, padding
        [0.0, 0.0, -1.0, 0.0],
    ]
    assert rewards.tolist() == [pytest.approx(row, abs=1e-12) for row in expected]
    assert last_token_index(mask).tolist() == [2, 3, 1, 2]
    # Without the truncation flags only rows 1 and 3 change, by +1.0 at their last token.
    plain = sequence_rewards(scores, kl, mask, beta)
    difference = (plain - rewards).tolist()
    assert difference == [
        pytest.approx(row, abs=1e-12)
        for row in ([0, 0, 0, 0], [0, 0, 0, 1.0], [0, 0, 0, 0], [0, 0, 1.0, 0])
    ]


def test_sequence_rewards_refuses_an_empty_row_and_wrong_shapes():
    kl = tensor([[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ValueError, match="no response token"):
        sequence_rewards(tensor([1.0, 2.0]), kl, mask_of([[1, 1], [0, 0]]), 0.1)
    with pytest.raises(ValueError, match="expected scores"):
        sequence_rewards(tensor([1.0, 2.0, 3.0]), kl, mask_of([[1, 1], [1, 1]]), 0.1)


# --- GAE ------------------------------------------------------------------------------------

# γ = 1, λ = 0.95, one response of 4 tokens, working back from the last (V = 0 after it):
#   t   r_t   V_t   δ_t = r_t + V_{t+1} − V_t   A_t = δ_t + 0.95·A_{t+1}         R_t = A_t + V_t
#   3   1.0   0.3   1.0 + 0   − 0.3 =  0.7      0.7                              1.0
#   2   0.2   0.6   0.2 + 0.3 − 0.6 = −0.1     −0.1 + 0.95·0.7     = 0.565       1.165
#   1   0.0   0.4   0.0 + 0.6 − 0.4 =  0.2      0.2 + 0.95·0.565   = 0.73675     1.13675
#   0  −0.1   0.5  −0.1 + 0.4 − 0.5 = −0.2     −0.2 + 0.95·0.73675 = 0.4999125   0.9999125
REWARDS = [-0.1, 0.0, 0.2, 1.0]
VALUES = [0.5, 0.4, 0.6, 0.3]
ADVANTAGES = [0.4999125, 0.73675, 0.565, 0.7]
RETURNS = [0.9999125, 1.13675, 1.165, 1.0]


def test_gae_against_the_hand_worked_table():
    advantages, returns = gae(tensor([REWARDS]), tensor([VALUES]), mask_of([[1] * 4]), 1.0, 0.95)
    assert advantages.tolist() == [pytest.approx(ADVANTAGES, abs=1e-12)]
    assert returns.tolist() == [pytest.approx(RETURNS, abs=1e-12)]


def test_gae_limits_lambda_1_and_0_and_a_discount():
    rewards, values, mask = tensor([REWARDS]), tensor([VALUES]), mask_of([[1] * 4])
    # λ = 1: Monte Carlo, R_t = the reward to go: 1.1, 1.2, 1.2, 1.0.
    _, returns = gae(rewards, values, mask, 1.0, 1.0)
    assert returns.tolist() == [pytest.approx([1.1, 1.2, 1.2, 1.0], abs=1e-12)]
    # λ = 0: one-step TD, A_t = δ_t = −0.2, 0.2, −0.1, 0.7 (the table's δ column).
    advantages, _ = gae(rewards, values, mask, 1.0, 0.0)
    assert advantages.tolist() == [pytest.approx([-0.2, 0.2, -0.1, 0.7], abs=1e-12)]
    # γ = λ = 0.5 on r = [0, 1], V = [0.2, 0.4]: δ_1 = 1 − 0.4 = 0.6 = A_1;
    # δ_0 = 0 + 0.5·0.4 − 0.2 = 0; A_0 = 0 + 0.25·0.6 = 0.15.
    advantages, _ = gae(tensor([[0.0, 1.0]]), tensor([[0.2, 0.4]]), mask_of([[1, 1]]), 0.5, 0.5)
    assert advantages.tolist() == [pytest.approx([0.15, 0.6], abs=1e-12)]


def test_gae_with_a_shorter_row_bootstraps_0_after_its_last_token():
    # Row 1 is 2 tokens long; its padding holds rewards 7 and values 9 that must not be read.
    #   t = 1: δ = 1.0 + 0 − 0.4 = 0.6, A = 0.6, R = 1.0
    #   t = 0: δ = 0.5 + 0.4 − 0.2 = 0.7, A = 0.7 + 0.95·0.6 = 1.27, R = 1.47
    # Row 2 is row 1 left-padded: the same numbers at t = 2, 3.
    rewards = tensor([REWARDS, [0.5, 1.0, 7.0, 7.0], [7.0, 7.0, 0.5, 1.0]])
    values = tensor([VALUES, [0.2, 0.4, 9.0, 9.0], [9.0, 9.0, 0.2, 0.4]])
    mask = mask_of([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]])
    advantages, returns = gae(rewards, values, mask, 1.0, 0.95)
    assert advantages.tolist() == [
        pytest.approx(ADVANTAGES, abs=1e-12),
        pytest.approx([1.27, 0.6, 0.0, 0.0], abs=1e-12),
        pytest.approx([0.0, 0.0, 1.27, 0.6], abs=1e-12),
    ]
    assert returns.tolist() == [
        pytest.approx(RETURNS, abs=1e-12),
        pytest.approx([1.47, 1.0, 0.0, 0.0], abs=1e-12),
        pytest.approx([0.0, 0.0, 1.47, 1.0], abs=1e-12),
    ]


# --- GRPO and RLOO --------------------------------------------------------------------------

# Two prompts and a third of ties, K = 4 responses each.
GROUP_SCORES = [1.0, 2.0, 3.0, 6.0, 4.0, 0.0, 2.0, 2.0, 5.0, 5.0, 5.0, 5.0]


def test_grpo_advantages_by_hand():
    advantages = grpo_advantages(tensor(GROUP_SCORES), 4)
    # Group 1: μ = 3, deviations −2, −1, 0, 3, Σd² = 14, sample std = sqrt(14/3) = 2.160247.
    # Group 2: μ = 2, deviations 2, −2, 0, 0, Σd² = 8, sample std = sqrt(8/3) = 1.632993.
    # Group 3: all 5: deviations 0, std 0 → 0 / (0 + 1e-4) = 0.
    s1, s2 = math.sqrt(14 / 3) + 1e-4, math.sqrt(8 / 3) + 1e-4
    expected = [-2 / s1, -1 / s1, 0.0, 3 / s1, 2 / s2, -2 / s2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert advantages.tolist() == pytest.approx(expected, rel=1e-12)
    # −2 / 2.160347 = −0.925777, −1 / 2.160347 = −0.462889, 3 / 2.160347 = 1.388666
    assert advantages[:4].tolist() == pytest.approx([-0.925777, -0.462889, 0.0, 1.388666], 1e-6)
    # (The population std, sqrt(3.5) = 1.870829, would give −1.069 for the first: not used.)
    # scale=False: the deviations alone.
    centred = grpo_advantages(tensor(GROUP_SCORES), 4, scale=False)
    assert centred.tolist() == [-2.0, -1.0, 0.0, 3.0, 2.0, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_rloo_advantages_by_hand():
    advantages = rloo_advantages(tensor(GROUP_SCORES), 4)
    # Group 1, Σ = 12: 1 − 11/3, 2 − 10/3, 3 − 9/3, 6 − 6/3 = −8/3, −4/3, 0, 4.
    # Group 2, Σ = 8: 4 − 4/3, 0 − 8/3, 2 − 6/3, 2 − 6/3 = 8/3, −8/3, 0, 0.
    # Group 3: 5 − 5 = 0 each.
    expected = [-8 / 3, -4 / 3, 0.0, 4.0, 8 / 3, -8 / 3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert advantages.tolist() == pytest.approx(expected, abs=1e-12)
    assert advantages.view(3, 4).sum(dim=1).tolist() == pytest.approx([0.0] * 3, abs=1e-12)
    # = K/(K − 1)·(r − μ): 4/3 of the deviations.
    deviations = grpo_advantages(tensor(GROUP_SCORES), 4, scale=False)
    assert advantages.tolist() == pytest.approx((deviations * 4 / 3).tolist(), abs=1e-12)


def test_group_advantages_refuse_bad_groups():
    for function in (grpo_advantages, rloo_advantages):
        with pytest.raises(ValueError, match="at least 2"):
            function(tensor([1.0, 2.0]), 1)
        with pytest.raises(ValueError, match="expected scores"):
            function(tensor([1.0, 2.0, 3.0]), 2)


# --- the clipped policy loss ----------------------------------------------------------------


def test_clipped_policy_loss_by_hand():
    # ε = 0.2, old log-probs 0, so ρ = exp(log-prob). Per token, max(−A·ρ, −A·clip(ρ, 0.8, 1.2)):
    #   ρ = 1.5, A = +2:  max(−3.0, −2.4) = −2.4   clipped (ρ past 1 + ε with A > 0)
    #   ρ = 1.5, A = −1:  max( 1.5,  1.2) =  1.5   not clipped (the pessimistic bound)
    #   ρ = 0.5, A = +1:  max(−0.5, −0.8) = −0.5   not clipped
    #   ρ = 0.5, A = −2:  max( 1.0,  1.6) =  1.6   clipped (ρ past 1 − ε with A < 0)
    #   ρ = 1.1, A = +1:  max(−1.1, −1.1) = −1.1   inside the band
    #   padding (ρ = e^50, A = 100): not counted
    # mean over 5 tokens: (−2.4 + 1.5 − 0.5 + 1.6 − 1.1) / 5 = −0.9 / 5 = −0.18; clipped 2 / 5.
    ratios = [1.5, 1.5, 0.5, 0.5, 1.1]
    logprobs = tensor([[math.log(r) for r in ratios] + [50.0]]).requires_grad_()
    advantages = tensor([[2.0, -1.0, 1.0, -2.0, 1.0, 100.0]])
    mask = mask_of([[1, 1, 1, 1, 1, 0]])
    loss, clip_fraction = clipped_policy_loss(
        logprobs, torch.zeros_like(logprobs), advantages, mask
    )
    assert loss.item() == pytest.approx(-0.18, abs=1e-12)
    assert clip_fraction.item() == pytest.approx(0.4, abs=1e-12)
    # ∂L/∂log π = −A·ρ / 5 where not clipped, 0 where clipped or masked:
    # 0, 1.5/5 = 0.3, −0.5/5 = −0.1, 0, −1.1/5 = −0.22, 0.
    loss.backward()
    assert logprobs.grad.tolist() == [pytest.approx([0, 0.3, -0.1, 0, -0.22, 0], abs=1e-12)]


@pytest.mark.parametrize("side", ["upper", "lower"])
def test_clipped_policy_loss_exactly_at_and_past_the_boundary(side):
    # ρ exactly at 1 ± ε: ε is derived from the ratio the loss itself computes, exp(log π − 0),
    # so that 1 + ε (or 1 − ε) equals ρ to the last bit (ρ − 1 and 1 − ρ are exact in floating
    # point for ρ in [0.5, 2]).
    at = math.log(1.2) if side == "upper" else math.log(0.8)
    rho = torch.exp(tensor([[at]]) - 0.0).item()
    clip = rho - 1.0 if side == "upper" else 1.0 - rho
    assert (1.0 + clip if side == "upper" else 1.0 - clip) == rho
    assert clip == pytest.approx(0.2, abs=1e-12)
    past = math.log(1.3) if side == "upper" else math.log(0.7)
    binding = 1.0 if side == "upper" else -1.0  # the sign of A for which the clip binds there
    mask = mask_of([[1]])

    def loss_of(log_ratio: float, advantage: float):
        logprobs = tensor([[log_ratio]]).requires_grad_()
        loss, fraction = clipped_policy_loss(
            logprobs, tensor([[0.0]]), tensor([[advantage]]), mask, clip
        )
        loss.backward()
        return loss.item(), fraction.item(), logprobs.grad.item()

    for advantage in (binding, -binding):
        # At the boundary both terms are −A·ρ: nothing is clipped, for either sign of A.
        loss, fraction, _ = loss_of(at, advantage)
        assert loss == pytest.approx(-advantage * rho, abs=1e-12)
        assert fraction == 0.0
    # Past it (ρ = 1.3 or 0.7), where the clip binds: the loss is −A·(1 ± ε), ±1.2 or ∓0.8...
    loss, fraction, grad = loss_of(past, binding)
    assert loss == pytest.approx(-binding * (1.0 + clip if side == "upper" else 1.0 - clip))
    assert loss == pytest.approx(-1.2 if side == "upper" else 0.8, abs=1e-12)
    assert fraction == 1.0
    assert grad == 0.0  # no gradient through a clipped token
    # ...and for the other sign of A the unclipped term is larger: −A·ρ = ±1.3 or ∓0.7.
    loss, fraction, grad = loss_of(past, -binding)
    assert loss == pytest.approx(1.3 if side == "upper" else -0.7, abs=1e-12)
    assert fraction == 0.0
    assert grad == pytest.approx(1.3 if side == "upper" else -0.7, abs=1e-12)  # −A·ρ


def test_clipped_policy_loss_broadcasts_one_advantage_per_response():
    # GRPO/RLOO: A (B, 1). ρ = 1 everywhere, so L = mean over tokens of −A:
    # row 0 has 2 tokens with A = 1, row 1 one token with A = −4: (−1 − 1 + 4) / 3 = 2/3.
    logprobs = tensor([[-1.0, -2.0], [-0.5, 3.0]])
    mask = mask_of([[1, 1], [1, 0]])
    loss, fraction = clipped_policy_loss(logprobs, logprobs.clone(), tensor([[1.0], [-4.0]]), mask)
    assert loss.item() == pytest.approx(2 / 3, abs=1e-12)
    assert fraction.item() == 0.0


# --- the clipped value loss -----------------------------------------------------------------


def test_clipped_value_loss_by_hand():
    # ε = 0.2, V_clip = V_old + clip(V − V_old, −0.2, 0.2), per token max((V − R)², (V_clip − R)²):
    #   V = 1.0, V_old = 0.5, R = 1.0: (0)² = 0,      V_clip = 0.7: (−0.3)² = 0.09 → 0.09  clipped
    #   V = 0.6, V_old = 0.5, R = 2.0: (−1.4)² = 1.96, V_clip = 0.6:            1.96 → 1.96
    #   V = 0.0, V_old = 0.5, R = 0.0: 0,             V_clip = 0.3: 0.09         → 0.09  clipped
    #   V = 2.0, V_old = 0.5, R = 0.0: 4.0,           V_clip = 0.7: 0.49         → 4.0
    #   padding: not counted
    # L = ½·(0.09 + 1.96 + 0.09 + 4.0) / 4 = ½·1.535 = 0.7675; clipped 2 / 4.
    values = tensor([[1.0, 0.6, 0.0, 2.0, 50.0]]).requires_grad_()
    old_values = tensor([[0.5, 0.5, 0.5, 0.5, -50.0]])
    returns = tensor([[1.0, 2.0, 0.0, 0.0, 0.0]])
    mask = mask_of([[1, 1, 1, 1, 0]])
    loss, clip_fraction = clipped_value_loss(values, old_values, returns, mask)
    assert loss.item() == pytest.approx(0.7675, abs=1e-12)
    assert clip_fraction.item() == pytest.approx(0.5, abs=1e-12)
    # ∂L/∂V = ½·2·(V − R)/4 where the unclipped term wins, 0 where the clipped one does:
    # 0, (0.6 − 2.0)/4 = −0.35, 0, 2.0/4 = 0.5, 0.
    loss.backward()
    assert values.grad.tolist() == [pytest.approx([0.0, -0.35, 0.0, 0.5, 0.0], abs=1e-12)]


# --- entropy --------------------------------------------------------------------------------


def test_entropy_from_logits_by_hand():
    # Token 0: uniform over 4 → ln 4 = 1.386294. Token 1: logits [0, ln 3] → p = ¼, ¾ (and two
    # ruled-out tokens at −inf): −(¼·ln ¼ + ¾·ln ¾) = 0.562335. Token 2: masked (NaN logits).
    logits = tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, LN3, -math.inf, -math.inf], [math.nan] * 4]])
    mask = mask_of([[1, 1, 0]])
    second = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert second == pytest.approx(0.5623351446188083)
    entropy = entropy_from_logits(logits, mask)
    assert entropy.item() == pytest.approx((LN4 + second) / 2, abs=1e-12)
