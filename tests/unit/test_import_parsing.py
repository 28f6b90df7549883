"""Parsing of import files: format detection, each format's rules, and error reporting.

``read_file`` only reads and checks; it takes an unsaved ``Batch`` and touches no database.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import zlib

import pytest

from annotation_app.models import Batch
from annotation_app.services.imports import (
    MAX_CONTEXT_TURNS,
    MAX_JSON_DEPTH,
    ImportFailed,
    RowError,
    detect_format,
    read_file,
)
from rlhf.data.messages import FieldError
from tests.messages import assistant, hh, user

HELPFULNESS, SAFETY = Batch.Kind.HELPFULNESS, Batch.Kind.SAFETY


def jsonl(*records) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def csv_bytes(header: list[str], *rows: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def parse(data: bytes, filename: str = "data.jsonl", kind: str = HELPFULNESS, file_format=None):
    """(format, parsed comparisons, records read) of ``data``."""
    read = read_file(io.BytesIO(data), filename, Batch(kind=kind), file_format)
    return read.format, read.comparisons, read.records


def parse_one(record, kind: str = HELPFULNESS, file_format=None):
    detected, parsed, records = parse(jsonl(record), kind=kind, file_format=file_format)
    assert records == 1 and len(parsed) == 1
    return detected, parsed[0]


def failure(data: bytes, filename: str = "data.jsonl", kind: str = HELPFULNESS, file_format=None):
    with pytest.raises(ImportFailed) as caught:
        parse(data, filename, kind, file_format)
    return caught.value


def where(error: RowError) -> tuple[str, int, str | None]:
    return error.filename, error.line, error.field


def texts(item) -> list[str]:
    return [response.text for response in item.responses]


CANONICAL = {
    "conversation": [user("What is 2 + 2?")],
    "responses": [{"text": "4", "model_version": "m-a"}, {"text": "5", "model_version": "m-b"}],
}


# --- detection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("Why is the sky blue?", "prompts"),
        ({"prompt": "Why is the sky blue?"}, "prompts"),
        ({"turns": ["Plan a trip.", "Make it shorter."]}, "prompts"),
        ({"messages": [user("Hi")]}, "prompts"),
        ({"Behavior": "Do harm", "SemanticCategory": "harmful"}, "prompts"),
        (CANONICAL, "canonical"),
        ({"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}, "trl"),
        ({"chosen": [user("Hi"), assistant("A")], "rejected": [user("Hi"), assistant("B")]}, "trl"),
        ({"chosen": hh("Hi", "Hello"), "rejected": hh("Hi", "Go away")}, "hh-rlhf"),
        # A TRL record whose completion happens to quote HH markup is still TRL: it has a prompt.
        ({"prompt": "Hi", "chosen": hh("x", "y"), "rejected": "z"}, "trl"),
    ],
)
def test_the_format_is_detected_from_the_first_record(record, expected):
    assert detect_format(record) == expected
    detected, _ = parse_one(record)
    assert detected == expected


@pytest.mark.parametrize("record", [42, [1, 2], None])
def test_records_that_are_neither_objects_nor_strings_are_rejected(record):
    with pytest.raises(FieldError):
        detect_format(record)
    error = failure(jsonl(record, "A good prompt"), "odd.jsonl")
    assert [where(e) for e in error.errors] == [("odd.jsonl", 1, None)]
    assert "JSON object or string" in error.errors[0].message


def test_the_first_record_fixes_the_format_for_the_whole_file():
    trl = {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}
    error = failure(jsonl(CANONICAL, CANONICAL, trl), "bad.jsonl")
    assert [where(e) for e in error.errors] == [("bad.jsonl", 3, "responses")]
    assert "bad.jsonl, line 3, field 'responses'" in str(error)


def test_an_explicit_format_overrides_detection():
    record = {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}
    detected, item = parse_one(record, file_format="prompts")
    assert detected == "prompts"
    assert item.responses is None
    assert item.context == [user("Hi")]


def test_an_unknown_explicit_format_is_rejected():
    error = failure(jsonl(CANONICAL), "data.jsonl", file_format="yaml")
    assert [where(e) for e in error.errors] == [("data.jsonl", 0, "format")]
    assert "yaml" in error.errors[0].message


# --- HH-RLHF --------------------------------------------------------------------------------


def test_hh_single_turn_splits_into_prompt_and_two_replies():
    _, item = parse_one({"chosen": hh("Hi there", "Hello!"), "rejected": hh("Hi there", "Go.")})
    assert item.context == [user("Hi there")]
    assert texts(item) == ["Hello!", "Go."]
    assert item.preferred_index == 0


def test_hh_multi_turn_context_ends_at_the_last_shared_assistant_marker():
    shared = ("How do I bake bread?", "Flour, water, yeast.", "How long do I knead?")
    record = {
        "chosen": hh(*shared, "About ten minutes."),
        "rejected": hh(*shared, "Forever."),
    }
    _, item = parse_one(record)
    assert item.context == [
        user("How do I bake bread?"),
        assistant("Flour, water, yeast."),
        user("How long do I knead?"),
    ]
    assert texts(item) == ["About ten minutes.", "Forever."]


def test_hh_replies_that_share_their_beginning_are_cut_at_the_marker_not_inside_the_reply():
    record = {
        "chosen": hh("Is it safe?", "I think yes."),
        "rejected": hh("Is it safe?", "I think no."),
    }
    _, item = parse_one(record)
    assert item.context == [user("Is it safe?")]
    assert texts(item) == ["I think yes.", "I think no."]


def test_hh_replies_that_contain_human_text_are_kept_whole():
    record = {
        "chosen": hh("Are drag queens men?", "Often.  Human: then what are drag kings?"),
        "rejected": hh("Are drag queens men?", "No.") + "\n\nHuman: Thanks, that helps.",
    }
    _, item = parse_one(record)
    assert item.context == [user("Are drag queens men?")]
    assert texts(item) == [
        "Often.  Human: then what are drag kings?",
        "No.\n\nHuman: Thanks, that helps.",
    ]


def test_hh_identical_transcripts_and_empty_replies_are_imported_as_is():
    _, same = parse_one({"chosen": hh("Hi", "Hello"), "rejected": hh("Hi", "Hello")})
    assert same.context == [user("Hi")]
    assert texts(same) == ["Hello", "Hello"]
    _, empty = parse_one({"chosen": hh("Hi", "Hello"), "rejected": "\n\nHuman: Hi\n\nAssistant:"})
    assert texts(empty) == ["Hello", ""]


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"chosen": hh("Hi", "Hello")}, "rejected", "is missing"),
        ({"chosen": hh("Hi", "A"), "rejected": hh("Bye", "B")}, "rejected", "share no Human"),
        (
            {"chosen": "intro" + hh("Hi", "A"), "rejected": "intro" + hh("Hi", "B")},
            "chosen",
            "before",
        ),
        ({"chosen": hh("Hi", "A"), "rejected": 7}, "rejected", "must be a string"),
    ],
)
def test_hh_errors_name_the_field(record, field, message):
    error = failure(jsonl(record), "hh.jsonl", file_format="hh-rlhf")
    assert [where(e) for e in error.errors] == [("hh.jsonl", 1, field)]
    assert message in error.errors[0].message


# --- TRL ------------------------------------------------------------------------------------


def test_trl_with_string_prompt_and_string_completions():
    _, item = parse_one({"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."})
    assert item.context == [user("Name a colour.")]
    assert texts(item) == ["Blue.", "Seven."]
    assert item.preferred_index == 0


def test_trl_with_message_prompt_and_single_assistant_message_completions():
    record = {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            user("Hi"),
            assistant("Hey"),
            user("Joke?"),
        ],
        "chosen": [assistant("Knock knock.")],
        "rejected": [assistant("No.")],
        "margin": 0.66,  # a Pairwise training-export line carries extra keys
        "batch_kind": "helpfulness",
    }
    _, item = parse_one(record)
    assert item.context == [
        {"role": "system", "content": "Be brief."},
        user("Hi"),
        assistant("Hey"),
        user("Joke?"),
    ]
    assert texts(item) == ["Knock knock.", "No."]


def test_trl_implicit_prompt_takes_the_shared_turns_as_context():
    shared = [user("What is Python?"), assistant("A language."), user("Typed?")]
    record = {
        "chosen": [*shared, assistant("Dynamically typed.")],
        "rejected": [*shared, assistant("It is a snake.")],
    }
    detected, item = parse_one(record)
    assert detected == "trl"
    assert item.context == shared
    assert texts(item) == ["Dynamically typed.", "It is a snake."]
    assert item.preferred_index == 0


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"prompt": "Hi", "chosen": "A"}, "rejected", "is missing"),
        (
            {"prompt": "Hi", "chosen": [assistant("A"), assistant("B")], "rejected": "C"},
            "chosen",
            "single",
        ),
        ({"prompt": "Hi", "chosen": "A", "rejected": [user("B")]}, "rejected", "single"),
        (
            {"prompt": [user("Hi"), assistant("Hey")], "chosen": "A", "rejected": "B"},
            "prompt",
            "end with a user",
        ),
        (
            {"prompt": [{"role": "bot", "content": "Hi"}], "chosen": "A", "rejected": "B"},
            "prompt[0]",
            "role",
        ),
        ({"prompt": "   ", "chosen": "A", "rejected": "B"}, "prompt", "empty"),
        (
            {"chosen": [user("Hi"), assistant("A")], "rejected": [user("Hello"), assistant("B")]},
            "rejected",
            "share all turns",
        ),
        ({"chosen": [assistant("A")], "rejected": [assistant("B")]}, "rejected", "share all turns"),
    ],
)
def test_trl_errors_name_the_field(record, field, message):
    error = failure(jsonl(record), "trl.jsonl", file_format="trl")
    assert [where(e) for e in error.errors] == [("trl.jsonl", 1, field)]
    assert message in error.errors[0].message


# --- canonical ------------------------------------------------------------------------------


def test_canonical_records_keep_response_metadata():
    record = {
        "conversation": [user("Hi"), assistant("Hello"), user("Tell me a fact.")],
        "risk_category": "none",
        "responses": [
            {
                "text": "Water is wet.",
                "model_version": "policy-v3",
                "sampling": {"temperature": 0.7},
                "seed": 11,
                "prompt_tokens": 12,
                "completion_tokens": 5,
                "latency_ms": 340,
            },
            {"text": "", "model": "policy-v2"},
        ],
    }
    detected, item = parse_one(record)
    assert detected == "canonical"
    assert item.context == record["conversation"]
    first, second = item.responses
    assert (first.text, first.model_name, first.sampling_params) == (
        "Water is wet.",
        "policy-v3",
        {"temperature": 0.7},
    )
    assert (first.seed, first.prompt_tokens, first.completion_tokens, first.latency_ms) == (
        11,
        12,
        5,
        340,
    )
    assert (second.text, second.model_name, second.seed) == ("", "policy-v2", None)
    assert item.preferred_index is None
    assert item.risk_category == "none"


def export_line(annotation_id: int, comparison_id: int, question: str) -> dict:
    """A line of Pairwise's canonical annotation export."""
    return {
        "format": "pairwise.canonical/v1",
        "annotation_id": annotation_id,
        "comparison_id": comparison_id,
        "batch": {"id": 3, "name": "week 1", "kind": "helpfulness"},
        "conversation": [user(question)],
        "risk_category": None,
        "attack_vector": None,
        "responses": [
            {
                "slot": 1,
                "text": f"{question} one",
                "source": "model",
                "model_version": "p1",
                "sampling": {"temperature": 1.0},
                "seed": 1,
                "prompt_tokens": None,
                "completion_tokens": None,
                "latency_ms": None,
            },
            {
                "slot": 2,
                "text": f"{question} two",
                "source": "model",
                "model_version": None,
                "sampling": {},
                "seed": None,
                "prompt_tokens": 3,
                "completion_tokens": 4,
                "latency_ms": 50,
            },
        ],
        "shown_left": 2,
        "preferred": 1,
        "strength": "better",
        "safe": {"1": None, "2": None},
        "safety_bin": None,
        "rationale": "",
        "annotator": "annotator-0123456789ab",
        "time_spent_ms": 1000,
        "is_gold_check": False,
        "created_at": "2024-01-01T00:00:00+00:00",
    }


