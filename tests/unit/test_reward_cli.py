"""``python -m rlhf``: what the commands use, say and write, as a user sees it.

The training runs use a tiny Llama built here; a run is a subprocess, so that what reaches its
stderr (a file or a pipe, not a terminal) is exactly what a user redirecting it would get.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.nn.tiny import build_tiny_llama
from rlhf.reward.cli import TrainingProgress
from rlhf.reward.training import TrainingResult
from tests.conftest import ROOT

SPHINX_MARKUP = ("``", ":func:", ":class:", ":data:", ":mod:")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("cli-llama") / "m")


def export_line(i: int, kind: str) -> str:
    """A line of the platform's training export (trl format, with its kind)."""
    safety = kind == "safety"
    return json.dumps(
        {
            "prompt": [{"role": "user", "content": f"Question {i} ({kind})?"}],
            "chosen": [{"role": "assistant", "content": f"A kind and useful answer {i}."}],
            "rejected": [{"role": "assistant", "content": f"No {i}."}],
            "margin": 2 / 3,
            "batch_kind": kind,
            "strength": "better",
            "safety_bin": None,
            "chosen_safe": True if safety else None,
            "rejected_safe": False if safety else None,
            "comparison_id": i,
            "batch": f"{kind} batch",
        }
    )


def write_export(path: Path, helpfulness: int, safety: int) -> Path:
    lines = [export_line(i, "helpfulness") for i in range(helpfulness)]
    lines += [export_line(1000 + i, "safety") for i in range(safety)]
    path.write_text("\n".join(lines) + "\n")
    return path


def rlhf(*args: str) -> subprocess.CompletedProcess:
    """``python -m rlhf ARGS`` under the usual umask (022), stdout and stderr captured (pipes,
    not a terminal)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        ["sh", "-c", 'umask 022 && exec "$0" "$@"', sys.executable, "-m", "rlhf", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def train_args(data: Path, base: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train-reward",
        "--data",
        str(data),
        "--base",
        str(base),
        "--out",
        str(out),
        "--cpu",
        "--max-length",
        "64",
        "--batch-size",
        "4",
        *extra,
    ]


@pytest.mark.slow
def test_train_reward_on_a_mixed_export_trains_the_requested_kind_and_says_so(llama_dir, tmp_path):
    """The platform's default export holds both kinds: --kind helpfulness trains on the
    helpfulness pairs, says what it left out, counts what it trained, and writes a file-friendly
    log (no bar redraws, no colour codes, no transformers report) and world-readable files."""
    data = write_export(tmp_path / "export.jsonl", helpfulness=30, safety=12)
    out = tmp_path / "rm"
    done = rlhf(
        *train_args(data, llama_dir, out, "--kind", "helpfulness", "--max-steps", "2"),
        "--checkpoint-every",
        "1",
    )
    assert done.returncode == 0, done.stderr
    log = done.stderr
    assert f"data: {data}: 30 helpfulness and 12 safety pairs" in log
    assert "training the helpfulness model on the 30 helpfulness pairs; 12 pairs" in log
    metadata = json.loads((out / "model" / "pairwise_reward.json").read_text())
    train_pairs = metadata["data"]["train_pairs"]
    assert train_pairs + metadata["data"]["eval_pairs"] == 30  # no safety pair, trained or held
    # Two steps of 4 pairs: 8 pairs trained, whatever the size of the training set.
    assert (
        f"trained 2 steps on 8 pairs (8 of the {train_pairs} training pairs; --max-steps "
        "stopped it)" in done.stdout
    )
    assert "step 2/2: loss " in log and "evaluating on " in log
    for noise in ("\r", "\x1b[", "LOAD REPORT", "Loading weights", "Writing model shards"):
        assert noise not in log, noise
    checkpoint = out / "model" / "checkpoints" / "step-2"
    for written in (out / "model" / "model.safetensors", checkpoint / "model.safetensors"):
        assert written.stat().st_mode & 0o777 == 0o644, written


def test_train_reward_without_pairs_of_the_kind_names_what_the_files_hold(
    llama_dir, tmp_path, capsys
):
    from rlhf.__main__ import main

    data = write_export(tmp_path / "safety-only.jsonl", helpfulness=0, safety=5)
    assert main(train_args(data, llama_dir, tmp_path / "rm", "--kind", "helpfulness")) == 2
    error = capsys.readouterr().err
    assert f"error: no helpfulness pairs in {data} (they hold 5 safety pairs)" in error
    assert "--recipe paper" in error
    assert not (tmp_path / "rm").exists()


def test_fsdp_on_cpus_is_refused_with_what_to_launch_instead(
    llama_dir, tmp_path, capsys, monkeypatch
):
    from rlhf.__main__ import main

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as `accelerate launch --use_fsdp` sets
    data = write_export(tmp_path / "export.jsonl", helpfulness=5, safety=0)
    assert main([*train_args(data, llama_dir, tmp_path / "rm", "--kind", "helpfulness")]) == 2
    error = capsys.readouterr().err
    assert "error: accelerate launch --use_fsdp needs GPUs" in error and "--multi_gpu" in error


def test_the_paper_recipe_mixes_the_other_kind_in_and_reports_the_mix(llama_dir, tmp_path, capsys):
    from rlhf.__main__ import main

    data = write_export(tmp_path / "export.jsonl", helpfulness=20, safety=20)
    args = train_args(data, llama_dir, tmp_path / "rm", "--kind", "helpfulness")
    assert main([*args, "--recipe", "paper", "--max-steps", "1", "--eval-fraction", "0"]) == 0
    # All helpfulness pairs, and as many drawn from the safety ones (50:50).
    assert "recipe paper (helpfulness): 40 training pairs: 20 helpfulness, 20 safety" in (
        capsys.readouterr().err
    )


def test_help_texts_are_plain_text(capsys):
    from rlhf.__main__ import main

    for command in ([], ["train-reward"], ["eval-reward"], ["import-llama2c"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        shown = capsys.readouterr().out
        assert shown.startswith("usage: python -m rlhf")
        for markup in SPHINX_MARKUP:
            assert markup not in shown, (command, markup)


def llama2c_tokenizer_bin(path: Path, tokens: list[bytes]) -> Path:
    """llama2.c's tokenizer export: max token length, then (score, length, bytes) per token."""
    blob = struct.pack("<i", max(map(len, tokens)))
    for index, token in enumerate(tokens):
        blob += struct.pack("<fi", -float(index), len(token)) + token
    path.write_bytes(blob)
    return path


