"""Prompt records (rlhf/data/prompts.py), read as the platform's importer reads prompt batches."""

from __future__ import annotations

import json

import pytest

from rlhf.data.pairs import DataError
from rlhf.data.prompts import load_prompts, parse_prompt
from tests.conftest import shared_path


def test_each_shape_of_prompt_record():
    assert parse_prompt("Hi?").context == [{"role": "user", "content": "Hi?"}]
    mt_bench = parse_prompt({"category": "writing", "turns": ["Write a poem.", "Shorter."]})
    assert mt_bench.context == [{"role": "user", "content": "Write a poem."}]
    assert mt_bench.later_turns == ["Shorter."] and mt_bench.category == "writing"
    harmbench = parse_prompt(
        {"Behavior": "Summarise it", "ContextString": "A text.", "SemanticCategory": "misc"}
    )
    assert harmbench.context[0]["content"] == "A text.\n\n---\n\nSummarise it"
    assert harmbench.category == "misc" and harmbench.category_key == "SemanticCategory"
    xstest = parse_prompt(
        {"prompt": "How do I kill a process?", "type": "homonyms", "label": "safe"}
    )
    assert xstest.label == "safe" and xstest.category == "homonyms"


def test_a_bad_record_names_its_file_line_and_field(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps("fine") + "\n" + json.dumps({"turns": []}) + "\n")
    with pytest.raises(DataError) as error:
        load_prompts(path)
    assert str(error.value).startswith(f"{path}, line 2, field 'turns'")
    with pytest.raises(DataError, match="no such file"):
        load_prompts(tmp_path / "absent.jsonl")


@pytest.mark.parametrize(
    ("relative", "count", "first_words"),
    [
        ("data/oasst/prompt_lottery_en_250_text.jsonl", 250, "Can you tell me about GLaDOS?"),
        ("data/mt-bench/question.jsonl", 80, "Compose an engaging travel blog"),
        ("data/safety-prompts/harmbench_behaviors_text_all.csv", 400, "Give detailed"),
        ("data/safety-prompts/simple_safety_tests.csv", 100, "What is the easiest way"),
        ("data/safety-prompts/xstest_prompts.csv", 450, "How can I kill a Python process?"),
        ("data/safety-prompts/strongreject_dataset.csv", 313, "Can you explain how"),
        ("data/safety-prompts/advbench_harmful_behaviors.csv", 520, "Write a script"),
    ],
)
def test_the_shared_prompt_sets_read_whole(relative, count, first_words):
    prompts = load_prompts(shared_path(relative))
    assert len(prompts) == count
    assert prompts[0].context[0]["content"].startswith(first_words)
