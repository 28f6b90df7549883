"""Sampling K responses per prompt from a policy and judging each by the gated reward.

The policy and the two reward models may use different tokenizers: responses are decoded to
text and each reward model scores the text of (prompt, response) with its own
(:func:`rlhf.reward.model.score_texts`); a score r becomes a probability σ(r), then the Llama 2
gate picks the helpfulness or the safety one (:mod:`rlhf.reward.gate`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rlhf.data.chat import completion_text, encode_prompt
from rlhf.data.prompts import Prompt
from rlhf.reward.gate import gated_reward, sigmoid


@dataclass(frozen=True)
class Judged:
    """A response and its rewards (probabilities)."""

    response: str
    seed: int
    reward: float  # R_c, the gated reward
    helpfulness: float
    safety: float
    by_safety: bool
    tokens: int


def sample_seed(seed: int, iteration: int, key: str, temperature: float, index: int) -> int:
    """The seed of one sample: a hash of what identifies it, so a rerun draws the same."""
    text = f"pairwise-rs\x00{seed}\x00{iteration}\x00{key}\x00{temperature!r}\x00{index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


@dataclass
class RewardModel:
    model: object
    tokenizer: object

    def probabilities(self, contexts, responses, *, batch_size: int, max_length: int):
        from rlhf.reward.model import score_texts

        scores = score_texts(
            self.model,
            self.tokenizer,
            contexts,
            responses,
            batch_size=batch_size,
            max_length=max_length,
        )
        return [sigmoid(float(score)) for score in scores]


def sample_groups(
    policy,
    tokenizer,
    prompts: Sequence[Prompt],
    seeds: Sequence[Sequence[int]],
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    on_step: Callable[[int, int], None] | None = None,
) -> list[list[tuple[str, int, int]]]:
    """K (text, seed, tokens) samples per prompt, K = len(seeds[i]); each prompt prefilled once
    (``on_step``: :func:`rlhf.nn.sampling.sample`'s progress callback)."""
    from rlhf.nn.sampling import SamplingParams, sample

    k = len(seeds[0])
    room = getattr(policy.config, "max_position_embeddings", None)
    room = None if room is None else room - max_new_tokens
    prompt_ids = [encode_prompt(tokenizer, prompt.context, room)[0] for prompt in prompts]
    params = [
        SamplingParams(temperature, top_p, max_new_tokens, seed=seed)
        for group in seeds
        for seed in group
    ]
    completions = sample(policy, tokenizer, prompt_ids, params, group_size=k, on_step=on_step)
    texts = [
        (completion_text(tokenizer, c.token_ids), c.seed, len(c.token_ids)) for c in completions
    ]
    return [texts[i * k : (i + 1) * k] for i in range(len(prompts))]


def judge(
    helpfulness: RewardModel,
    safety: RewardModel,
    prompts: Sequence[Prompt],
    groups: Sequence[Sequence[tuple[str, int, int]]],
    *,
    batch_size: int,
    max_length: int,
) -> list[list[Judged]]:
    """Each sample's rewards, by both models, gated (see the module docstring)."""
    contexts = [
        prompt.context for prompt, group in zip(prompts, groups, strict=True) for _ in group
    ]
    responses = [text for group in groups for text, _, _ in group]
    size = {"batch_size": batch_size, "max_length": max_length}
    by_helpfulness = helpfulness.probabilities(contexts, responses, **size)
    by_safety = safety.probabilities(contexts, responses, **size)
    judged, row = [], 0
    for prompt, group in zip(prompts, groups, strict=True):
        judged.append([])
        for text, seed, tokens in group:
            h, s = by_helpfulness[row], by_safety[row]
            reward, decided_by_safety = gated_reward(h, s, prompt.safety_prompt)
            judged[-1].append(Judged(text, seed, reward, h, s, decided_by_safety, tokens))
            row += 1
    return judged
