"""The llama2.c importer, against the real checkpoint in ../shared and a synthetic one."""

from __future__ import annotations

import struct

import pytest
import torch

from rlhf.__main__ import main
from rlhf.nn.llama2c import interleaved_to_halves, read_header
from tests.conftest import GOLDEN_STORY as GOLDEN
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    checkpoint = shared_path("models/llama2c/stories260K.bin")
    tokenizer = shared_path("models/llama2c/tok512.model")
    out = tmp_path_factory.mktemp("stories260K")
    assert main(["import-llama2c", str(checkpoint), str(tokenizer), str(out)]) == 0
    return out


def test_converted_model_reproduces_the_golden_text(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(converted)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    inputs = tokenizer("Once upon a time", return_tensors="pt")
    assert inputs.input_ids[0, 0].item() == tokenizer.bos_token_id  # BOS is prepended
    output = model.generate(**inputs, max_new_tokens=60, do_sample=False)
    assert tokenizer.decode(output[0], skip_special_tokens=True) == GOLDEN


def test_converted_model_matches_the_reference_conversion(converted):
    from transformers import AutoModelForCausalLM

    reference_dir = shared_path("models/stories260K-hf")
    ours = AutoModelForCausalLM.from_pretrained(converted)
    reference = AutoModelForCausalLM.from_pretrained(reference_dir)
    tokens = torch.tensor([[1, 403, 407, 261, 378, 30, 80]])
    with torch.no_grad():
        assert torch.allclose(ours(tokens).logits, reference(tokens).logits, atol=1e-5)


def test_rotary_permutation_pairs_interleaved_rows_into_halves():
    # One head of dim 4: llama2.c rows (q0, q1, q2, q3) rotate pairs (q0,q1), (q2,q3);
    # Hugging Face rotates (row i, row i + 2), so the rows must come out as (q0, q2, q1, q3).
    weight = torch.arange(4.0).unsqueeze(1).repeat(1, 3)  # row r holds r
    permuted = interleaved_to_halves(weight, n_heads=1)
    assert permuted[:, 0].tolist() == [0.0, 2.0, 1.0, 3.0]
    two_heads = interleaved_to_halves(torch.arange(8.0).unsqueeze(1), n_heads=2)
    assert two_heads[:, 0].tolist() == [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]


def test_bad_files_are_reported(tmp_path, capsys):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(struct.pack("<7i", 64, 172, 5, 7, 4, 512, 512))  # 64 % 7 != 0
    with pytest.raises(ValueError, match="implausible"):
        read_header(bad)
    short = tmp_path / "short.bin"
    short.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="too short"):
        read_header(short)
    assert main(["import-llama2c", str(tmp_path / "missing.bin"), str(bad), str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