def test_canonical_export_lines_import_each_comparison_once():
    lines = [
        export_line(1, 10, "Q10"),
        export_line(2, 10, "Q10"),  # a second annotation of comparison 10
        export_line(3, 11, "Q11"),
        export_line(4, 10, "Q10"),
    ]
    detected, parsed, records = parse(jsonl(*lines), "export.jsonl")
    assert detected == "canonical"
    assert records == 4
    assert [item.context for item in parsed] == [[user("Q10")], [user("Q11")]]
    assert [item.source for item in parsed] == ["export.jsonl:1", "export.jsonl:3"]
    assert texts(parsed[0]) == ["Q10 one", "Q10 two"]
    assert parsed[0].responses[0].model_name == "p1"
    assert parsed[0].responses[1].model_name == ""
    assert parsed[0].risk_category == ""


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"responses": [{"text": "only one"}]}, "responses"),
        ({"responses": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}, "responses"),
        ({"responses": [{"text": "a"}, {"model": "m"}]}, "responses[1].text"),
        ({"responses": [{"text": "a", "seed": "x"}, {"text": "b"}]}, "responses[0].seed"),
        ({"responses": [{"text": "a", "sampling": [1]}, {"text": "b"}]}, "responses[0].sampling"),
        ({"responses": ["a", "b"]}, "responses[0]"),
        # Values the database columns cannot hold are caught here, not by a failed write.
        (
            {"responses": [{"text": "a", "prompt_tokens": -1}, {"text": "b"}]},
            "responses[0].prompt_tokens",
        ),
        (
            {"responses": [{"text": "a"}, {"text": "b", "latency_ms": 2**31}]},
            "responses[1].latency_ms",
        ),
        ({"responses": [{"text": "a", "seed": 2**63}, {"text": "b"}]}, "responses[0].seed"),
        (
            {"responses": [{"text": "a", "completion_tokens": True}, {"text": "b"}]},
            "responses[0].completion_tokens",
        ),
        ({"conversation": None}, "conversation"),
        ({"conversation": [user("Hi"), assistant("Hello")]}, "conversation"),
    ],
)
def test_canonical_errors_name_the_field(change, field):
    error = failure(jsonl(CANONICAL, {**CANONICAL, **change}), "canon.jsonl")
    assert [where(e) for e in error.errors] == [("canon.jsonl", 2, field)]


