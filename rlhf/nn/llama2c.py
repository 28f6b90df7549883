"""Convert a llama2.c checkpoint and its SentencePiece tokenizer to a Hugging Face model.

llama2.c (Karpathy) stores a Llama as a header of seven int32 followed by float32 tensors:

    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
    token_embedding (vocab, dim)
    rms_att (L, dim) | wq (L, n_heads·hd, dim) | wk (L, n_kv·hd, dim) | wv (L, n_kv·hd, dim)
    wo (L, dim, n_heads·hd) | rms_ffn (L, dim) | w1 (L, hidden, dim) | w2 (L, dim, hidden)
    w3 (L, hidden, dim) | rms_final (dim) | freq_cis_real, freq_cis_imag (seq_len, hd/2)
    [wcls (vocab, dim), only when vocab_size is negative: unshared classifier]

Matrices are in PyTorch's (out, in) layout. Two conventions differ from Hugging Face's:
rotary embeddings rotate interleaved pairs (0,1), (2,3)… where ``LlamaForCausalLM`` rotates
the two halves of each head, so the query and key rows are permuted; and the tokenizer must
prepend BOS, as llama2.c's ``encode`` does.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

HEADER = struct.Struct("<7i")


@dataclass(frozen=True)
class Llama2cConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def read_header(path: Path) -> Llama2cConfig:
    with Path(path).open("rb") as stream:
        raw = stream.read(HEADER.size)
    if len(raw) < HEADER.size:
        raise ValueError(f"{path}: too short for a llama2.c checkpoint header")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = HEADER.unpack(raw)
    config = Llama2cConfig(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len, vocab > 0)
    if min(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len) <= 0 or dim % heads:
        raise ValueError(f"{path}: implausible llama2.c header {config}")
    return config


def interleaved_to_halves(weight, n_heads: int):
    """Reorder the rows of a query/key projection from interleaved rotary pairs to halves.

    weight: (n_heads·head_dim, dim). Within each head, rows (0,1), (2,3)… form rotary pairs in
    llama2.c; Hugging Face pairs row i with row i + head_dim/2.
    """
    rows, columns = weight.shape
    return (
        weight.view(n_heads, rows // n_heads // 2, 2, columns)
        .transpose(1, 2)
        .reshape(rows, columns)
    )


def load_state_dict(path: Path, config: Llama2cConfig) -> dict:
    """Read the tensors of a llama2.c checkpoint into a ``LlamaForCausalLM`` state dict."""
    import torch

    data = torch.from_file(
        str(path), shared=False, size=Path(path).stat().st_size // 4, dtype=torch.float32
    )[HEADER.size // 4 :]
    offset = 0

    def take(*shape: int):
        nonlocal offset
        count = 1
        for size in shape:
            count *= size
        if offset + count > data.numel():
            raise ValueError(f"{path}: file ends before all weights were read")
        tensor = data[offset : offset + count].view(*shape).clone()
        offset += count
        return tensor

    c, hd = config, config.head_dim
    embed = take(c.vocab_size, c.dim)
    rms_att = take(c.n_layers, c.dim)
    wq = take(c.n_layers, c.n_heads * hd, c.dim)
    wk = take(c.n_layers, c.n_kv_heads * hd, c.dim)
    wv = take(c.n_layers, c.n_kv_heads * hd, c.dim)
    wo = take(c.n_layers, c.dim, c.n_heads * hd)
    rms_ffn = take(c.n_layers, c.dim)
    w1 = take(c.n_layers, c.hidden_dim, c.dim)
    w2 = take(c.n_layers, c.dim, c.hidden_dim)
    w3 = take(c.n_layers, c.hidden_dim, c.dim)
    rms_final = take(c.dim)
    take(c.seq_len, hd // 2)  # freq_cis_real: recomputed by the model
    take(c.seq_len, hd // 2)  # freq_cis_imag
    classifier = embed if c.shared_classifier else take(c.vocab_size, c.dim)

    state = {
        "model.embed_tokens.weight": embed,
        "model.norm.weight": rms_final,
        "lm_head.weight": classifier,
    }
    for layer in range(c.n_layers):
        prefix = f"model.layers.{layer}"
        state.update(
            {
                f"{prefix}.input_layernorm.weight": rms_att[layer],
                f"{prefix}.self_attn.q_proj.weight": interleaved_to_halves(wq[layer], c.n_heads),
                f"{prefix}.self_attn.k_proj.weight": interleaved_to_halves(wk[layer], c.n_kv_heads),
                f"{prefix}.self_attn.v_proj.weight": wv[layer],
                f"{prefix}.self_attn.o_proj.weight": wo[layer],
                f"{prefix}.post_attention_layernorm.weight": rms_ffn[layer],
                f"{prefix}.mlp.gate_proj.weight": w1[layer],
                f"{prefix}.mlp.down_proj.weight": w2[layer],
                f"{prefix}.mlp.up_proj.weight": w3[layer],
            }
        )
    return state


def llama2c_tokenizer_size(path: Path) -> int | None:
    """The token count of a llama2.c ``tokenizer.bin`` (e.g. ``tok512.bin``), or None.

    That format, written by llama2.c's ``tokenizer.py --export``, is an int32 maximum token
    length followed, for every token, by a float32 score, an int32 length and the bytes. It
    holds no SentencePiece model, so it cannot be converted; recognising it lets the error
    name the file to pass instead.
    """
    data = Path(path).read_bytes()
    if len(data) < 4:
        return None
    (max_length,) = struct.unpack_from("<i", data)
    offset, tokens = 4, 0
    while offset < len(data):
        if offset + 8 > len(data):
            return None
        (length,) = struct.unpack_from("<i", data, offset + 4)
        if not 0 < length <= max_length:
            return None
        offset += 8 + length
        tokens += 1
    return tokens if offset == len(data) and tokens else None


def check_tokenizer_model(path: Path) -> None:
    """Raise ValueError naming the problem unless ``path`` is a SentencePiece ``.model`` file."""
    import sentencepiece

    tokens = llama2c_tokenizer_size(path)
    if tokens is not None:
        sibling = Path(path).with_suffix(".model")
        hint = f" ({sibling} is beside it)" if sibling.is_file() else ""
        raise ValueError(
            f"{path} is llama2.c's own tokenizer export ({tokens} tokens, the tokenizer.bin "
            "format that run.c reads), not a SentencePiece model: pass the SentencePiece "
            f".model file it was exported from{hint}"
        )
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(Path(path).read_bytes())
    except (RuntimeError, OSError):
        raise ValueError(
            f"{path} is not a SentencePiece .model file (it does not parse as one); pass the "
            "tokenizer.model the checkpoint was trained with"
        ) from None


def convert_tokenizer(tokenizer_model: Path):
    """A Hugging Face tokenizer from a SentencePiece ``.model``, prepending BOS (not saved)."""
    from transformers import LlamaTokenizer

    check_tokenizer_model(tokenizer_model)
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copyfile(tokenizer_model, Path(scratch) / "tokenizer.model")
        return LlamaTokenizer.from_pretrained(
            scratch, add_bos_token=True, add_eos_token=False, legacy=False
        )


def convert(checkpoint: Path, tokenizer_model: Path, out_dir: Path) -> Path:
    """Write a ``LlamaForCausalLM`` directory (safetensors + tokenizer) to ``out_dir``."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from rlhf.files import normalize_permissions

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    config = read_header(checkpoint)
    tokenizer = convert_tokenizer(Path(tokenizer_model))
    if len(tokenizer) != config.vocab_size:
        raise ValueError(
            f"{tokenizer_model}: {len(tokenizer)} tokens, but {checkpoint} expects "
            f"{config.vocab_size}"
        )
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.dim,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.seq_len,
        rms_norm_eps=1e-5,
        tie_word_embeddings=config.shared_classifier,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(hf_config)
    missing, unexpected = model.load_state_dict(load_state_dict(checkpoint, config), strict=False)
    # Rotary inverse frequencies are buffers the model computes itself.
    missing = [name for name in missing if "rotary_emb" not in name]
    if missing or unexpected:
        raise ValueError(
            f"weights do not match the model: missing {missing}, unexpected {unexpected}"
        )
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    # Written only now, once everything is checked: a failed conversion leaves no files.
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    normalize_permissions(out_dir)
    return out_dir
