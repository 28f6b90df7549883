"""One update of the policy (and, for PPO, of the value model) on one :class:`Rollout`.

:func:`rollout_targets` turns the rollout into what every token is trained towards:

1. per-token rewards (:func:`rlhf.ppo.rewards.sequence_rewards`): −β·KL_t at every response
   token (``kl_estimator`` of the policy's log-probabilities at sampling time against the
   reference's), plus WHITEN(LOGIT(R_c)) at the last one, less ``truncation_penalty`` for a
   response without EOS (Llama 2's reward, the same for all three algorithms);
2. advantages:

   - ``ppo``: GAE (γ, λ) on the value model's values at sampling time, then whitened over the
     rollout's response tokens; the returns A + V are the value model's targets;
   - ``grpo`` / ``rloo``: each response's return Σ_t r_t (its score less β times its summed KL)
     against its group's (the other responses to the same prompt):
     :func:`rlhf.ppo.advantages.grpo_advantages` or ``rloo_advantages``, one per response,
     broadcast over its tokens. No value model.

:func:`ppo_update` then takes ``ppo_epochs`` passes over the rollout in a new random order each
(seeded by the run's seed, the iteration and the pass: a rerun takes the same steps), one
optimizer step per minibatch of ``minibatch_size`` responses: the clipped policy loss (plus,
for PPO, the clipped value loss of the separate value model, :mod:`rlhf.ppo.value`), gradients
clipped to ``max_grad_norm`` for each model on its own, AdamW at a constant learning rate
(:func:`adamw`). Losses are means over the minibatch's response tokens.

The metrics of an iteration (:func:`rollout_metrics`, :class:`UpdateMetrics`): the mean gated
score R_c and the share decided by the safety model, the KL to the reference (per response, the
run's estimator), response length and truncation; the policy and value losses, clip fractions,
the policy's entropy, the approximate KL between the updated policy and the sampling one
(``mean (ρ − 1) − log ρ``, k3) and the gradient norms before clipping, averaged over the steps.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch

from rlhf.ppo.advantages import gae, grpo_advantages, rloo_advantages
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.losses import clipped_policy_loss, clipped_value_loss
from rlhf.ppo.processes import Processes
from rlhf.ppo.rewards import (
    kl_per_token,
    masked_mean,
    normalized_scores,
    sequence_rewards,
    whiten,
)
from rlhf.ppo.rollout import Rollout, response_logprobs_and_entropy
from rlhf.ppo.value import ValueModel, frozen_values, response_values


@dataclass
class Targets:
    """What each response token is trained towards; (B, T) unless said otherwise."""

    kl: torch.Tensor  # KL_t to the reference at sampling time (the run's estimator)
    rewards: torch.Tensor  # r_t
    advantages: torch.Tensor  # (B, T) for ppo; (B, 1) for grpo and rloo
    returns: torch.Tensor | None = None  # ppo: the value model's targets
    old_values: torch.Tensor | None = None  # ppo: the value model's values at sampling time


@dataclass
class UpdateMetrics:
    """Means over the optimizer steps of one update (value fields None without a value model)."""

    policy_loss: float
    clip_fraction: float
    entropy: float
    approx_kl: float
    policy_grad_norm: float
    steps: int
    value_loss: float | None = None
    value_clip_fraction: float | None = None
    value_grad_norm: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def adamw(model: torch.nn.Module, config: PPOConfig) -> torch.optim.AdamW:
    """AdamW at the config's constant learning rate (Llama 2: 1e-6, β 0.9, 0.95, ε 1e-5), weight
    decay on the weight matrices and none on norms and biases (the rule of
    :func:`rlhf.nn.trainer.adamw_with_schedule`)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=config.adam_betas,
        eps=config.adam_epsilon,
    )


