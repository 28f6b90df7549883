"""rlhf.ppo.packed: a rollout's sequences on one packed row give the padded forward's numbers
and gradients."""

from __future__ import annotations

import pytest
import torch

from rlhf.ppo.packed import (
    pack_sequences,
    packed_response_logits,
    packed_response_logprobs,
    packed_response_values,
)
from rlhf.ppo.rollout import logprobs_from_logits, padded_response_logits
from rlhf.ppo.value import padded_response_values, value_from_policy

# Two rows: prompt [5, 6] (left-padded to 3) with response [7, 8]; prompt [1, 2, 3] with
# response [4] (right-padded to 2).
PROMPTS = torch.tensor([[0, 5, 6], [1, 2, 3]])
PROMPT_MASK = torch.tensor([[0, 1, 1], [1, 1, 1]])
RESPONSES = torch.tensor([[7, 8], [4, 0]])
RESPONSE_MASK = torch.tensor([[1, 1], [1, 0]])


def test_the_row_holds_the_real_tokens_positions_restart_and_each_response_token_is_predicted():
    packed = pack_sequences(PROMPTS, PROMPT_MASK, RESPONSES, RESPONSE_MASK)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 1, 2, 3, 4]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    blocks = [(block.keys, block.queries) for block in packed.layout.blocks]
    assert blocks == [
        ((range(0, 2),), range(0, 2)),  # prompt [5, 6]
        ((range(0, 2), range(2, 4)), range(2, 4)),  # its response, seeing the prompt
        ((range(4, 7),), range(4, 7)),
        ((range(4, 7), range(7, 8)), range(7, 8)),
    ]
    assert all(block.causal for block in packed.layout.blocks)
    # 7 is predicted at 6 (packed 1), 8 at 7 (packed 2), 4 at 3 (packed 6).
    assert packed.predictors.tolist() == [1, 2, 6]
    assert packed.rows.tolist() == [0, 0, 1] and packed.columns.tolist() == [0, 1, 0]


def test_responses_to_one_prompt_share_a_single_copy_of_it():
    # Rows 0 and 2 answer [5, 6]: it is packed once, both responses attend to it.
    prompts = torch.tensor([[0, 5, 6], [1, 2, 3], [0, 5, 6]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1]])
    responses = torch.tensor([[7, 8], [4, 0], [9, 0]])
    response_mask = torch.tensor([[1, 1], [1, 0], [1, 0]])
    packed = pack_sequences(prompts, prompt_mask, responses, response_mask)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1, 2, 3]]
    keys = [block.keys for block in packed.layout.blocks]
    assert keys[2] == (range(0, 2), range(4, 5))  # 9 sees the prompt and itself, not 7 or 8
    # 7 and 9 are both predicted at the prompt's last token (packed 1).
    assert packed.predictors.tolist() == [1, 2, 1, 7]
    assert packed.rows.tolist() == [0, 0, 2, 1] and packed.columns.tolist() == [0, 1, 0, 0]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from rlhf.nn.tiny import build_tiny_llama

    path = build_tiny_llama(tmp_path_factory.mktemp("packed") / "policy", seed=0)
    return path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def random_batch(vocabulary: int):
    """Four rows, rows 1 and 3 answering one prompt (packed once)."""
    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, vocabulary, (4, 5), generator=generator)
    prompts[3] = prompts[1]
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1], [1] * 5])
    responses = torch.randint(1, vocabulary, (4, 4), generator=generator)
    response_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    return prompts, prompt_mask, responses, response_mask


def gradients(model, loss) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_packed_log_probabilities_and_their_gradients_are_the_padded_ones(tiny_policy):
    _, model = tiny_policy
    batch = random_batch(model.config.vocab_size)
    results = []
    for forward in (packed_response_logits, padded_response_logits):
        logprobs = logprobs_from_logits(forward(model, *batch), batch[2], batch[3])
        results.append((logprobs.detach(), gradients(model, logprobs.sum())))
    (packed, packed_grad), (padded, padded_grad) = results
    assert torch.allclose(packed, padded, atol=1e-5)
    assert (packed[batch[3] == 0] == 0).all()  # padding stays 0
    assert torch.allclose(packed_grad, padded_grad, atol=1e-5)


def test_log_probabilities_from_the_predicting_positions_alone_are_the_padded_ones(tiny_policy):
    """The update's path: the log-softmax of the K predicting positions only, with each
    token's entropy, against the padded (B, T, V) logits' (and their gradients)."""
    from rlhf.ppo.losses import entropy_from_logits

    _, model = tiny_policy
    batch = random_batch(model.config.vocab_size)
    logprobs, entropy = packed_response_logprobs(model, *batch, with_entropy=True)
    packed_grad = gradients(model, logprobs.sum())
    logits = padded_response_logits(model, *batch)
    padded = logprobs_from_logits(logits, batch[2], batch[3])
    assert torch.allclose(logprobs.detach(), padded.detach(), atol=1e-5)
    assert torch.allclose(packed_grad, gradients(model, padded.sum()), atol=1e-5)
    assert not entropy.requires_grad and (entropy[batch[3] == 0] == 0).all()
    mean = entropy.sum() / batch[3].sum()
    assert float(mean) == pytest.approx(float(entropy_from_logits(logits.detach(), batch[3])))
    assert 0 < float(mean) < float(torch.log(torch.tensor(model.config.vocab_size)))


def test_packed_values_are_the_padded_ones(tiny_policy):
    path, model = tiny_policy
    value_model = value_from_policy(path)
    torch.nn.init.normal_(value_model.head.weight, generator=torch.Generator().manual_seed(0))
    batch = random_batch(model.config.vocab_size)
    packed = packed_response_values(value_model, *batch)
    padded = padded_response_values(value_model, *batch)
    assert torch.allclose(packed, padded, atol=1e-5) and packed.abs().sum() > 0
    # Gradients up to ~500 here: equal to float32 rounding, relatively.
    torch.testing.assert_close(
        gradients(value_model, packed.sum()), gradients(value_model, padded.sum()),
        atol=1e-4, rtol=1e-4,
    )  # fmt: skip
