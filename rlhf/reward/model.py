"""Reward models: a scalar head on any Hugging Face backbone, text scoring, saving and loading.

    load_reward_backbone(path, dtype=None)            -> (model, tokenizer)
    score_texts(model, tokenizer, contexts, responses) -> tensor of shape (n,)
    save_reward_model(model, tokenizer, out_dir, metadata={...})
    load_reward_model(out_dir)                         -> (model, tokenizer, metadata)

Backbones
---------
Any directory (or hub name, where a hub can be reached) that ``AutoModelForSequenceClassification``
loads with ``num_labels=1``: a decoder (``LlamaForCausalLM`` -> ``LlamaForSequenceClassification``,
whose reward is the score of the last non-pad token) or an encoder (BERT-like, e.g. MiniLM: the
score of the pooled ``[CLS]`` token). The new linear head is initialised under a fixed seed, so the
same backbone always gives the same untrained reward model (torch's global random state is left
as it was). The tokenizer gets a pad token if it lacks one (its EOS, else its UNK, else a new
``<pad>`` token with the embeddings resized) and ``config.pad_token_id`` is set from it, which the
decoder's pooling needs. Padding is on the right, truncation on the left (see below).

Text format
-----------
Scoring takes text, so the policy and the reward model may use different tokenizers. Each
(context, response) pair is written as one text:

- with the tokenizer's chat template, when it has one: the whole conversation, the response as
  the last assistant turn (``apply_chat_template(context + [assistant], tokenize=False)``); the
  template writes its own special tokens, so the tokenizer adds none;
- else in the plain format of :mod:`rlhf.data.chat`, the one generation samples from: the
  generation prompt followed by the response. The tokenizer adds its usual special tokens
  (BOS, or CLS/SEP).

A text longer than ``max_length`` tokens is cut from the left (the oldest context goes first,
the response is kept); the special tokens the tokenizer adds (BOS, CLS/SEP) are kept too. A
chat-template text cut this way loses the template's own leading BOS.

If the pad token is also the EOS token (a tokenizer that had no pad token) and a chat template
ends the response with EOS, the decoder's reward is read at the token before that EOS, since
pooling takes the last token that is not the pad token.

Saved reward models
-------------------
:func:`save_reward_model` writes ``save_pretrained`` output (model and tokenizer), which
``transformers`` loads back by itself, plus ``pairwise_reward.json``: the metadata given (data
snapshot hash, training config, metrics, …) with ``library_version`` (this package's) and
``base_model`` (the backbone it was built on, unless the metadata names one) added.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhf.data.chat import conversation_text, has_chat_template
from rlhf.files import normalize_permissions

METADATA_FILE = "pairwise_reward.json"
HEAD_INIT_SEED = 0  # the new score head is initialised under this seed


def library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pairwise")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


# --- loading ------------------------------------------------------------------------------------


def _ensure_pad_token(model, tokenizer) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        text_config.pad_token_id = tokenizer.pad_token_id


def load_reward_backbone(path_or_model_dir: str | Path, *, dtype=None):
    """A ``AutoModelForSequenceClassification`` with one output, and its tokenizer.

    Works on a decoder or an encoder directory, or on a saved reward model (whose head is then
    loaded, not initialised). ``dtype`` (e.g. ``torch.bfloat16``) is passed to
    ``from_pretrained``; the model is returned in eval mode on the CPU.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = str(path_or_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(source)
    kwargs: dict[str, Any] = {"num_labels": 1}
    if dtype is not None:
        kwargs["dtype"] = dtype
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_INIT_SEED)
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    _ensure_pad_token(model, tokenizer)
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    model.pairwise_base_model = source
    model.eval()
    return model, tokenizer


# --- formatting and scoring ---------------------------------------------------------------------


def encode_texts(
    tokenizer, texts: Sequence[str], *, max_length: int | None = 512
) -> list[list[int]]:
    """Token ids of formatted texts, cut from the left to ``max_length`` (see the module docs).

    ``max_length=None`` cuts nothing. The tokenizer adds its special tokens only when there is
    no chat template (the template writes its own).
    """
    tokenizer.truncation_side = "left"
    return tokenizer(
        list(texts),
        add_special_tokens=not has_chat_template(tokenizer),
        truncation=max_length is not None,
        max_length=max_length,
        verbose=False,  # no warning for texts longer than the model: they are cut later
    )["input_ids"]


def usable_length(model, max_length: int) -> int:
    """``max_length``, lowered to the longest input the model has positions for (BERT: 512)."""
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return min(max_length, limit) if isinstance(limit, int) and limit > 0 else max_length