def _inputs(rollout: Rollout, rows=slice(None)) -> tuple[torch.Tensor, ...]:
    return (
        rollout.prompt_ids[rows],
        rollout.prompt_mask[rows],
        rollout.response_ids[rows],
        rollout.response_mask[rows],
    )


def rollout_targets(
    rollout: Rollout, config: PPOConfig, value_model: ValueModel | None = None
) -> Targets:
    """Per-token rewards and advantages (see the module docstring); ``value_model`` is needed
    for ``ppo`` (its values at sampling time are computed here, without gradients) and not
    read for ``grpo`` and ``rloo``."""
    mask = rollout.response_mask
    kl = kl_per_token(rollout.old_logprobs, rollout.ref_logprobs, config.kl_estimator)
    kl = kl.masked_fill(~mask.bool(), 0.0)
    rewards = sequence_rewards(
        normalized_scores(rollout.scores),
        kl,
        mask,
        beta=config.beta,
        truncated=rollout.truncated,
        truncation_penalty=config.truncation_penalty,
    )
    if config.algorithm == "ppo":
        if value_model is None:
            raise ValueError("ppo needs a value model")
        old_values = frozen_values(value_model, *_inputs(rollout), batch_size=config.minibatch_size)
        advantages, returns = gae(rewards, old_values, mask, gamma=config.gamma, lam=config.lam)
        advantages = whiten(advantages, mask=mask)
        return Targets(kl, rewards, advantages, returns, old_values)
    totals = rewards.sum(dim=1)  # (B,): each response's return, the score less β·Σ KL
    if config.algorithm == "grpo":
        per_response = grpo_advantages(totals, rollout.group_size)
    elif config.algorithm == "rloo":
        per_response = rloo_advantages(totals, rollout.group_size)
    else:
        raise ValueError(f"unknown algorithm {config.algorithm!r}")
    return Targets(kl, rewards, per_response[:, None])


