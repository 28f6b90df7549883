"""One rollout of PPO, GRPO or RLOO: responses sampled, judged and given their log-probabilities,
all without gradients.

:func:`collect_rollout` takes P prompts and returns a :class:`Rollout` of B = P·K responses,
K = ``config.group_size``, prompt i's group in rows i·K … i·K + K − 1 (the layout of
:mod:`rlhf.ppo.advantages`):

1. *generation*: K samples of each prompt in one batch, each prompt prefilled once
   (:func:`rlhf.nn.sampling.sample` with ``group_size=K``), every sample's seed a hash of what
   identifies it (:func:`rlhf.rejection_sampling.sampling.sample_seed`), so a rerun draws the
   same tokens;
2. *scoring*: each decoded response judged by both reward models on its text, then gated
   (:func:`rlhf.rejection_sampling.sampling.judge`): R_c, a probability;
3. *log-probabilities*: of every response token under the policy (the "old" policy of the
   ratio: the sampler's own, read from the logits each token was drawn from, so no second
   pass) and under the frozen reference π_0 (one forward pass per chunk of responses).

Sequences are laid out as the sampler laid them out: the prompts left-padded to a common width
L, then the responses right-padded to a common width T. :func:`response_logprobs` computes the
(B, T) log-probabilities of that layout with or without gradients (the reference's, the
trainer's new ones). The sampler's log-probabilities come from the same weights by a KV-cached
pass: they equal a full pass's to float rounding (``tests/unit/test_ppo_rollout.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from rlhf.data.chat import completion_text, encode_prompt
from rlhf.data.prompts import Prompt
from rlhf.nn.sampling import (
    Completion,
    SamplingParams,
    eos_token_ids,
    forward_parameters,
    model_device,
    pad_token_id,
    sample,
)
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.losses import logprobs_and_entropy
from rlhf.ppo.packed import (
    packed_response_logits,
    packed_response_logprobs,
    packs_like_padded,
)
from rlhf.ppo.rewards import missing_eos
from rlhf.rejection_sampling.sampling import Judged, RewardModel, judge, sample_seed


@dataclass(frozen=True)
class RolloutTimes:
    """Seconds spent on each part of a rollout (wall clock, the device synchronised)."""

    generation: float
    scoring: float
    old_logprobs: float
    reference_logprobs: float

    @property
    def total(self) -> float:
        return self.generation + self.scoring + self.old_logprobs + self.reference_logprobs


@dataclass
class Rollout:
    """B = P·K responses to P prompts; tensors on the policy's device. Masks are 0/1 int64."""

    prompts: list[Prompt]  # P; response b answers prompts[b // group_size]
    group_size: int  # K
    prompt_ids: torch.Tensor  # (B, L) int64, left-padded with the pad id
    prompt_mask: torch.Tensor  # (B, L) 1 on prompt tokens
    response_ids: torch.Tensor  # (B, T) int64, right-padded; EOS included where it ended one
    response_mask: torch.Tensor  # (B, T) 1 on response tokens
    old_logprobs: torch.Tensor  # (B, T) float32 log π_old(y_t | x, y_<t), 0 on padding
    ref_logprobs: torch.Tensor  # (B, T) float32 log π_0(y_t | x, y_<t), 0 on padding
    scores: torch.Tensor  # (B,) float32 R_c, the gated score, a probability
    helpfulness: torch.Tensor  # (B,) float32 σ(r) of the helpfulness reward model
    safety: torch.Tensor  # (B,) float32 σ(r) of the safety reward model
    by_safety: torch.Tensor  # (B,) bool: R_c is the safety score
    truncated: torch.Tensor  # (B,) bool: no EOS among the response's tokens
    responses: list[str]  # B decoded responses, as the reward models read them
    seeds: list[int]  # B sampling seeds
    times: RolloutTimes

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) int64: tokens of each response."""
        return self.response_mask.sum(dim=-1)


def collect_rollout(
    policy,
    tokenizer,
    reference,
    helpfulness: RewardModel,
    safety: RewardModel,
    prompts: Sequence[Prompt],
    config: PPOConfig,
    *,
    iteration: int,
) -> Rollout:
    """Sample ``config.group_size`` responses to each prompt, judge them and compute their
    log-probabilities under ``policy`` and ``reference`` (see the module docstring).
    ``iteration`` enters every sample's seed: each iteration draws new responses, a rerun of
    it the same ones."""
    if not prompts:
        raise ValueError("a rollout needs at least one prompt")
    device, k = model_device(policy), config.group_size
    clock = time.perf_counter()
    prompt_ids, completions = sample_responses(policy, tokenizer, prompts, config, iteration)
    texts = [completion_text(tokenizer, c.token_ids) for c in completions]
    generation, clock = _lap(clock, device)
    judged = judge_responses(helpfulness, safety, prompts, completions, texts, config)
    scoring, clock = _lap(clock, device)
    rows = [ids for ids in prompt_ids for _ in range(k)]  # each prompt once per response
    batch = pad_batch(
        rows, [c.token_ids for c in completions], pad_token_id(policy, tokenizer), device
    )
    old = pad_sequence(  # (B, T): the longest response is T long
        [torch.tensor(c.logprobs, dtype=torch.float32) for c in completions], batch_first=True
    ).to(device)
    old_seconds, clock = _lap(clock, device)
    ref = frozen_logprobs(reference, *batch, batch_size=config.minibatch_size)
    ref_seconds, _ = _lap(clock, device)
    prompt_tokens, prompt_mask, response_ids, response_mask = batch
    return Rollout(
        prompts=list(prompts),
        group_size=k,
        prompt_ids=prompt_tokens,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        old_logprobs=old,
        ref_logprobs=ref,
        **judged_tensors(judged, device),
        truncated=missing_eos(response_ids, response_mask, eos_token_ids(policy, tokenizer)),
        responses=texts,
        seeds=[c.seed for c in completions],
        times=RolloutTimes(generation, scoring, old_seconds, ref_seconds),
    )


# --- sampling and judging -----------------------------------------------------------------------


def rollout_seeds(prompts: Sequence[Prompt], config: PPOConfig, iteration: int) -> list[list[int]]:
    """(P, K) seeds: a hash of the run's seed, the iteration, the prompt and the sample's index."""
    k = config.group_size
    return [
        [sample_seed(config.seed, iteration, p.key, config.temperature, j) for j in range(k)]
        for p in prompts
    ]


def prompt_room(policy, config: PPOConfig) -> int | None:
    """Tokens a prompt may keep so that it and its response fit the model's positions."""
    room = getattr(policy.config, "max_position_embeddings", None)
    return None if room is None else room - config.max_new_tokens