def score_texts(
    model,
    tokenizer,
    contexts: Sequence[Sequence[Mapping[str, str]]],
    responses: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int = 512,
):
    """One scalar reward per (context, response) pair, as a float32 CPU tensor of shape (n,).

    Runs in eval mode without gradients (the model's training mode is restored afterwards).
    Texts are grouped into batches of ``batch_size`` (by length; see below for decoders); the
    rewards come back in the order of the inputs and do not depend on ``batch_size``. A batch
    is one packed row without padding, the last layer computing only the reward tokens
    (:func:`rlhf.reward.packed.packed_rewards`), for a model that gives its own forward's
    numbers that way (checked once per model); else padded rows through its own forward. A
    decoder's packed texts are sorted by their tokens, and a text that begins like its
    neighbour (another response to the same prompt) takes the common prefix from it instead of
    computing it again (:func:`rlhf.reward.packed.shared_prefixes`).
    """
    import torch

    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    if batch_size < 1 or max_length < 1:
        raise ValueError("batch_size and max_length must be positive")
    if not responses:
        return torch.zeros(0)
    texts = [conversation_text(tokenizer, c, r) for c, r in zip(contexts, responses, strict=True)]
    encoded = encode_texts(tokenizer, texts, max_length=usable_length(model, max_length))
    from rlhf.reward.packed import packs_texts, uses_prefix_sharing

    packed = packs_texts(model)
    # Packed decoder rows share common prefixes (a prompt's K responses) between neighbours:
    # sorted by their tokens. Padded rows waste least sorted by length.
    sharing = packed and uses_prefix_sharing(model)
    order = sorted(range(len(encoded)), key=lambda i: encoded[i] if sharing else len(encoded[i]))
    rewards = torch.empty(len(encoded), dtype=torch.float32)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                if packed:
                    rewards[chunk] = _packed_scores(model, [encoded[i] for i in chunk], device)
                    continue
                batch = tokenizer.pad(
                    {"input_ids": [encoded[i] for i in chunk]},
                    padding=True,
                    padding_side="right",
                    return_tensors="pt",
                )
                logits = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                ).logits
                rewards[chunk] = logits[:, 0].float().cpu()
    finally:
        model.train(was_training)
    return rewards


def _packed_scores(model, sequences: list[list[int]], device):
    from rlhf.reward.packed import (
        pack_sequences,
        packed_rewards,
        shared_prefixes,
        uses_prefix_sharing,
    )

    if uses_prefix_sharing(model):  # a decoder: neighbours share their common prefix
        inputs = pack_sequences(sequences, "last", shared_prefixes(sequences))
    else:
        inputs = pack_sequences(sequences, "first")
    inputs = {k: v if k == "packed_layout" else v.to(device) for k, v in inputs.items()}
    return packed_rewards(model, **inputs).float().cpu()


# --- saving and loading -------------------------------------------------------------------------


def save_reward_model(
    model,
    tokenizer,
    out_dir: str | Path,
    *,
    metadata: Mapping[str, Any],
    state_dict: Mapping[str, Any] | None = None,
) -> Path:
    """Write the model and tokenizer (``save_pretrained``) and ``pairwise_reward.json``.

    ``metadata`` must be JSON-serialisable; ``library_version`` and ``base_model`` are added.
    ``state_dict`` replaces the model's own weights (a full state gathered from FSDP shards).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = dict(metadata)
    record.setdefault(
        "base_model", getattr(model, "pairwise_base_model", None) or model.name_or_path
    )
    record["library_version"] = library_version()
    text = json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False)  # fails before writing
    model.save_pretrained(out, state_dict=dict(state_dict) if state_dict is not None else None)
    tokenizer.save_pretrained(out)
    normalize_permissions(out)  # safetensors writes 0600 files (see rlhf.files)
    (out / METADATA_FILE).write_text(text + "\n", encoding="utf-8")
    return out


def read_metadata(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / METADATA_FILE).read_text(encoding="utf-8"))


def reward_model_dir(path: str | Path) -> Path:
    """The reward model at ``path``: the directory itself, or the ``model/`` of a job's run
    directory (what ``train-reward --out`` names)."""
    path = Path(path)
    if not (path / METADATA_FILE).is_file() and (path / "model" / METADATA_FILE).is_file():
        return path / "model"
    return path


def load_reward_model(out_dir: str | Path, *, dtype=None):
    """A saved reward model: ``(model, tokenizer, metadata)``; ``out_dir`` may be a job's run
    directory (:func:`reward_model_dir`)."""
    out_dir = reward_model_dir(out_dir)
    metadata = read_metadata(out_dir)
    model, tokenizer = load_reward_backbone(out_dir, dtype=dtype)
    if metadata.get("base_model"):
        model.pairwise_base_model = metadata["base_model"]
    return model, tokenizer, metadata