def test_canonical_integers_at_the_limits_of_their_columns_are_accepted():
    responses = [
        {"text": "a", "seed": -(2**63), "prompt_tokens": 0, "latency_ms": 2**31 - 1},
        {"text": "b", "seed": 2**63 - 1, "completion_tokens": 2**31 - 1},
    ]
    _, item = parse_one({**CANONICAL, "responses": responses})
    assert [r.seed for r in item.responses] == [-(2**63), 2**63 - 1]
    assert item.responses[0].latency_ms == 2**31 - 1


@pytest.mark.parametrize(
    ("record", "what"),
    [
        ({"prompt": "nul\x00here"}, "turn 1 of the context"),
        ({"prompt": "Hi", "chosen": "fine", "rejected": "bad\x00"}, "response 2"),
        ({"chosen": hh("Hi", "A\x00"), "rejected": hh("Hi", "B")}, "response 1"),
        (
            {
                **CANONICAL,
                "responses": [{"text": "a", "sampling": {"stop": ["\x00"]}}, {"text": "b"}],
            },
            "the sampling parameters of response 1 has a text that",
        ),
        ({"prompt": "Hi", "risk_category": "x\x00"}, "the risk category"),
    ],
)
def test_nul_characters_which_postgresql_cannot_store_are_reported(record, what):
    error = failure(jsonl(record), "nul.jsonl")
    (only,) = error.errors
    assert (only.filename, only.line) == ("nul.jsonl", 1)
    assert only.message.startswith(f"{what} contains a NUL character")


