"""Tiny, randomly initialised Llama models built locally, for tests, the demo and benchmarks.

Nothing here is downloaded: the tokenizer is a byte-level BPE trained in a fraction of a second
on a few sentences, and the model is a ``LlamaForCausalLM`` with random weights. Its output is
gibberish. What it is good for is exercising every code path that a real Hugging Face model
directory goes through (``from_pretrained``, grouped-query attention, KV cache, tokenizer with a
BOS post-processor, generation config) at the cost of a few milliseconds, and measuring the
speed of generation code on a model of a chosen size (see :func:`llama_20m_config`).

    build_tokenizer(texts, vocab_size=512)       -> PreTrainedTokenizerFast
    build_tiny_llama(out_dir, hidden_size=64...)  -> out_dir, holding model + tokenizer

The same seed gives the same weights (and the same texts the same tokenizer), byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD]  # ids 0, 1, 2, 3, as in Llama's tokenizer

# The default corpus of the tokenizer: enough English, and the plain chat format's turn markers
# (model_worker.generation), that common words and "User:"/"Assistant:" become single tokens.
BUILTIN_CORPUS = [
    "User: Tell me a story about a little girl.\n\nAssistant: Once upon a time, there was a "
    "little girl named Lily. She loved to play outside in the park with her friends.",
    "User: What is the capital of France?\n\nAssistant: The capital of France is Paris.",
    "System: You are a helpful assistant.\n\nUser: How do I boil an egg?\n\nAssistant: Put the "
    "egg in boiling water for seven minutes, then cool it in cold water.",
    "User: Can you help me write an email to my teacher?\n\nAssistant: Of course. Here is a "
    "short and polite email you could send.",
    "The quick brown fox jumps over the lazy dog. One day, the sun was shining and the birds "
    "were singing in the trees.",
    "Please explain why the sky is blue. Light from the sun is scattered by the air, and blue "
    "light is scattered more than red light.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Question? Answer! (yes) [no] {maybe} - * / + =",
]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on ``texts``; it prepends ``<s>`` to every encoding.

    Special tokens: ``<unk>`` 0, ``<s>`` 1 (BOS), ``</s>`` 2 (EOS), ``<pad>`` 3. Byte-level means
    every string is encodable (no unknown characters) and decoding gives the text back.
    ``vocab_size`` must leave room for the 256 bytes and the 4 special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {len(alphabet) + len(SPECIAL_TOKENS)}")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )


def default_intermediate_size(hidden_size: int) -> int:
    """Llama's SwiGLU width, 8/3 of the hidden size, rounded up to a multiple of 16."""
    return -(-8 * hidden_size // 3 // 16) * 16


def llama_20m_config() -> dict[str, int]:
    """Keyword arguments of :func:`build_tiny_llama` for a ~20M-parameter Llama.

    hidden 512, 8 layers, 8 query heads and 4 key/value heads of 64 dimensions, SwiGLU width
    1088, untied input and output embeddings: with the default 512-token vocabulary that is
    exactly 20,193,792 parameters (19,668,992 in the layers, 524,288 in the two embeddings,
    512 in the final norm). Used by ``bench/generation.py``.
    """
    return {
        "hidden_size": 512,
        "num_layers": 8,
        "num_heads": 8,
        "num_kv_heads": 4,
        "intermediate_size": 1088,
    }


def build_tiny_llama(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
    tokenizer=None,
    texts: Iterable[str] | None = None,
) -> Path:
    """Save a randomly initialised ``LlamaForCausalLM`` and its tokenizer in ``out_dir``.

    The directory loads with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``; it holds safetensors weights, the tokenizer (``tokenizer``
    if given, else one trained on ``texts`` or on a small built-in corpus) and a generation
    config naming the BOS, EOS and pad ids. Attention is grouped-query when
    ``num_kv_heads < num_heads``. The weights depend only on the arguments and ``seed``; the
    global random state of torch is left as it was.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from rlhf.files import normalize_permissions

    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide into num_heads, num_heads into num_kv_heads")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = build_tokenizer(BUILTIN_CORPUS if texts is None else texts)
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or default_intermediate_size(hidden_size),
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        **special,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**special)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    normalize_permissions(out)
    return out