def minibatch_loss(
    policy,
    rollout: Rollout,
    targets: Targets,
    rows: torch.Tensor,
    config: PPOConfig,
    value_model: ValueModel | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, statistics)`` of the responses ``rows``: the clipped policy loss, plus for
    ``ppo`` the clipped value loss (the two models share no parameter, so the sum's gradient
    is each one's own loss's). Differentiable; the statistics are detached scalars."""
    inputs = _inputs(rollout, rows)
    mask = rollout.response_mask[rows]
    logprobs, entropy = response_logprobs_and_entropy(policy, *inputs, with_entropy=True)
    old = rollout.old_logprobs[rows]
    policy_loss, clip_fraction = clipped_policy_loss(
        logprobs, old, targets.advantages[rows], mask, config.clip
    )
    log_ratio = torch.where(mask.bool(), logprobs.detach() - old, 0)
    stats = {
        "policy_loss": policy_loss.detach(),
        "clip_fraction": clip_fraction,
        "entropy": masked_mean(entropy, mask),
        "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
    }
    loss = policy_loss
    if config.algorithm == "ppo":
        if value_model is None or targets.returns is None or targets.old_values is None:
            raise ValueError("ppo needs a value model and its targets")
        values = response_values(value_model, *inputs)
        value_loss, value_clip = clipped_value_loss(
            values, targets.old_values[rows], targets.returns[rows], mask, config.value_clip
        )
        stats["value_loss"] = value_loss.detach()
        stats["value_clip_fraction"] = value_clip
        loss = loss + value_loss
    return loss, stats


def update_seed(seed: int, iteration: int, epoch: int) -> int:
    """The seed of one pass's minibatch order: a hash of the run's seed, iteration and pass."""
    text = f"pairwise-ppo-update\x00{seed}\x00{iteration}\x00{epoch}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def ppo_update(
    policy,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    config: PPOConfig,
    *,
    iteration: int,
    value_model: ValueModel | None = None,
    value_optimizer: torch.optim.Optimizer | None = None,
    targets: Targets | None = None,
    processes: Processes | None = None,
) -> UpdateMetrics:
    """``ppo_epochs`` passes over ``rollout``, one optimizer step per minibatch (see the module
    docstring); the means of their statistics. ``targets``: :func:`rollout_targets`'s, if the
    caller computed them. For ``grpo`` and ``rloo`` the value model is not read nor stepped.

    Under several ``processes`` every process holds the whole rollout and computes its share of
    each minibatch's rows, through ``policy`` and ``value_model`` wrapped for DDP
    (:mod:`rlhf.ppo.processes`): the same steps as one process."""
    uses_value = config.algorithm == "ppo"
    if uses_value and (value_model is None or value_optimizer is None):
        raise ValueError("ppo needs a value model and its optimizer")
    if targets is None:
        targets = rollout_targets(rollout, config, value_model if uses_value else None)
    batch = rollout.response_ids.shape[0]
    if batch % config.minibatch_size:
        raise ValueError(f"minibatch_size {config.minibatch_size} does not divide {batch}")
    world, rank = (processes.world, processes.rank) if processes else (1, 0)
    if config.minibatch_size % world:
        raise ValueError(
            f"minibatch_size {config.minibatch_size} is not shared by {world} processes"
        )
    models = [(policy, optimizer)] + ([(value_model, value_optimizer)] if uses_value else [])
    for model, _ in models:
        model.train()
    totals: dict[str, float] = {}
    steps = 0
    for epoch in range(config.ppo_epochs):
        generator = torch.Generator().manual_seed(update_seed(config.seed, iteration, epoch))
        order = torch.randperm(batch, generator=generator).to(rollout.response_ids.device)
        for start in range(0, batch, config.minibatch_size):
            rows = order[start : start + config.minibatch_size]
            mine = rows[rank::world]
            loss, stats = minibatch_loss(
                policy, rollout, targets, mine, config, value_model if uses_value else None
            )
            if processes is not None:  # token means over my rows → my part of the minibatch's
                mask = rollout.response_mask
                share = processes.token_share(mask[mine].sum(), mask[rows].sum())
                stats = processes.sum({name: value * share for name, value in stats.items()})
                loss = loss * (share * world)  # × world: DDP averages the gradients
            for _, model_optimizer in models:
                model_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms = [
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                for model, _ in models
            ]
            for _, model_optimizer in models:
                model_optimizer.step()
            for _, model_optimizer in models:
                model_optimizer.zero_grad(set_to_none=True)
            stats["policy_grad_norm"] = norms[0]
            if uses_value:
                stats["value_grad_norm"] = norms[1]
            for name, value in stats.items():
                totals[name] = totals.get(name, 0.0) + float(value)
            steps += 1
    means = {name: total / steps for name, total in totals.items()}
    return UpdateMetrics(steps=steps, **means)


def rollout_metrics(rollout: Rollout, targets: Targets) -> dict[str, float]:
    """The rollout's numbers: the mean gated score (R_c, a probability) and each reward model's,
    the share of responses judged by the safety model, the KL to the reference summed over each
    response and averaged over responses (the reward's penalty is β times it), the response
    length and the share without EOS."""
    mask = rollout.response_mask.bool()
    kl_per_response = torch.where(mask, targets.kl, 0).sum(dim=1)
    return {
        "reward": float(rollout.scores.mean()),
        "helpfulness": float(rollout.helpfulness.mean()),
        "safety": float(rollout.safety.mean()),
        "by_safety_share": float(rollout.by_safety.float().mean()),
        "kl": float(kl_per_response.mean()),
        "response_length": float(rollout.lengths.float().mean()),
        "truncated_share": float(rollout.truncated.float().mean()),
        "responses": int(rollout.response_ids.shape[0]),
    }


__all__ = [
    "Targets",
    "UpdateMetrics",
    "adamw",
    "minibatch_loss",
    "ppo_update",
    "rollout_metrics",
    "rollout_targets",
    "update_seed",
]