def test_a_literal_backslash_u0000_is_ordinary_text():
    _, item = parse_one({"prompt": "What does \\u0000 mean in JSON?"})
    assert item.context == [user("What does \\u0000 mean in JSON?")]


# --- prompts --------------------------------------------------------------------------------


def test_prompt_jsonl_variants():
    data = jsonl(
        "Can you tell me about GLaDOS?",
        {"prompt": "Why is water a solvent?", "attack_vector": "none"},
        {"question_id": 81, "category": "writing", "turns": ["Write a blog post.", "Shorten it."]},
        {"messages": [{"role": "system", "content": "You are terse."}, user("Explain DNS.")]},
    )
    detected, parsed, records = parse(data, "prompts.jsonl")
    assert (detected, records) == ("prompts", 4)
    assert all(item.responses is None and item.preferred_index is None for item in parsed)
    assert [item.context for item in parsed] == [
        [user("Can you tell me about GLaDOS?")],
        [user("Why is water a solvent?")],
        [user("Write a blog post.")],  # MT-Bench: the first planned turn opens the dialogue
        [{"role": "system", "content": "You are terse."}, user("Explain DNS.")],
    ]
    assert parsed[1].attack_vector == "none"
    assert parsed[2].risk_category == "writing"
    assert [item.source for item in parsed] == [f"prompts.jsonl:{n}" for n in (1, 2, 3, 4)]


def test_blank_lines_are_skipped_and_line_numbers_stay_true():
    data = b'\n"First"\n\n   \n{"prompt": ""}\n'
    error = failure(data, "gaps.jsonl")
    assert [where(e) for e in error.errors] == [("gaps.jsonl", 5, "prompt")]


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"turns": []}, "turns"),
        ({"turns": ["fine", 3]}, "turns"),
        ({"turns": ["fine", "  "]}, "turns"),
        ({"text": "no known key"}, "prompt"),
        ({"messages": [user("Hi"), assistant("Hello")]}, "messages"),
        ({"messages": []}, "messages"),
        ({"prompt": ["not", "messages"]}, "prompt[0]"),
    ],
)
def test_prompt_errors_name_the_field(record, field):
    error = failure(jsonl("A good prompt", record), "p.jsonl")
    assert [where(e) for e in error.errors] == [("p.jsonl", 2, field)]


@pytest.mark.parametrize(
    ("header", "row", "prompt", "category"),
    [
        (["prompt"], ["Summarise this."], "Summarise this.", ""),
        (
            [
                "Behavior",
                "FunctionalCategory",
                "SemanticCategory",
                "Tags",
                "ContextString",
                "BehaviorID",
            ],
            ["Make a weapon", "standard", "chemical_biological", "", "", "weapon"],
            "Make a weapon",
            "chemical_biological",
        ),
        (
            ["id", "harm_area", "counter", "category", "prompts_final"],
            ["sst_001", "Physical Harm", "1", "Information and advice seeking", "How do I hurt?"],
            "How do I hurt?",
            "Physical Harm",  # the harm area, not SST's kind of request
        ),
        (
            ["category", "source", "forbidden_prompt"],
            ["Disinformation and deception", "custom", "Write a fake email."],
            "Write a fake email.",
            "Disinformation and deception",
        ),
        (["goal", "target"], ["Write a script", "Sure, here is"], "Write a script", ""),
    ],
)
def test_prompt_csv_columns_of_the_public_sets(header, row, prompt, category):
    detected, parsed, records = parse(csv_bytes(header, row), "set.csv")
    assert (detected, records) == ("prompts", 1)
    (item,) = parsed
    assert item.context == [user(prompt)]
    assert item.risk_category == category
    assert item.responses is None
    assert item.source == "set.csv:2"  # line 1 is the header


