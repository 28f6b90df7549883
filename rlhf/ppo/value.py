"""PPO's value model: a scalar per token, V(x, y_<t), the return expected from that state on.

:class:`ValueModel` is a transformer backbone (the model without its language-model head) and a
linear head from each position's last hidden state to one number. It is a *separate* model from
the policy, not a second head on the policy's trunk:

- the policy's representations are moved by the policy loss alone: no value-loss coefficient
  to tune against it, and a value head that starts far off (it always does) cannot drag the
  policy away from π_0 through a shared trunk in the first updates;
- it can start from the helpfulness reward model (InstructGPT; Llama 2 follows it), whose
  backbone and head already read a (prompt, response) and predict its score, which is what
  the value of the last response token must learn;
- the price is a second forward and backward pass per minibatch and a second set of weights
  and optimizer state.

Two starts (``PPOConfig.value_init``):

- ``"reward"``: the helpfulness reward model's backbone and its score head (its bias, if any,
  else 0). The value model reads the *policy's* token ids, so this needs the reward model's
  tokenizer to be the policy's (the same vocabulary); where it is not (a MiniLM judge of a
  Llama policy), the value model starts from the policy instead and :func:`load_value_model`
  says why.
- ``"policy"``: the policy's backbone and a zero-initialised head: every value starts at 0, a
  neutral guess for whitened scores (mean 0), and the head's gradient is not zero (it is the
  hidden state times the error), so it learns from the first step.

The value of response token t is read at the position that predicts y_t (the last token of
x, y_<t), the position :func:`rlhf.ppo.rollout.response_logits` reads the policy's logits at.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf.nn.packed_attention import packed_attention_of
from rlhf.nn.sampling import forward_parameters
from rlhf.ppo.packed import packed_response_values, packs_like_padded
from rlhf.ppo.rollout import frozen_rows


class ValueModel(torch.nn.Module):
    """A backbone and a linear head: (B, S) token ids → (B, S) values, in float32."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Linear, source: str = ""):
        super().__init__()
        if head.out_features != 1:
            raise ValueError(f"a value head has one output, not {head.out_features}")
        self.backbone = backbone
        self.head = head
        self.source = source  # where it started: "reward: DIR" or "policy: DIR"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
        packed_layout=None,
    ) -> torch.Tensor:
        """(B, S) values; with ``packed_layout`` (:mod:`rlhf.ppo.packed`) B is 1, a packed
        row, and ``attention_mask`` None."""
        extra = {}
        parameters = forward_parameters(self.backbone)
        if position_ids is not None and "position_ids" in parameters:
            extra["position_ids"] = position_ids
        if "use_cache" in parameters:
            extra["use_cache"] = False
        if packed_layout is None:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)
        else:
            with packed_attention_of(self.backbone):
                hidden = self.backbone(input_ids=input_ids, packed_layout=packed_layout, **extra)
        states = hidden.last_hidden_state  # (B, S, H)
        return self.head(states.to(self.head.weight.dtype)).squeeze(-1).float()


def response_values(
    value_model: ValueModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """(B, T) float32 V(x, y_<t) of each response token, 0 on padding; the layout of
    :func:`rlhf.ppo.rollout.response_logits` (left-padded prompts, right-padded responses),
    computed on a packed row where the backbone gives the same numbers that way
    (:mod:`rlhf.ppo.packed`), else :func:`padded_response_values`. Differentiable: the caller
    chooses ``torch.no_grad()`` or not."""
    inputs = (prompt_ids, prompt_mask, response_ids, response_mask)
    if packs_like_padded(value_model, packed_response_values, padded_response_values):
        return packed_response_values(value_model, *inputs)
    return padded_response_values(value_model, *inputs)


def padded_response_values(
    value_model: ValueModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """:func:`response_values` by one forward pass over the (B, L + T) padded sequences."""
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, L + T)
    attention = torch.cat([prompt_mask, response_mask], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    width = response_ids.shape[1]
    values = value_model(input_ids, attention, positions)[:, -(width + 1) : -1]  # (B, T)
    return values.masked_fill(~response_mask.bool(), 0.0)


def frozen_values(
    value_model: ValueModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    batch_size: int,
) -> torch.Tensor:
    """:func:`response_values` without gradients, in eval mode, ``batch_size`` rows a pass."""
    inputs = (prompt_ids, prompt_mask, response_ids, response_mask)
    return frozen_rows(response_values, value_model, inputs, batch_size=batch_size)


def same_vocabulary(tokenizer, other) -> bool:
    """Whether two tokenizers map the same strings to the same ids (and pad alike)."""
    return tokenizer.get_vocab() == other.get_vocab()


def _reward_head(model) -> torch.nn.Linear | None:
    """The score head of a sequence-classification reward model, if it reads the backbone's
    hidden states directly (decoders' ``score``); None for one that reads a pooled state."""
    head = getattr(model, "score", None)
    if isinstance(head, torch.nn.Linear) and head.out_features == 1:
        return head
    return None


def value_from_reward(reward_model) -> ValueModel | None:
    """A value model with the reward model's backbone and head; None where its head does not
    read per-token hidden states (an encoder's pooled classifier)."""
    head = _reward_head(reward_model)
    if head is None:
        return None
    new = torch.nn.Linear(head.in_features, 1, bias=True)
    with torch.no_grad():
        new.weight.copy_(head.weight.float())
        new.bias.copy_(head.bias.float() if head.bias is not None else torch.zeros(1))
    source = getattr(reward_model, "pairwise_base_model", "") or reward_model.name_or_path
    return ValueModel(reward_model.base_model, new, f"reward: {source}")


def value_from_policy(policy_dir: str | Path, *, dtype=torch.float32) -> ValueModel:
    """The policy's backbone (loaded again: the value model is trained apart from the policy)
    with a zero-initialised head."""
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(str(policy_dir), dtype=dtype)
    hidden = backbone.config.get_text_config().hidden_size
    head = torch.nn.Linear(hidden, 1, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return ValueModel(backbone, head, f"policy: {policy_dir}")


def load_value_model(
    value_init: str, policy_dir: str | Path, policy_tokenizer, reward_dir: str | Path
) -> tuple[ValueModel, str]:
    """``(value model, a sentence saying where it started and why)``, on the CPU in float32,
    in train mode. ``value_init``: ``"reward"`` or ``"policy"`` (see the module docstring)."""
    if value_init not in ("reward", "policy"):
        raise ValueError(f"unknown value_init {value_init!r}; use 'reward' or 'policy'")
    if value_init == "reward":
        from rlhf.reward.model import load_reward_model

        reward_model, reward_tokenizer, _ = load_reward_model(reward_dir, dtype=torch.float32)
        if not same_vocabulary(policy_tokenizer, reward_tokenizer):
            why = "its tokenizer is not the policy's"
        else:
            value = value_from_reward(reward_model)
            if value is not None:
                value.train()
                return value, f"value model: the reward model {reward_dir}, backbone and head"
            why = "its head reads a pooled state, not each token's"
        note = (
            f"value model: the policy's backbone with a zero head, not the reward model "
            f"{reward_dir}: {why}"
        )
    else:
        note = "value model: the policy's backbone with a zero head"
    value = value_from_policy(policy_dir)
    value.train()
    return value, note


__all__ = [
    "ValueModel",
    "frozen_values",
    "load_value_model",
    "padded_response_values",
    "response_values",
    "same_vocabulary",
    "value_from_policy",
    "value_from_reward",
]
