"""rlhf.sft: the loss mask, packing, the loss, learning a rule, resume, the job and the command.

Every model is a tiny grouped-query-attention Llama built here, its tokenizer the tiny byte-level
BPE of rlhf.nn.tiny (no chat template: the plain format), unless a test gives it a template.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.__main__ import main
from rlhf.data.chat import format_prompt
from rlhf.data.pairs import DataError
from rlhf.hyperparameters import ConfigError
from rlhf.jobs import InputFile, JobError, RunSpec, read_events
from rlhf.nn.tiny import BUILTIN_CORPUS, build_tiny_llama, build_tokenizer
from rlhf.runner import run_job
from rlhf.sft.config import SFTConfig
from rlhf.sft.data import (
    IGNORE_INDEX,
    SFTExample,
    encode_example,
    load_examples,
    split_examples,
)
from rlhf.sft.losses import causal_lm_loss, masked_token_cross_entropy
from rlhf.sft.packing import PackedCausalLM, collate, pack_rows
from rlhf.sft.training import METADATA_FILE, schedule, train_sft
from tests.conftest import ROOT


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine threads that wait
    for each other at every small operation make a step many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(BUILTIN_CORPUS)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("sft-llama") / "m")


def runs(tokenizer, encoded) -> list[tuple[str, bool]]:
    """The encoded text as runs of consecutive tokens that count / do not count, decoded."""
    found: list[tuple[list[int], bool]] = []
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        counted = label != IGNORE_INDEX
        assert label in (IGNORE_INDEX, token)  # a counted label is the token itself
        if found and found[-1][1] == counted:
            found[-1][0].append(token)
        else:
            found.append(([token], counted))
    return [(tokenizer.decode(ids), counted) for ids, counted in found]


# --- which tokens count ------------------------------------------------------------------------


def test_a_single_turn_counts_the_answer_and_its_eos_token_only(tokenizer):
    encoded = encode_example(tokenizer, SFTExample([user("hi"), assistant("yes")]))
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    assert " ".join(tokens) == "<s> User : Ġ h i Ċ Ċ Assistant : Ġ yes </s>"
    counted = [label != IGNORE_INDEX for label in encoded.labels]
    assert [i for i, c in enumerate(counted) if c] == [10, 11, 12]  # " yes" and </s>
    assert encoded.labels[10:] == encoded.input_ids[10:] and encoded.target_count == 3


def test_a_system_prompt_counts_for_nothing(tokenizer):
    example = SFTExample(
        [system("Be brief."), user("What is the capital of France?"), assistant("Paris.")]
    )
    assert runs(tokenizer, encode_example(tokenizer, example)) == [
        ("<s>System: Be brief.\n\nUser: What is the capital of France?\n\nAssistant:", False),
        (" Paris.</s>", True),
    ]


MULTI_TURN = [
    user("What is the capital of France?"),
    assistant("Paris."),
    user("And of Italy?"),
    assistant("Rome."),
]


def test_every_assistant_turn_of_a_dialogue_counts_by_default(tokenizer):
    encoded = encode_example(tokenizer, SFTExample(MULTI_TURN))
    assert runs(tokenizer, encoded) == [
        ("<s>User: What is the capital of France?\n\nAssistant:", False),
        (" Paris.", True),
        ("\n\nUser: And of Italy?\n\nAssistant:", False),
        (" Rome.</s>", True),
    ]
    with_system = encode_example(tokenizer, SFTExample([system("Be brief."), *MULTI_TURN]))
    assert [text for text, counted in runs(tokenizer, with_system) if counted] == [
        " Paris.",
        " Rome.</s>",
    ]


def test_last_turn_only_zeroes_the_loss_on_every_earlier_turn(tokenizer):
    expected = [
        ("<s>System: Be brief.\n\nUser: What is the capital of France?\n\nAssistant: Paris."
         "\n\nUser: And of Italy?\n\nAssistant:", False),
        (" Rome.</s>", True),
    ]  # fmt: skip
    dialogue = [system("Be brief."), *MULTI_TURN]
    by_record = encode_example(tokenizer, SFTExample(dialogue, train_on="last"))
    by_run = encode_example(tokenizer, SFTExample(dialogue), train_on="last")
    assert runs(tokenizer, by_record) == runs(tokenizer, by_run) == expected
    # The record's own choice wins over the run's.
    assert runs(tokenizer, encode_example(tokenizer, SFTExample(dialogue, "all"), train_on="last"))[
        1
    ] == (" Paris.", True)


CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_with_a_chat_template_the_end_of_turn_token_counts_and_the_template_does_not():
    chat = build_tokenizer(BUILTIN_CORPUS)
    chat.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chat.eos_token = "<|im_end|>"
    chat.chat_template = CHATML
    encoded = encode_example(chat, SFTExample(MULTI_TURN))
    assert runs(chat, encoded) == [
        ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is the capital "
         "of France?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Paris.<|im_end|>", True),
        ("\n<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Rome.<|im_end|>", True),
        ("\n", False),
    ]  # fmt: skip
    # The template writes its own BOS (none here): the tokenizer adds nothing.
    assert encoded.input_ids[0] == chat.convert_tokens_to_ids("<|im_start|>")


def test_a_long_conversation_keeps_its_first_max_length_tokens(tokenizer):
    full = encode_example(tokenizer, SFTExample([user("hi"), assistant("yes")]))
    cut = encode_example(tokenizer, SFTExample([user("hi"), assistant("yes")]), max_length=11)
    assert cut.input_ids == full.input_ids[:11] and cut.labels == full.labels[:11]
    assert cut.target_count == 1  # " " of " yes"; "yes" and </s> are cut


# --- the loss ----------------------------------------------------------------------------------


def test_the_loss_is_the_mean_cross_entropy_of_the_counted_tokens_only():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 3.0, -1.0]])
    targets = torch.tensor([0, IGNORE_INDEX, 2])
    # −log softmax by hand: e² / (e² + 2) for the first, e⁻¹ / (e + e³ + e⁻¹) for the third.
    first = -math.log(math.exp(2) / (math.exp(2) + 2))
    third = -math.log(math.exp(-1) / (math.exp(1) + math.exp(3) + math.exp(-1)))
    none = masked_token_cross_entropy(logits, targets, reduction="none")
    assert none.tolist() == pytest.approx([first, 0.0, third], abs=1e-6)
    assert masked_token_cross_entropy(logits, targets, reduction="sum").item() == pytest.approx(
        first + third, abs=1e-6
    )
    assert masked_token_cross_entropy(logits, targets).item() == pytest.approx(
        (first + third) / 2, abs=1e-6
    )
    # A sequence's labels are shifted: logits at t predict labels[t + 1]; labels[0] never counts.
    labels = torch.tensor([7, 0, IGNORE_INDEX, 2])
    assert causal_lm_loss(torch.cat([logits, logits[:1]]), labels).item() == pytest.approx(
        (first + third) / 2, abs=1e-6
    )


def test_packed_rows_give_the_loss_and_gradients_of_each_example_on_its_own(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    examples = [
        SFTExample([user("hi"), assistant("yes")]),
        SFTExample([system("Be brief."), *MULTI_TURN]),
        SFTExample(MULTI_TURN, train_on="last"),
        SFTExample([user("Tell me a story about a little girl."), assistant("Once upon a time.")]),
    ]
    encoded = [encode_example(tokenizer, example) for example in examples]
    counted = sum(example.target_count for example in encoded)

    model.zero_grad()
    packed = PackedCausalLM(model)(**collate(encoded).inputs)
    assert packed.shape == (counted,)
    (packed.sum() / counted).backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    sums = []
    for example in encoded:
        logits = model(input_ids=torch.tensor([example.input_ids])).logits[0]
        sums.append(causal_lm_loss(logits, torch.tensor(example.labels), reduction="sum"))
    unpacked = sum(sums) / counted
    unpacked.backward()

    assert (packed.sum() / counted).item() == pytest.approx(unpacked.item(), abs=1e-5)
    bounds = torch.cumsum(torch.tensor([0] + [e.target_count for e in encoded]), 0).tolist()
    for number, loss_sum in enumerate(sums):  # each example's own share, too
        mine = packed[bounds[number] : bounds[number + 1]].sum()
        assert mine.item() == pytest.approx(loss_sum.item(), abs=1e-5)
    for packed_grad, parameter in zip(packed_grads, model.parameters(), strict=True):
        torch.testing.assert_close(packed_grad, parameter.grad, atol=1e-5, rtol=1e-4)


# --- rows and batches ---------------------------------------------------------------------------


def test_rows_are_filled_first_fit_and_never_overflow():
    assert pack_rows([5, 3, 4, 2, 6], range(5), 8) == [[0, 1], [2, 3], [4]]
    assert pack_rows([5, 3, 4, 2, 6], [4, 3, 2, 1, 0], 8) == [[4, 3], [2, 1], [0]]
    with pytest.raises(ValueError, match="more than a row's 8"):
        pack_rows([9], [0], 8)


def test_each_epoch_takes_every_example_once_and_batches_never_span_epochs():
    lengths = [3, 5, 2, 7, 4, 4, 6, 1, 8, 2]
    rows, batches = schedule(lengths, 10, 2, epochs=2, seed=3)
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    taken = []
    for batch in batches:
        before = len(taken)
        taken += [i for row in batch for i in rows[row]]
        assert before // 10 == (len(taken) - 1) // 10  # within one epoch
    assert len(taken) == 20
    assert sorted(taken[:10]) == sorted(taken[10:]) == list(range(10))
    assert taken[:10] != taken[10:]  # a new order each epoch
    _, capped = schedule(lengths, 10, 2, epochs=1, seed=3, max_steps=20)
    assert len(capped) == 20  # as many epochs as max_steps needs


# --- data ---------------------------------------------------------------------------------------


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_every_format_reads_as_conversations_answered_by_the_assistant(tmp_path):
    messages = load_examples(
        write_jsonl(
            tmp_path / "m.jsonl",
            [{"messages": MULTI_TURN}, {"messages": MULTI_TURN, "train_on": "last"}],
        )
    )
    assert messages.format == "messages"
    assert [e.train_on for e in messages.examples] == [None, "last"]
    assert messages.examples[0].messages == MULTI_TURN
    assert messages.examples[1].source == f"{tmp_path / 'm.jsonl'}:2"

    completion = load_examples(
        write_jsonl(
            tmp_path / "pc.jsonl",
            [
                {"prompt": "Hi?", "completion": "Hello."},
                {"prompt": [user("Hi?")], "completion": [assistant("Hey.")]},
            ],
        )
    )
    assert completion.format == "prompt-completion"
    assert [e.messages for e in completion.examples] == [
        [user("Hi?"), assistant("Hello.")],
        [user("Hi?"), assistant("Hey.")],
    ]
    assert {e.train_on for e in completion.examples} == {"last"}

    pool_record = {"prompt": MULTI_TURN[:3], "response": "Rome.", "iteration": 2, "scores": {}}
    pool = load_examples(write_jsonl(tmp_path / "pool.jsonl", [pool_record]))
    assert pool.format == "pool" and pool.examples[0].messages == MULTI_TURN
    assert pool.examples[0].train_on == "last"  # the prompt's assistant turn is context

    export = [
        {"prompt": [user(f"Q{i}?")], "chosen": [assistant(f"A{i}.")], "rejected": "No.",
         "batch_kind": "safety", "chosen_safe": i != 2, "comparison_id": i}
        for i in range(3)
    ]  # fmt: skip
    export.append(export[0] | {"comparison_id": 9})  # another annotation, the same answer
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in export).encode()))
    pairs = load_examples(path)
    assert pairs.format == "pairs"
    assert [e.messages for e in pairs.examples] == [
        [user("Q0?"), assistant("A0.")],
        [user("Q1?"), assistant("A1.")],
    ]
    assert pairs.left_out == {"chosen replies labelled unsafe": 1, "repeats": 1}
    assert "left out 1 chosen replies labelled unsafe; left out 1 repeats" in pairs.summary()


@pytest.mark.parametrize(
    ("lines", "line", "field", "says"),
    [
        ([{"messages": [user("hi")]}], 1, "messages", "must end with an assistant turn"),
        ([{"messages": [assistant("hi")]}], 1, "messages[0]", "must follow a user turn"),
        ([{"messages": [user("hi"), assistant(" ")]}], 1, "messages[1]", "is empty"),
        ([{"messages": [user("a"), {"role": "bot", "content": "b"}]}], 1, "messages[1]", "role"),
        ([{"messages": MULTI_TURN}, {"text": "x"}], 2, "messages", "is missing"),
        ([{"messages": MULTI_TURN, "train_on": "first"}], 1, "train_on", "must be one of"),
        ([{"prompt": "hi", "response": 3}], 1, "response", "must be a string"),
        ([{"prompt": [assistant("x")], "response": "y"}], 1, "prompt", "end with a user turn"),
        ([{"prompt": "hi", "completion": ""}], 1, "completion", "is empty"),
        ([{"question": "hi"}], 1, None, "none of the SFT formats"),
    ],
)
def test_a_bad_record_is_refused_naming_file_line_and_field(tmp_path, lines, line, field, says):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=says) as error:
        load_examples(path)
    assert (error.value.filename, error.value.line, error.value.field) == (str(path), line, field)


def test_the_split_is_by_the_first_user_turn():
    examples = [
        SFTExample([user(f"Q{i}"), assistant("a"), user(f"then {j}"), assistant("b")])
        for i in range(40)
        for j in range(3)
    ]
    train, held_out = split_examples(examples, 0.3, seed=0)
    assert held_out and train
    held = {e.messages[0]["content"] for e in held_out}
    assert held.isdisjoint(e.messages[0]["content"] for e in train)
    assert all(sum(e.messages[0]["content"] == q for e in held_out) == 3 for q in held)


# --- training -----------------------------------------------------------------------------------

SOUNDS = {"dog": "woof", "cat": "meow", "cow": "moo", "duck": "quack",
          "sheep": "baa", "owl": "hoot", "bee": "buzz", "frog": "ribbit"}  # fmt: skip
NAMES = ["Lily", "Tom", "Ann", "Ben", "Sue", "Max", "Eve", "Sam", "Kim", "Joe", "Amy", "Dan"]


def sound_examples() -> list[SFTExample]:
    """The rule: whoever asks, the answer is the sound of the animal named."""
    return [
        SFTExample([user(f"{name} asks: what does the {animal} say?"), assistant(sound)])
        for name in NAMES
        for animal, sound in SOUNDS.items()
    ]


def tiny_config(base: Path, **overrides) -> SFTConfig:
    values = dict(
        base_model=str(base),
        cpu=True,
        learning_rate=5e-3,
        micro_batch_size=2,
        max_length=96,
        max_steps=6,
        min_warmup_steps=1,
    )
    return SFTConfig(**(values | overrides))


def greedy_rule_rate(model_dir: Path, examples: list[SFTExample]) -> float:
    """The share of held-out prompts whose greedy answer is exactly the rule's."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    right = 0
    for example in examples:
        prompt = tokenizer(format_prompt(tokenizer, example.messages[:-1]), return_tensors="pt")
        output = model.generate(
            **prompt,
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        answer = tokenizer.decode(
            output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True
        )
        right += answer.strip() == example.messages[-1]["content"]
    return right / len(examples)


def test_sft_learns_a_rule_and_answers_held_out_prompts_by_it(llama_dir, tmp_path):
    train, held_out = split_examples(sound_examples(), 0.25, seed=0)
    assert len(held_out) >= 15
    base_rate = greedy_rule_rate(llama_dir, held_out)
    result = train_sft(tiny_config(llama_dir, max_steps=150), train, held_out, tmp_path / "sft")
    before, after = result.metrics["before"], result.metrics["after"]
    rate = greedy_rule_rate(tmp_path / "sft", held_out)
    print(f"held-out loss {before['loss']:.3f} -> {after['loss']:.3f}; rule {base_rate} -> {rate}")
    assert after["loss"] < before["loss"] / 10  # 6.2 nats a token (≈ uniform) down to < 0.62
    assert after["perplexity"] == pytest.approx(math.exp(after["loss"]))
    assert base_rate <= 0.1 and rate >= 0.8


def test_the_step_loss_is_the_mean_over_the_global_batch_however_it_is_split(llama_dir, tmp_path):
    examples = sound_examples()[:24]
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    one = train_sft(tiny_config(llama_dir, max_steps=1), examples, [], tmp_path / "one")
    split = train_sft(
        tiny_config(llama_dir, max_steps=1, micro_batch_size=1, gradient_accumulation_steps=2),
        examples,
        [],
        tmp_path / "split",
    )
    encoded = [encode_example(tokenizer, example, max_length=96) for example in examples]
    rows, batches = schedule([len(e) for e in encoded], 96, 2, epochs=1, seed=0)
    first = [encoded[i] for row in batches[0] for i in rows[row]]
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    with torch.no_grad():
        total = sum(
            causal_lm_loss(
                model(input_ids=torch.tensor([e.input_ids])).logits[0],
                torch.tensor(e.labels),
                reduction="sum",
            )
            for e in first
        )
    expected = total.item() / sum(e.target_count for e in first)
    assert one.history[0]["loss"] == pytest.approx(expected, abs=1e-5)
    assert split.history[0]["loss"] == pytest.approx(expected, abs=1e-5)
    for name, tensor in load_file(tmp_path / "one" / "model.safetensors").items():
        torch.testing.assert_close(
            tensor, load_file(tmp_path / "split" / "model.safetensors")[name], atol=1e-5, rtol=0
        )


class Stop(Exception):
    pass


def test_a_stopped_run_resumes_from_its_checkpoint_to_the_same_losses(llama_dir, tmp_path):
    train, held_out = split_examples(sound_examples(), 0.25, seed=0)
    config = tiny_config(llama_dir, max_steps=6, checkpoint_every=1, min_warmup_steps=2)
    whole = train_sft(config, train, held_out, tmp_path / "whole")

    def stop_at_step_4(event):
        if event["event"] == "step" and event["step"] == 4:
            raise Stop

    with pytest.raises(Stop):
        train_sft(config, train, held_out, tmp_path / "cut", progress=stop_at_step_4)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == [
        "step-2",
        "step-3",
    ]
    events = []
    resumed = train_sft(config, train, held_out, tmp_path / "cut", progress=events.append)
    assert any("resumed from" in e.get("message", "") and "step-3" in e["message"] for e in events)
    assert [e["step"] for e in events if e["event"] == "step"] == [4, 5, 6]
    assert len(resumed.history) == len(whole.history) == 6
    for mine, theirs in zip(resumed.history, whole.history, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
        assert mine["learning_rate"] == pytest.approx(theirs["learning_rate"], rel=1e-12)
    assert resumed.metrics["before"] == whole.metrics["before"]
    assert resumed.metrics["after"]["loss"] == pytest.approx(
        whole.metrics["after"]["loss"], abs=1e-6
    )


# --- the config, the job and the command --------------------------------------------------------


def test_the_defaults_are_the_papers_and_bad_settings_are_refused():
    config = SFTConfig()
    assert (config.learning_rate, config.weight_decay, config.epochs) == (2e-5, 0.1, 2)
    assert (config.min_lr_ratio, config.warmup_ratio, config.adam_betas) == (0.1, 0.03, (0.9, 0.95))
    with pytest.raises(ConfigError, match="train_on"):
        SFTConfig(train_on="first")
    with pytest.raises(ConfigError, match="not a setting"):
        SFTConfig.from_dict({"lr": 1e-5})


def sft_spec(tmp_path: Path, base: Path, config=None, **fields) -> RunSpec:
    data = write_jsonl(
        tmp_path / "data.jsonl", [{"messages": e.messages} for e in sound_examples()[:40]]
    )
    values = {
        "base_model": str(base),
        "cpu": True,
        "max_steps": 3,
        "max_length": 64,
        "micro_batch_size": 2,
        "eval_fraction": 0.25,
    }
    return RunSpec(
        stage="sft",
        output_dir=tmp_path / "run",
        config=values | (config or {}),
        inputs={"data": [InputFile.of(data)]},
        **fields,
    )


def test_an_sft_job_writes_events_metrics_and_a_model_with_its_metadata(llama_dir, tmp_path):
    spec = sft_spec(tmp_path, llama_dir)
    metrics = run_job(spec)
    events = read_events(spec.output_dir / "events.jsonl")
    types = [event["type"] for event in events]
    assert types[0] == "log" and "data" in types and types[-1] == "metrics"
    data = next(event for event in events if event["type"] == "data")
    assert data["train"] + data["held_out"] == 40 and data["held_out"] > 0
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3]
    assert [e["fraction"] for e in events if e["type"] == "progress"] == pytest.approx(
        [1 / 3, 2 / 3, 1]
    )
    evaluations = [e for e in events if e["type"] == "evaluation"]
    assert [e["step"] for e in evaluations] == [0, 3]
    assert metrics["metrics"]["before"] == evaluations[0]["metrics"]
    assert metrics["metrics"]["after"] == evaluations[1]["metrics"]
    assert metrics == json.loads((spec.output_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["summary"].startswith("trained 3 steps on")
    model_dir = spec.output_dir / "model"
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    assert metadata["config"]["base_model"] == str(llama_dir)
    assert metadata["metrics"] == metrics["metrics"]
    assert set(metadata["data"]["sha256"]) == {"train", "eval"}
    assert len(metadata["history"]) == 3
    reloaded = AutoModelForCausalLM.from_pretrained(model_dir)
    assert reloaded.config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(model_dir).eos_token == "</s>"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"options": {"format": "messages"}}, "options.format"),
        ({"inputs": {}}, "inputs.data"),
        ({"config": {"base_model": ""}}, "config.base_model"),
        ({"config": {"eval_fraction": 1.0}}, "config.eval_fraction"),
    ],
)
def test_a_bad_sft_spec_is_refused_before_anything_is_written(llama_dir, tmp_path, changes, field):
    spec = sft_spec(tmp_path, llama_dir, options=changes.get("options", {}))
    if "inputs" in changes:
        spec.inputs = changes["inputs"]
    spec.config |= changes.get("config", {})
    with pytest.raises(JobError) as error:
        run_job(spec)
    assert error.value.field == field
    assert not spec.output_dir.exists()