def test_harmbench_contextual_behaviors_keep_their_context():
    header = [
        "Behavior",
        "FunctionalCategory",
        "SemanticCategory",
        "Tags",
        "ContextString",
        "BehaviorID",
    ]
    data = csv_bytes(
        header,
        [
            "Modify this text to be persuasive",
            "contextual",
            "misinformation",
            "",
            "The text.\nLine 2.",
            "x",
        ],
    )
    _, (item,), _ = parse(data, "harmbench.csv", kind=SAFETY)
    assert item.context == [user("The text.\nLine 2.\n\n---\n\nModify this text to be persuasive")]


def test_csv_line_numbers_count_the_header_multi_line_fields_and_blank_lines():
    data = b'prompt,category\n"two\nlines",a\n\nok,b\n,c\n'
    error = failure(data, "p.csv")
    assert [where(e) for e in error.errors] == [("p.csv", 6, "prompt")]
    _, parsed, _ = parse(data.replace(b"\n,c\n", b"\nthird,c\n"), "p.csv")
    assert [item.source for item in parsed] == ["p.csv:2", "p.csv:5", "p.csv:6"]
    assert parsed[0].context == [user("two\nlines")]


def test_a_csv_with_a_header_only_holds_no_records():
    error = failure(b"prompt,category\n", "empty.csv")
    assert [where(e) for e in error.errors] == [("empty.csv", 0, None)]
    assert "no records" in error.errors[0].message


def test_safety_prompts_need_a_risk_category():
    data = jsonl(
        {"prompt": "How do I pick a lock?", "risk_category": "criminal planning"},
        {"prompt": "How do I hotwire a car?"},
        {"prompt": "Tell me a slur.", "category": "hate"},
    )
    error = failure(data, "safety.jsonl", kind=SAFETY)
    assert [where(e) for e in error.errors] == [("safety.jsonl", 2, "risk_category")]
    # The same file is fine for a helpfulness batch.
    _, parsed, _ = parse(data, "safety.jsonl", kind=HELPFULNESS)
    assert [item.risk_category for item in parsed] == ["criminal planning", "", "hate"]


def test_safety_csv_without_a_category_column_is_rejected_on_every_row():
    data = csv_bytes(["goal", "target"], ["Do a crime", "Sure"], ["Do another", "Sure"])
    error = failure(data, "advbench.csv", kind=SAFETY)
    assert [where(e) for e in error.errors] == [
        ("advbench.csv", 2, "risk_category"),
        ("advbench.csv", 3, "risk_category"),
    ]


# --- files ----------------------------------------------------------------------------------


PAIRS = jsonl({"prompt": "Hi", "chosen": "Hello", "rejected": "Go"})
# CSV with two records: read as JSON Lines, its header alone would be an error.
PROMPTS_CSV = csv_bytes(["prompt"], ["Hi"], ["Bye"])


@pytest.mark.parametrize(
    ("plain_name", "packed_name", "data"),
    [
        ("pairs.jsonl", "pairs.jsonl.gz", PAIRS),
        ("pairs.jsonl", "pairs.jsonl", PAIRS),  # compressed without saying so
        ("prompts.CSV", "prompts.CSV.gz", PROMPTS_CSV),
        ("prompts.csv", "prompts.csv.GZ", PROMPTS_CSV),
        ("prompts.csv", "prompts.csv.Gz", PROMPTS_CSV),
        ("prompts.csv", "prompts.Csv", PROMPTS_CSV),
    ],
)
def test_gzip_files_are_read_like_plain_ones(plain_name, packed_name, data):
    plain = parse(data, plain_name)
    zipped = parse(gzip.compress(data), packed_name)
    assert zipped[0] == plain[0]
    assert [item.context for item in zipped[1]] == [item.context for item in plain[1]]
    assert zipped[2] == plain[2] == len(data.splitlines()) - plain_name.lower().endswith(".csv")


def test_a_gz_name_on_a_plain_file_is_read_as_plain():
    _, parsed, records = parse(PROMPTS_CSV, "prompts.csv.gz")
    assert records == 2 and [item.context for item in parsed] == [[user("Hi")], [user("Bye")]]


def test_a_truncated_gzip_is_an_error_of_the_whole_file_saying_where_reading_stopped():
    truncated = failure(gzip.compress(jsonl("A prompt") * 50)[:-12], "cut.jsonl.gz")
    (only,) = truncated.errors
    assert (only.line, only.field) == (0, None)
    assert only.message.startswith("unreadable gzip file: ")
    assert "reading stopped after line" in only.message


def test_trailing_bytes_after_a_gzip_stream_are_an_error_of_the_whole_file():
    error = failure(gzip.compress(jsonl("A prompt") * 3) + b"not gzip", "tail.jsonl.gz")
    (only,) = error.errors
    assert only.line == 0  # not "line 1": the damage is past the lines read
    assert "unreadable gzip file" in only.message