def test_import_llama2c_names_a_tokenizer_bin_and_what_to_pass_instead(tmp_path, capsys):
    from rlhf.__main__ import main

    checkpoint = tmp_path / "model.bin"
    checkpoint.write_bytes(struct.pack("<7i", 8, 16, 1, 2, 2, 4, 8) + bytes(4 * 500))
    tokenizer = llama2c_tokenizer_bin(tmp_path / "tok4.bin", [b"<unk>", b"<s>", b"</s>", b"a"])
    (tmp_path / "tok4.model").write_bytes(b"")  # the file it was exported from, beside it
    out = tmp_path / "hf"
    assert main(["import-llama2c", str(checkpoint), str(tokenizer), str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{tokenizer} is llama2.c's own tokenizer export (4 tokens" in error
    assert "pass the SentencePiece .model file it was exported from" in error
    assert f"({tmp_path / 'tok4.model'} is beside it)" in error
    assert "tiktoken" not in error
    assert not out.exists()

    other = tmp_path / "notes.txt"
    other.write_text("not a tokenizer")
    assert main(["import-llama2c", str(checkpoint), str(other), str(out)]) == 2
    assert f"{other} is not a SentencePiece .model file" in capsys.readouterr().err
    assert not out.exists()


def result(steps: int, train_pairs: int, seen: int, distinct: int) -> TrainingResult:
    return TrainingResult(
        out_dir=Path("rm"),
        metrics={},
        steps=steps,
        train_pairs=train_pairs,
        pairs_trained=seen,
        distinct_pairs_trained=distinct,
    )


def test_the_final_report_counts_the_pairs_the_steps_took():
    assert result(10, 1881, 80, 80).summary("--max-steps") == (
        "trained 10 steps on 80 pairs (80 of the 1,881 training pairs; --max-steps stopped it)"
    )
    assert result(236, 1881, 1881, 1881).summary() == (
        "trained 236 steps on 1,881 pairs (all 1,881 training pairs, 1 epoch)"
    )
    assert result(472, 1881, 3762, 1881).summary() == (
        "trained 472 steps on 3,762 pairs (all 1,881 training pairs, 2 epochs)"
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_bar_follows_the_steps_and_evaluation_gets_its_own():
    screen = Terminal()
    progress = TrainingProgress(enabled=True, stream=screen)
    step = {"loss": 0.7, "learning_rate": 1e-5, "pairs_per_second": 10.0, "total_steps": 3}
    progress({"type": "log", "message": "loading the backbone"})
    for number in (1, 2):
        progress({"type": "step", "step": number, **step})
    first_bar = progress.bar
    progress({"type": "log", "message": "checkpoint saved at step 2"})
    progress({"type": "step", "step": 3, **step})
    assert first_bar is not None and progress.bar is None  # closed at the last step
    progress.eval_progress(16, 20)
    assert progress.eval_bar is not None
    progress.eval_progress(20, 20)
    assert progress.eval_bar is None  # removed once done
    progress.close()
    shown = screen.getvalue()
    assert "loading the backbone" in shown and "checkpoint saved at step 2" in shown
    assert "3/3" in shown and "evaluating" in shown


def test_into_a_file_a_line_per_tenth_of_the_run_and_no_bar():
    log = io.StringIO()
    progress = TrainingProgress(enabled=True, stream=log)
    for number in range(1, 101):
        progress(
            {
                "type": "step",
                "step": number,
                "total_steps": 100,
                "loss": 0.5,
                "learning_rate": 1e-5,
                "pairs_per_second": 8.0,
            }
        )
    progress.eval_progress(10, 10)
    progress.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("step 100/100: loss 0.5000")
    assert "\r" not in log.getvalue()
