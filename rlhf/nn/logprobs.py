"""Log-probabilities of completions under a causal language model.

``completion_logprobs(model, prompts, completions)`` returns, for each (prompt, completion) pair
of token-id lists, Σ_t log π(c_t | prompt, c_<t): one forward pass per batch over the sequences
right-padded to a common length (padding masked out), the next-token log-softmax gathered at
each completion token. The KL estimates of the policy stages are differences of these sums
(k1: log π(y|x) − log π_ref(y|x), an unbiased estimate of KL(π‖π_ref) for y ~ π).
"""

from __future__ import annotations

from collections.abc import Sequence


def completion_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
) -> list[float]:
    import torch

    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    device = next(model.parameters()).device
    sums: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                rows = [
                    (list(p), list(c))
                    for p, c in zip(
                        prompts[start : start + batch_size],
                        completions[start : start + batch_size],
                        strict=True,
                    )
                ]
                sums += _batch_sums(model, rows, device)
    finally:
        model.train(was_training)
    return sums


def _batch_sums(model, rows, device) -> list[float]:
    import torch

    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T), right-padded
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    counted = torch.zeros(len(rows), width, dtype=torch.bool)  # completion tokens
    for i, (prompt, completion) in enumerate(rows):
        sequence = prompt + completion
        ids[i, : len(sequence)] = torch.tensor(sequence)
        mask[i, : len(sequence)] = 1
        counted[i, len(prompt) : len(sequence)] = True
    ids, mask, counted = ids.to(device), mask.to(device), counted.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V): predicts tokens 1…T-1
    taken = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    taken = taken.masked_fill(~counted[:, 1:], 0.0)
    return taken.sum(dim=-1).tolist()