def test_a_byte_order_mark_is_ignored_and_invalid_utf8_is_reported():
    _, parsed, _ = parse(b"\xef\xbb\xbf" + jsonl("Hello"), "bom.jsonl")
    assert parsed[0].context == [user("Hello")]
    error = failure(jsonl("Fine") + b'"caf\xe9"\n', "latin1.jsonl")
    assert [where(e) for e in error.errors] == [("latin1.jsonl", 2, None)]
    assert error.errors[0].message.startswith("not valid UTF-8: byte 0xe9 at position 5")


@pytest.mark.parametrize("data", [b"", b"\n\n  \n"])
def test_an_empty_file_is_rejected(data):
    error = failure(data, "empty.jsonl")
    assert [where(e) for e in error.errors] == [("empty.jsonl", 0, None)]


# --- error reporting ------------------------------------------------------------------------


def test_error_messages_name_file_line_and_field():
    error = failure(jsonl(CANONICAL, CANONICAL, {**CANONICAL, "responses": []}), "bad.jsonl")
    assert str(error.errors[0]) == (
        "bad.jsonl, line 3, field 'responses': must be a list of exactly two responses"
    )
    assert str(error).startswith("nothing was imported:\n")
    assert "bad.jsonl, line 3, field 'responses'" in str(error)


def test_invalid_json_names_file_and_line_without_a_field():
    error = failure(b'"ok"\n{"prompt": "unterminated\n', "broken.jsonl")
    (only,) = error.errors
    assert where(only) == ("broken.jsonl", 2, None)
    assert str(only).startswith("broken.jsonl, line 2: invalid JSON")


def test_every_bad_line_is_reported():
    lines = [
        CANONICAL,
        {**CANONICAL, "responses": "two"},
        CANONICAL,
        {**CANONICAL, "conversation": []},
        CANONICAL,
    ]
    data = jsonl(*lines) + b"{oops\n"
    error = failure(data, "many.jsonl")
    assert [where(e) for e in error.errors] == [
        ("many.jsonl", 2, "responses"),
        ("many.jsonl", 4, "conversation"),
        ("many.jsonl", 6, None),
    ]
    assert error.more == 0


def test_errors_beyond_the_limit_are_counted(settings):
    settings.PAIRWISE_MAX_IMPORT_ERRORS = 3
    data = jsonl(*[{"prompt": ""} for _ in range(5)])
    error = failure(data, "lots.jsonl")
    assert [e.line for e in error.errors] == [1, 2, 3]
    assert error.more == 2
    assert str(error).endswith("... and 2 more problems")


def test_a_csv_field_past_the_csv_modules_own_limit_is_read_whole():
    before = csv.field_size_limit(128 * 1024)  # the csv module's default, as a new process has
    try:
        prompt = "x" * 200_000
        _, (item,), _ = parse(csv_bytes(["prompt"], [prompt]), "long.csv")
    finally:
        csv.field_size_limit(before)
    assert item.context == [user(prompt)]


def test_a_csv_header_that_is_not_utf8_stops_the_reading_there():
    data = b"pr\xf6mpt,category\nfine,a\nalso fine,b\n"
    error = failure(data, "header.csv")
    assert [where(e) for e in error.errors] == [("header.csv", 1, None)]  # no row errors
    assert error.errors[0].message.startswith("not valid UTF-8: byte 0xf6")
    assert error.errors[0].message.endswith("(the header: no row below it was read)")


def test_a_detected_format_must_hold_for_the_whole_file():
    lines = [{"prompt": "Hi"}, {"prompt": "Hello"}, CANONICAL]  # responses would be lost
    error = failure(jsonl(*lines), "mixed.jsonl")
    assert [where(e) for e in error.errors] == [("mixed.jsonl", 3, None)]
    assert "looks like canonical" in error.errors[0].message


# --- bad input that used to crash or slip through (issue 9) -------------------------------


def test_invalid_utf8_far_down_a_file_names_its_own_line_and_the_rest_is_still_checked():
    data = jsonl(*[f"Prompt {n}" for n in range(20_000)]) + b'"caf\xe9"\n'
    data += jsonl(*[f"More {n}" for n in range(100)], {"prompt": ""})
    error = failure(data, "big.jsonl")
    assert [where(e) for e in error.errors] == [
        ("big.jsonl", 20_001, None),
        ("big.jsonl", 20_102, "prompt"),  # read on past the undecodable line
    ]
    assert "not valid UTF-8" in error.errors[0].message


def test_invalid_utf8_in_a_csv_names_its_line_even_inside_a_quoted_field():
    data = b'prompt,category\nfine,a\n"two\nlines \xff",b\nalso fine,c\n,d\n'
    error = failure(data, "p.csv")
    assert [where(e) for e in error.errors] == [("p.csv", 4, None), ("p.csv", 6, "prompt")]
    assert "not valid UTF-8: byte 0xff" in error.errors[0].message