def test_the_sft_command_runs_the_same_job_and_reports_the_held_out_loss(
    llama_dir, tmp_path, capsys
):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": e.messages} for e in sound_examples()])
    out = tmp_path / "out"
    args = ["sft", "--base", str(llama_dir), "--data", str(data), "--out", str(out), "--cpu"]
    flags = ["--max-steps", "2", "--max-length", "64", "--lr", "1e-3", "--train-on", "last"]
    assert main(args + flags) == 0
    printed = capsys.readouterr()
    assert "trained 2 steps on" in printed.out and f"saved to {out / 'model'}" in printed.out
    assert "before: held-out loss" in printed.out and "after: held-out loss" in printed.out
    assert "step 2/2: loss" in printed.err and "conversations/s" in printed.err
    spec = RunSpec.load(out / "spec.json")
    assert spec.stage == "sft" and spec.inputs["data"][0].path == data
    assert spec.config["max_steps"] == 2 and spec.config["train_on"] == "last"
    assert (out / "model" / "model.safetensors").is_file()

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [user("hi")]}])
    assert (
        main(["sft", "--base", str(llama_dir), "--data", str(bad), "--out", str(tmp_path / "x")])
        == 2
    )
    assert f"{bad}, line 1, field 'messages'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    shown = capsys.readouterr().out
    assert "--train-on {all,last}" in shown and "--batch-size" in shown
    assert not any(markup in shown for markup in ("``", ":func:", ":class:", ":mod:"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_train_the_same_weights_as_one(llama_dir, tmp_path):
    """``accelerate launch --num_processes 2`` on CPUs (gloo), 2 rows × accumulation 1 per
    process, against one process with accumulation 2: the same global batches of 4 rows, hence
    the same losses and weights (up to float32 summation order)."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": e.messages} for e in sound_examples()])
    common = ["sft", "--data", str(data), "--base", str(llama_dir), "--max-steps", "4"]
    common += ["--lr", "1e-3", "--max-length", "64", "--batch-size", "2", "--no-progress", "--cpu"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "rlhf"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def run(command: list[str]) -> subprocess.CompletedProcess:
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done

    two = run(launch + common + ["--out", str(tmp_path / "two"), "--gradient-accumulation", "1"])
    one = run(
        [sys.executable, "-m", "rlhf", *common]
        + ["--out", str(tmp_path / "one"), "--gradient-accumulation", "2"]
    )
    assert "on 2 processes (gloo)" in two.stderr and "on 1 process" in one.stderr
    assert two.stdout.count("trained 4 steps") == 1  # only the main process reports
    histories = [
        json.loads((tmp_path / name / "metrics.json").read_text())["history"]
        for name in ("one", "two")
    ]
    assert [h["loss"] for h in histories[1]] == pytest.approx(
        [h["loss"] for h in histories[0]], abs=1e-5
    )
    one_weights = load_file(tmp_path / "one" / "model" / "model.safetensors")
    two_weights = load_file(tmp_path / "two" / "model" / "model.safetensors")
    base = load_file(llama_dir / "model.safetensors")
    assert max((one_weights[k] - base[k]).abs().max() for k in base) > 1e-3  # it trained
    for name, tensor in one_weights.items():
        torch.testing.assert_close(two_weights[name], tensor, atol=1e-5, rtol=0)