def sample_responses(
    policy, tokenizer, prompts: Sequence[Prompt], config: PPOConfig, iteration: int
) -> tuple[list[list[int]], list[Completion]]:
    """(the P prompts' token ids, P·K completions, prompt i's K in rows i·K …), each prompt
    prefilled once."""
    room = prompt_room(policy, config)
    prompt_ids = [encode_prompt(tokenizer, p.context, room)[0] for p in prompts]
    params = [
        SamplingParams(config.temperature, config.top_p, config.max_new_tokens, seed=seed)
        for group in rollout_seeds(prompts, config, iteration)
        for seed in group
    ]
    completions = sample(
        policy, tokenizer, prompt_ids, params, group_size=config.group_size, with_logprobs=True
    )
    return prompt_ids, completions


def judge_responses(
    helpfulness: RewardModel,
    safety: RewardModel,
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    texts: Sequence[str],
    config: PPOConfig,
) -> list[Judged]:
    """B judgements, in the completions' order (the gate of :func:`judge`)."""
    k = config.group_size
    rows = [(text, c.seed, len(c.token_ids)) for text, c in zip(texts, completions, strict=True)]
    groups = [rows[i * k : (i + 1) * k] for i in range(len(prompts))]
    size = {"batch_size": config.reward_batch_size, "max_length": config.reward_max_length}
    return [j for group in judge(helpfulness, safety, prompts, groups, **size) for j in group]


def judged_tensors(judged: Sequence[Judged], device) -> dict[str, torch.Tensor]:
    """The judgements as (B,) tensors: scores, helpfulness, safety (float32), by_safety (bool)."""

    def column(values, dtype=torch.float32) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    return {
        "scores": column([j.reward for j in judged]),
        "helpfulness": column([j.helpfulness for j in judged]),
        "safety": column([j.safety for j in judged]),
        "by_safety": column([j.by_safety for j in judged], torch.bool),
    }


# --- the sequences and their log-probabilities --------------------------------------------------