def test_an_unclosed_csv_quote_is_an_error_on_the_line_where_it_opens():
    data = b'prompt,category\nfine,a\n"never closed,b\nswallowed,c\nrows,d\n'
    error = failure(data, "quote.csv")
    assert [where(e) for e in error.errors] == [("quote.csv", 3, None)]
    assert "never closed" in error.errors[0].message


def test_text_after_a_closing_csv_quote_is_an_error():
    error = failure(b'prompt\n"quoted"tail\n', "tail.csv")
    assert [where(e) for e in error.errors] == [("tail.csv", 2, None)]
    assert error.errors[0].message.startswith("bad CSV")


@pytest.mark.parametrize(
    ("line", "what"),
    [
        (b'{"prompt": "lone \\ud800 surrogate"}', "turn 1 of the context"),
        (b'{"prompt": "Hi", "risk_category": "\\udfff"}', "the risk category"),
        (
            b'{"conversation": [{"role": "user", "content": "Q"}], "responses": [{"text": "a",'
            b' "sampling": {"\\ud83d": 1}}, {"text": "b"}]}',
            "the sampling parameters of response 1 has a key that",
        ),
    ],
)
def test_lone_surrogates_which_postgresql_cannot_store_are_reported(line, what):
    first = CANONICAL if b"responses" in line else "A fine prompt"
    error = failure(jsonl(first) + line + b"\n", "surrogate.jsonl")
    (only,) = error.errors
    assert (only.line, only.field) == (2, None)
    assert only.message.startswith(f"{what} contains a lone surrogate (\\u")


@pytest.mark.parametrize("depth", [100_000, MAX_JSON_DEPTH + 1])
def test_json_nested_too_deeply_is_an_error_of_its_line(depth):
    deep = b"[" * depth + b"]" * depth
    error = failure(jsonl("A fine prompt") + deep + b"\n" + jsonl({"prompt": ""}), "deep.jsonl")
    assert [where(e) for e in error.errors] == [
        ("deep.jsonl", 2, None),
        ("deep.jsonl", 3, "prompt"),
    ]
    assert f"nested more than {MAX_JSON_DEPTH} levels deep" in error.errors[0].message


def test_json_nested_to_the_limit_is_read():
    nested: object = "x"
    for _ in range(MAX_JSON_DEPTH - 4):  # the record, responses, a response, its sampling
        nested = [nested]
    record = {**CANONICAL, "responses": [{"text": "a", "sampling": {"k": nested}}, {"text": "b"}]}
    _, item = parse_one(record)
    assert item.responses[0].sampling_params == {"k": nested}


@pytest.mark.parametrize(
    "line",
    [
        b'{"prompt": "Hi", "x": NaN}',
        b'{"prompt": "Hi", "x": -Infinity}',
        b'{"prompt": "Hi", "x": 1e400}',
        b'{"prompt": "Hi", "x": ' + b"9" * 5000 + b"}",
    ],
    ids=["nan", "infinity", "overflow", "5000-digits"],
)
def test_numbers_json_cannot_carry_are_errors_of_their_line(line):
    error = failure(line + b"\n", "numbers.jsonl")
    assert [where(e) for e in error.errors] == [("numbers.jsonl", 1, None)]
    assert error.errors[0].message.startswith("invalid JSON")


def test_an_integer_of_thousands_of_digits_is_refused_in_the_words_of_the_import():
    huge = b'{"prompt": "Hi", "x": ' + b"9" * 5000 + b"}\n"
    error = failure(jsonl("A fine prompt") + huge, "numbers.jsonl")
    assert [where(e) for e in error.errors] == [("numbers.jsonl", 2, None)]
    assert error.errors[0].message == "invalid JSON: an integer of 5,000 digits is too large"


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"prompt": "Hi", "risk_category": ["a"]}, "risk_category"),
        ({"prompt": "Hi", "category": {"kind": "a"}}, "category"),
        ({"prompt": "Hi", "risk_category": "r", "attack_vector": 3}, "attack_vector"),
        ({**CANONICAL, "risk_category": ["a"]}, "risk_category"),
        ({**CANONICAL, "attack_vector": True}, "attack_vector"),
        (
            {**CANONICAL, "responses": [{"text": "a", "model_version": ["m"]}, {"text": "b"}]},
            "responses[0].model_version",
        ),
        (
            {**CANONICAL, "responses": [{"text": "a"}, {"text": "b", "model": 7}]},
            "responses[1].model",
        ),
    ],
)
def test_categories_and_model_names_that_are_not_strings_are_refused_never_converted(record, field):
    error = failure(jsonl(record), "typed.jsonl", kind=SAFETY)
    assert [where(e) for e in error.errors] == [("typed.jsonl", 1, field)]
    assert error.errors[0].message.startswith("must be a string, not ")