def pad_batch(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt ids, prompt mask) (B, L), left-padded, and (response ids, response mask) (B, T),
    right-padded; every response has at least one token."""
    if any(len(ids) == 0 for ids in response_ids):
        raise ValueError("every response needs at least one token")
    width, length = max(map(len, prompt_ids)), max(map(len, response_ids))
    batch = len(prompt_ids)
    prompts = torch.full((batch, width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((batch, width), dtype=torch.long)
    responses = torch.full((batch, length), pad_id, dtype=torch.long)
    response_mask = torch.zeros((batch, length), dtype=torch.long)
    for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        prompts[i, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        prompt_mask[i, width - len(prompt) :] = 1
        responses[i, : len(response)] = torch.tensor(list(response), dtype=torch.long)
        response_mask[i, : len(response)] = 1
    return tuple(t.to(device) for t in (prompts, prompt_mask, responses, response_mask))


def response_logits(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """(B, T, V) float32 logits of the positions that predict each response token y_1 … y_T,
    0 on padding; prompts (B, L) left-padded, responses (B, T) right-padded. One forward pass
    on a packed row of the real tokens (:mod:`rlhf.ppo.packed`) where the model gives the
    padded pass's numbers that way, else :func:`padded_response_logits`. Differentiable: the
    caller chooses ``torch.no_grad()`` or not."""
    inputs = (prompt_ids, prompt_mask, response_ids, response_mask)
    if packs_like_padded(model, packed_response_logits, padded_response_logits):
        return packed_response_logits(model, *inputs)
    return padded_response_logits(model, *inputs)


def padded_response_logits(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """:func:`response_logits` by one forward pass over the (B, L + T) padded sequences,
    position ids counting from each row's first real token (as in the sampler); 0 on padding.
    """
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, L + T)
    attention = torch.cat([prompt_mask, response_mask], dim=1)  # (B, L + T)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)  # (B, L + T)
    width = response_ids.shape[1]
    keep = {"logits_to_keep": width + 1} if "logits_to_keep" in forward_parameters(model) else {}
    logits = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        use_cache=False,
        **keep,
    ).logits
    logits = logits[:, -(width + 1) : -1].float()  # (B, T, V): the positions before y_1 … y_T
    return logits.masked_fill(~response_mask.bool()[..., None], 0.0)


def logprobs_from_logits(
    logits: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """(B, T) log-softmax of ``logits`` (B, T, V) at each response token, 0 on padding."""
    logprobs, _ = logprobs_and_entropy(logits, response_ids)
    return logprobs.masked_fill(~response_mask.bool(), 0.0)


def response_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """(B, T) float32 log π(y_t | x, y_<t) of each response token, 0 on padding: the logits of
    :func:`response_logits` at the sampled tokens. Differentiable, as it is."""
    inputs = (prompt_ids, prompt_mask, response_ids, response_mask)
    return response_logprobs_and_entropy(model, *inputs)[0]


def response_logprobs_and_entropy(
    model, *inputs: torch.Tensor, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`response_logprobs` and, if asked, (B, T) the policy's entropy at each response
    token (no gradient; 0 on padding). Packed, only the predicting positions' log-softmax is
    computed; padded, the (B, T, V) logits' (as :func:`response_logits` chooses)."""
    if packs_like_padded(model, packed_response_logits, padded_response_logits):
        return packed_response_logprobs(model, *inputs, with_entropy=with_entropy)
    logits = padded_response_logits(model, *inputs)  # (B, T, V)
    padding = ~inputs[3].bool()
    logprobs, entropy = logprobs_and_entropy(logits, inputs[2], with_entropy)
    if entropy is not None:
        entropy = entropy.masked_fill(padding, 0.0)
    return logprobs.masked_fill(padding, 0.0), entropy


def frozen_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    batch_size: int,
) -> torch.Tensor:
    """:func:`response_logprobs` without gradients, in eval mode, ``batch_size`` rows per
    forward pass, on ``model``'s device; (B, T) float32 on the inputs' device."""
    inputs = (prompt_ids, prompt_mask, response_ids, response_mask)
    return frozen_rows(response_logprobs, model, inputs, batch_size=batch_size)


def frozen_rows(forward, model, inputs: Sequence[torch.Tensor], *, batch_size: int):
    """``forward(model, *rows)`` over chunks of ``batch_size`` rows of ``inputs`` (each (B, …)),
    without gradients, in eval mode, on ``model``'s device; concatenated on the inputs' device."""
    device = model_device(model)
    chunks = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, inputs[0].shape[0], batch_size):
                rows = slice(start, start + batch_size)
                chunks.append(forward(model, *(t[rows].to(device) for t in inputs)))
    finally:
        model.train(was_training)
    return torch.cat(chunks).to(inputs[0].device)


def _lap(start: float, device: torch.device) -> tuple[float, float]:
    """(seconds since ``start``, now), once the device's queued work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    return now - start, now


__all__ = [
    "Rollout",
    "RolloutTimes",
    "collect_rollout",
    "frozen_logprobs",
    "logprobs_from_logits",
    "pad_batch",
    "padded_response_logits",
    "response_logits",
    "response_logprobs",
    "response_logprobs_and_entropy",
]