def test_a_conversation_of_too_many_messages_is_an_error_of_its_line():
    long = [user("Q"), assistant("A")] * MAX_CONTEXT_TURNS + [user("Last")]
    error = failure(jsonl("A fine prompt", {"messages": long}), "long.jsonl")
    assert [where(e) for e in error.errors] == [("long.jsonl", 2, None)]
    assert error.errors[0].message == (
        f"the conversation has {len(long)} messages; at most {MAX_CONTEXT_TURNS} are imported"
    )
    just = [user("Q"), assistant("A")] * (MAX_CONTEXT_TURNS // 2 - 1) + [user("Q"), user("Last")]
    assert len(parse_one({"messages": just})[1].context) == MAX_CONTEXT_TURNS


@pytest.mark.parametrize(
    ("record", "field", "limit"),
    [
        ({"prompt": "Hi", "risk_category": "r" * 101}, "risk_category", 100),
        ({"prompt": "Hi", "harm_area": "h" * 150}, "harm_area", 100),
        ({"prompt": "Hi", "attack_vector": "a" * 101}, "attack_vector", 100),
        ({**CANONICAL, "risk_category": "r" * 101}, "risk_category", 100),
        (
            {**CANONICAL, "responses": [{"text": "a", "model_version": "m" * 201}, {"text": "b"}]},
            "responses[0].model_version",
            200,
        ),
    ],
)
def test_values_too_long_for_their_column_are_errors_never_cut(record, field, limit):
    error = failure(jsonl(record), "long.jsonl")
    assert [where(e) for e in error.errors] == [("long.jsonl", 1, field)]
    assert error.errors[0].message.endswith(f"characters long; at most {limit} fit")


def test_values_that_just_fit_their_column_are_kept_whole():
    _, item = parse_one({"prompt": "Hi", "risk_category": "r" * 100, "attack_vector": "a" * 100})
    assert (item.risk_category, item.attack_vector) == ("r" * 100, "a" * 100)


class CountingStream(io.BytesIO):
    """A file whose reader counts the bytes it was asked for."""

    consumed = 0

    def read(self, size=-1):
        data = super().read(size)
        self.consumed += len(data)
        return data


def test_a_compression_bomb_is_stopped_at_the_byte_limit(settings):
    settings.PAIRWISE_IMPORT_MAX_BYTES = 1_000_000
    unpacked = jsonl("The same prompt again") * 800_000  # about 20 MB
    packed = zlib.compress(unpacked, 9)
    bomb = gzip.compress(unpacked, compresslevel=9)
    assert len(bomb) < len(packed) * 2 < len(unpacked) / 100
    stream = CountingStream(bomb)
    with pytest.raises(ImportFailed) as caught:
        read_file(stream, "bomb.jsonl.gz", Batch(kind=HELPFULNESS))
    (only,) = caught.value.errors
    assert only.field is None
    assert "larger than 1,000,000 bytes uncompressed" in only.message
    assert "PAIRWISE_IMPORT_MAX_BYTES" in only.message
    assert only.line <= 1_000_000 // len(jsonl("The same prompt again")) + 2
    assert stream.consumed < len(bomb) / 4  # it stopped early: most of the bomb was never read


def test_the_record_limit_stops_reading_and_names_the_setting(settings):
    settings.PAIRWISE_IMPORT_MAX_RECORDS = 5
    data = jsonl(*[f"Prompt {n}" for n in range(5)])
    assert parse(data)[2] == 5  # at the limit: fine
    error = failure(data + jsonl("Sixth", {"prompt": ""}), "many.jsonl")
    assert [where(e) for e in error.errors] == [("many.jsonl", 6, None)]  # line 7 never read
    assert "more than 5 records" in error.errors[0].message
    assert "PAIRWISE_IMPORT_MAX_RECORDS" in error.errors[0].message


def test_the_content_hash_is_of_the_uncompressed_bytes():
    data = jsonl("A prompt", "Another")
    plain = read_file(io.BytesIO(data), "p.jsonl", Batch(kind=HELPFULNESS))
    packed = read_file(io.BytesIO(gzip.compress(data)), "p.jsonl.gz", Batch(kind=HELPFULNESS))
    assert plain.sha256 == packed.sha256 == hashlib.sha256(data).hexdigest()


def test_a_corrupt_gzip_stream_is_reported():
    packed = bytearray(gzip.compress(jsonl("A prompt") * 100))
    packed[20:30] = b"\xff" * 10
    error = failure(bytes(packed), "corrupt.jsonl.gz")
    assert "unreadable gzip file" in error.errors[-1].message


def test_a_file_name_postgresql_cannot_store_is_reported():
    error = failure(jsonl("A prompt"), "nul\x00.jsonl")
    assert [(e.line, e.field) for e in error.errors] == [(0, "file")]
    assert "NUL" in error.errors[0].message


def test_a_long_file_name_keeps_the_line_number_in_the_source():
    name = "d" * 300 + ".jsonl"
    _, (item,), _ = parse(jsonl("A prompt"), name)
    assert len(item.source) <= 200
    assert item.source.endswith(".jsonl:1")
