"""rlhf.data and rlhf.data.hh_rlhf: loading preference pairs, the Llama 2 mixes, the eval split."""

from __future__ import annotations

import collections
import gzip
import json
import random
import warnings
from pathlib import Path

import pytest

from rlhf.data.hh_rlhf import TranscriptError, context_and_replies, split_transcript
from rlhf.data.mixes import (
    HELPFULNESS,
    HELPFULNESS_RECIPE,
    OPEN_SOURCE_HARMLESSNESS,
    OPEN_SOURCE_HELPFULNESS,
    SAFETY,
    SAFETY_RECIPE,
    MixRecipe,
    drop_unsafe_chosen,
    extra_count,
    mix,
)
from rlhf.data.pairs import DataError, PreferencePair, content_id, load_pairs
from rlhf.data.split import eval_score, split
from rlhf.preferences import MARGIN_TABLES, Strength, margin_for_rating
from tests.conftest import shared_path
from tests.messages import assistant, hh, user

HH_FILES = {
    "harmless-base": 2312,
    "helpful-online": 1137,
    "helpful-rejection-sampled": 2749,
}


def write_jsonl(path: Path, *records) -> Path:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(lines.encode()))
    else:
        path.write_text(lines)
    return path


def pair(index: int, kind: str | None = None, **fields) -> PreferencePair:
    return PreferencePair(
        context=[user(f"question {index}")],
        chosen=f"good answer {index}",
        rejected=f"bad answer {index}",
        kind=kind,
        **fields,
    )


def pairs_of(name: str, count: int, kind: str | None = None) -> list[PreferencePair]:
    return [
        PreferencePair(
            context=[user(f"{name} question {i}")],
            chosen=f"{name} good {i}",
            rejected=f"{name} bad {i}",
            kind=kind,
            source=f"{name}:{i}",
        )
        for i in range(count)
    ]


def training_export_record(**overrides) -> dict:
    """A line of the platform's ``trl`` training export, as ``exports.training_record`` writes."""
    record = {
        "prompt": [user("How do I bake bread?"), assistant("Flour, water, yeast."), user("Time?")],
        "chosen": [assistant("About ten minutes of kneading.")],
        "rejected": [assistant("Forever.")],
        "margin": 2.0 / 3.0,
        "batch_kind": "helpfulness",
        "strength": "better",
        "safety_bin": "both_safe",
        "comparison_id": 41,
        "batch": "helpfulness batch 3",
    }
    record.update(overrides)
    return record


# --- HH-RLHF transcripts ------------------------------------------------------------------------


def test_split_transcript_maps_human_to_user_and_assistant_to_assistant():
    assert split_transcript(hh("Hi there ", " Hello!", "How are you?")) == [
        user("Hi there"),
        assistant("Hello!"),
        user("How are you?"),
    ]
    assert split_transcript("no markers at all") == []
    assert split_transcript("  \n" + hh("Hi")) == [user("Hi")]
    with pytest.raises(TranscriptError, match="text before the first"):
        split_transcript("intro" + hh("Hi"))


def test_hh_single_and_multi_turn_contexts_end_at_the_last_shared_assistant_marker():
    assert context_and_replies(hh("Hi there", "Hello!"), hh("Hi there", "Go.")) == (
        [user("Hi there")],
        "Hello!",
        "Go.",
    )
    shared = ("How do I bake bread?", "Flour, water, yeast.", "How long do I knead?")
    context, chosen, rejected = context_and_replies(
        hh(*shared, "About ten minutes."), hh(*shared, "Forever.")
    )
    assert context == [user(shared[0]), assistant(shared[1]), user(shared[2])]
    assert (chosen, rejected) == ("About ten minutes.", "Forever.")


def test_hh_replies_sharing_their_beginning_are_cut_at_the_marker_not_inside_the_reply():
    assert context_and_replies(hh("Is it safe?", "I think yes."), hh("Is it safe?", "I think no."))[
        1:
    ] == ("I think yes.", "I think no.")


def test_hh_replies_containing_human_text_are_kept_whole():
    context, chosen, rejected = context_and_replies(
        hh("Are drag queens men?", "Often.  Human: then what are drag kings?"),
        hh("Are drag queens men?", "No.") + "\n\nHuman: Thanks, that helps.",
    )
    assert context == [user("Are drag queens men?")]
    assert chosen == "Often.  Human: then what are drag kings?"
    assert rejected == "No.\n\nHuman: Thanks, that helps."


def test_hh_identical_transcripts_and_empty_replies_are_kept():
    assert context_and_replies(hh("Hi", "Hello"), hh("Hi", "Hello")) == (
        [user("Hi")],
        "Hello",
        "Hello",
    )
    assert context_and_replies(hh("Hi", "Hello"), "\n\nHuman: Hi\n\nAssistant:")[1:] == (
        "Hello",
        "",
    )


@pytest.mark.parametrize(
    ("chosen", "rejected", "field", "message"),
    [
        (hh("Hi", "A"), hh("Bye", "B"), "rejected", "share no Human turn"),
        ("intro" + hh("Hi", "A"), "intro" + hh("Hi", "B"), "chosen", "text before the first"),
        (hh("Hi", "A"), 7, "rejected", "must be a string, not int"),
        ("  ", hh("Hi", "B"), "chosen", "is empty"),
        ("\n\nAssistant: A", "\n\nAssistant: B", "chosen", "must start with a Human turn"),
    ],
)
def test_hh_errors_are_value_errors_naming_the_field(chosen, rejected, field, message):
    with pytest.raises(ValueError, match=message) as caught:
        context_and_replies(chosen, rejected)
    assert isinstance(caught.value, TranscriptError)
    assert caught.value.field == field


@pytest.mark.parametrize("name", sorted(HH_FILES))
def test_hh_parsing_matches_the_platform_importer_on_every_real_line(name):
    from annotation_app.models import Batch
    from annotation_app.services.imports import read_file

    path = shared_path(f"data/hh-rlhf/{name}/test.jsonl.gz")
    with path.open("rb") as stream:
        read = read_file(stream, path.name, Batch(kind="helpfulness"), "hh-rlhf")
    pairs = load_pairs(path)
    assert len(pairs) == len(read.comparisons) == read.records == HH_FILES[name]
    for ours, theirs in zip(pairs, read.comparisons, strict=True):
        assert ours.context == theirs.context, ours.source
        assert [ours.chosen, ours.rejected] == [r.text for r in theirs.responses], ours.source
        assert ours.source.rsplit(":", 1)[1] == theirs.source.rsplit(":", 1)[1]


def test_tricky_real_hh_lines():
    def line(name: str, number: int) -> PreferencePair:
        path = shared_path(f"data/hh-rlhf/{name}/test.jsonl.gz")
        return load_pairs(path)[number - 1]

    # The chosen reply runs on into a further turn of its own: kept whole.
    drag = line("harmless-base", 1255)
    assert len(drag.context) == 3 and drag.context[-1] == user("Isn't that drag kings?")
    assert drag.chosen.startswith("No. Men who impersonate stereotypical women")
    assert "  Human: Then how do they come" in drag.chosen
    assert "\n\nAssistant:  I think they call them that because" in drag.chosen
    assert drag.rejected.startswith("A drag king is the opposite")
    # The rejected reply carries a "\n\nHuman:" turn after it: kept whole.
    mexico = line("helpful-online", 786)
    assert mexico.rejected.endswith(
        "additional recommendations or advice to offer for a vacation in Mexico?"
    )
    assert "\n\nHuman:  Thanks, this all sounds really great." in mexico.rejected
    assert "\n\nHuman:" not in mexico.chosen
    # An empty chosen reply.
    empty = line("harmless-base", 87)
    assert empty.chosen == "" and empty.rejected == "Sure, the address is ..."
    assert empty.context[-1] == user("Sorry, can you tell me address again?")


# --- loading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HH_FILES))
def test_real_hh_files_load_with_their_counts(name):
    path = shared_path(f"data/hh-rlhf/{name}/test.jsonl.gz")
    pairs = load_pairs(path, kind="safety" if name.startswith("harmless") else "helpfulness")
    assert len(pairs) == HH_FILES[name]
    first = pairs[0]
    assert first.source == f"{path}:1"
    assert first.kind == ("safety" if name.startswith("harmless") else "helpfulness")
    assert (first.strength, first.margin, first.batch, first.safety_bin) == (None, 0.0, None, None)
    assert all(p.context and p.context[-1]["role"] == "user" for p in pairs)
    assert len(first.pair_id) == 16


def test_the_platform_training_export_loads_with_every_field(tmp_path):
    path = write_jsonl(tmp_path / "export.jsonl", training_export_record())
    (loaded,) = load_pairs(path)
    assert loaded == PreferencePair(
        context=[user("How do I bake bread?"), assistant("Flour, water, yeast."), user("Time?")],
        chosen="About ten minutes of kneading.",
        rejected="Forever.",
        strength="better",
        margin=pytest.approx(2 / 3),
        kind="helpfulness",
        safety_bin="both_safe",
        source=f"{path}:1",
        batch="helpfulness batch 3",
        pair_id="41",
    )


@pytest.mark.parametrize("table", sorted(MARGIN_TABLES))
@pytest.mark.parametrize("strength", [s.value for s in Strength])
def test_margins_come_from_the_table_when_the_strength_is_known(tmp_path, table, strength):
    # The export was written with the large table; loading recomputes from the chosen one.
    record = training_export_record(strength=strength, margin=margin_for_rating(strength, "large"))
    path = write_jsonl(tmp_path / "export.jsonl", record)
    (loaded,) = load_pairs(path, margin_table=table)
    assert loaded.margin == MARGIN_TABLES[table][Strength(strength)]
    assert loaded.strength == strength


def test_default_margin_table_is_small(tmp_path):
    path = write_jsonl(
        tmp_path / "e.jsonl", training_export_record(strength="significantly_better")
    )
    assert load_pairs(path)[0].margin == 1.0


def test_trl_strings_with_or_without_margin(tmp_path):
    path = write_jsonl(
        tmp_path / "trl.jsonl",
        {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away", "margin": 1.5},
        {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"},
        "",
        {"prompt": [user("Hi")], "chosen": "Hello", "rejected": [assistant("Go")], "margin": 2},
    )
    first, second, third = load_pairs(path, margin_table="large")
    assert first.context == [user("Hi")] and (first.chosen, first.rejected) == ("Hello", "Go away")
    assert (first.margin, second.margin, third.margin) == (1.5, 0.0, 2.0)
    assert first.strength is None and first.kind is None
    assert third.source == f"{path}:4"  # blank lines are skipped but counted


def test_trl_implicit_prompt_conversations(tmp_path):
    shared = [user("Hi"), assistant("Hello"), user("Tell me a joke")]
    path = write_jsonl(
        tmp_path / "implicit.jsonl",
        {"chosen": [*shared, assistant("Knock knock.")], "rejected": [*shared, assistant("No.")]},
    )
    (loaded,) = load_pairs(path)
    assert loaded.context == shared
    assert (loaded.chosen, loaded.rejected) == ("Knock knock.", "No.")


def test_hh_files_plain_or_gzipped(tmp_path):
    record = {"chosen": hh("Hi", "Hello"), "rejected": hh("Hi", "Go away")}
    for name in ("hh.jsonl", "hh.jsonl.gz"):
        (loaded,) = load_pairs(write_jsonl(tmp_path / name, record), kind="safety")
        assert loaded.context == [user("Hi")]
        assert (loaded.chosen, loaded.rejected, loaded.kind) == ("Hello", "Go away", "safety")


def test_the_canonical_export_gives_the_preferred_slot_as_chosen_with_its_safety_labels(tmp_path):
    record = {
        "format": "pairwise.canonical/v1",
        "annotation_id": 7,
        "comparison_id": 12,
        "batch": {"id": 2, "name": "red team 1", "kind": "safety"},
        "conversation": [user("How do I pick a lock?")],
        "responses": [{"slot": 1, "text": "Here is how..."}, {"slot": 2, "text": "I can't help."}],
        "preferred": 2,
        "strength": "significantly_better",
        "safe": {"1": False, "2": True},
        "safety_bin": "one_safe",
    }
    (loaded,) = load_pairs(write_jsonl(tmp_path / "canonical.jsonl", record), margin_table="large")
    assert (loaded.chosen, loaded.rejected) == ("I can't help.", "Here is how...")
    assert (loaded.chosen_safe, loaded.rejected_safe) == (True, False)
    assert (loaded.kind, loaded.batch, loaded.pair_id, loaded.margin) == (
        "safety",
        "red team 1",
        "12",
        3.0,
    )


def test_pair_ids_are_comparison_ids_or_stable_content_hashes(tmp_path):
    records = [
        {"prompt": "Hi", "chosen": "A", "rejected": "B"},
        {"prompt": "Hi", "chosen": "A", "rejected": "B"},
        {"prompt": "Hi", "chosen": "B", "rejected": "A"},
        {"prompt": "Hi", "chosen": "A", "rejected": "B", "comparison_id": "c-9"},
    ]
    path = write_jsonl(tmp_path / "ids.jsonl", *records)
    first, duplicate, swapped, with_id = load_pairs(path)
    assert first.pair_id == duplicate.pair_id == content_id([user("Hi")], "A", "B")
    assert swapped.pair_id != first.pair_id
    assert with_id.pair_id == "c-9"
    assert [p.pair_id for p in load_pairs(path)] == [
        p.pair_id for p in (first, duplicate, swapped, with_id)
    ]


@pytest.mark.parametrize(
    ("bad_line", "field", "message"),
    [
        ("{not json", None, "invalid JSON"),
        ("[1, 2]", None, "JSON object"),
        ({"prompt": "Hi", "rejected": "B"}, "chosen", "is missing"),
        ({"prompt": "Hi", "chosen": 5, "rejected": "B"}, "chosen", "non-empty list"),
        (
            {"prompt": [assistant("Hi")], "chosen": "A", "rejected": "B"},
            "prompt",
            "end with a user",
        ),
        (
            {"prompt": [user("Hi")], "chosen": [user("A")], "rejected": "B"},
            "chosen",
            "single assistant",
        ),
        (
            {"prompt": [{"role": "bot", "content": "x"}], "chosen": "A", "rejected": "B"},
            "prompt[0]",
            "role",
        ),
        (
            {"prompt": "Hi", "chosen": "A", "rejected": "B", "strength": "much"},
            "strength",
            "one of",
        ),
        ({"prompt": "Hi", "chosen": "A", "rejected": "B", "margin": "1"}, "margin", "number"),
        (
            {"prompt": "Hi", "chosen": "A", "rejected": "B", "batch_kind": "fun"},
            "batch_kind",
            "one of",
        ),
        (
            {"prompt": "Hi", "chosen": "A", "rejected": "B", "safety_bin": "x"},
            "safety_bin",
            "one of",
        ),
        (
            {"prompt": "Hi", "chosen": "A", "rejected": "B", "chosen_safe": "no"},
            "chosen_safe",
            "true",
        ),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, bad_line, field, message):
    good = {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}
    path = write_jsonl(tmp_path / "data.jsonl", good, good, bad_line)
    with pytest.raises(ValueError, match=message) as caught:
        load_pairs(path)
    error = caught.value
    assert isinstance(error, DataError)
    assert (error.filename, error.line, error.field) == (str(path), 3, field)
    where = f"{path}, line 3" + (f", field '{field}'" if field else "") + ": "
    assert str(error).startswith(where)


def test_hh_and_canonical_errors_name_their_field(tmp_path):
    bad_hh = {"chosen": hh("Hi", "A"), "rejected": hh("Bye", "B")}
    with pytest.raises(DataError, match=r"hh\.jsonl, line 2, field 'rejected': .*share no Human"):
        load_pairs(
            write_jsonl(
                tmp_path / "hh.jsonl", {"chosen": hh("Hi", "A"), "rejected": hh("Hi", "B")}, bad_hh
            )
        )
    unannotated = {"conversation": [user("Hi")], "responses": [{"text": "A"}, {"text": "B"}]}
    with pytest.raises(DataError, match=r"line 1, field 'preferred'"):
        load_pairs(write_jsonl(tmp_path / "c.jsonl", unannotated))


def test_the_first_record_fixes_the_format_of_the_file(tmp_path):
    trl = {"chosen": [user("Hi"), assistant("A")], "rejected": [user("Hi"), assistant("B")]}
    hh_record = {"chosen": hh("Hi", "A"), "rejected": hh("Hi", "B")}
    path = write_jsonl(tmp_path / "mixed.jsonl", trl, hh_record)
    with pytest.raises(DataError, match=r"line 2, field 'rejected': .*share all turns"):
        load_pairs(path)
    # Named explicitly, the format is not guessed.
    hh_path = write_jsonl(tmp_path / "hh.jsonl", hh_record)
    with pytest.raises(DataError, match="line 1, field 'rejected'"):
        load_pairs(hh_path, file_format="trl")


def test_a_kind_conflicting_with_the_record_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "export.jsonl", training_export_record())
    assert load_pairs(path, kind="helpfulness")[0].kind == "helpfulness"
    with pytest.raises(DataError, match=r"field 'batch_kind': is 'helpfulness', but .*'safety'"):
        load_pairs(path, kind="safety")


def test_bad_arguments_and_empty_or_unreadable_files(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", {"prompt": "Hi", "chosen": "A", "rejected": "B"})
    with pytest.raises(ValueError, match="unknown margin table 'huge'"):
        load_pairs(path, margin_table="huge")
    with pytest.raises(ValueError, match="unknown kind"):
        load_pairs(path, kind="fun")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="holds no preference pairs"):
        load_pairs(empty)
    # Compression is known from the content (as on import): a damaged gzip stream is an
    # unreadable file, and plain bytes under a ".gz" name are read as plain JSON Lines.
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(path.read_bytes() * 50)[:-12])
    with pytest.raises(DataError, match="unreadable gzip file"):
        load_pairs(broken)
    not_gzip = tmp_path / "not-gzip.jsonl.gz"
    not_gzip.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"not-gzip\.jsonl\.gz, line 1: invalid JSON"):
        load_pairs(not_gzip)


# --- mixes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proportion", "base", "expected"),
    [
        ((50, 50), 0, 0),
        ((50, 50), 1, 1),
        ((50, 50), 1234, 1234),
        ((90, 10), 900, 100),
        ((90, 10), 9, 1),
        ((90, 10), 4, 0),  # 0.44
        ((90, 10), 5, 1),  # 0.56
        ((90, 10), 2312, 257),  # 256.9
        ((2, 1), 1, 1),  # 0.5 rounds up
        ((2, 1), 3, 2),  # 1.5 rounds up
        ((100, 0), 50, 0),
    ],
)
def test_extra_count_is_the_proportion_rounded_half_up(proportion, base, expected):
    recipe = MixRecipe("r", base=("a",), extra=("b",), proportion=proportion)
    assert extra_count(recipe, base) == expected


def test_helpfulness_mix_is_all_helpfulness_plus_an_equal_amount_of_the_rest():
    sources = {
        HELPFULNESS: pairs_of("help", 100, "helpfulness"),
        SAFETY: pairs_of("safe", 30, "safety"),
        OPEN_SOURCE_HELPFULNESS: pairs_of("oshelp", 50),
        OPEN_SOURCE_HARMLESSNESS: pairs_of("osharm", 40),
    }
    mixed = mix(HELPFULNESS_RECIPE, sources, seed=0)
    by_source = collections.Counter(p.source.split(":")[0] for p in mixed)
    assert len(mixed) == 200
    assert by_source["help"] == 100
    assert by_source["safe"] + by_source["oshelp"] + by_source["osharm"] == 100
    assert len({p.pair_id for p in mixed}) == 200  # drawn without replacement
    # Drawn uniformly from the pooled 120: every extra source contributes.
    assert min(by_source["safe"], by_source["oshelp"], by_source["osharm"]) > 0


def test_safety_mix_is_90_percent_safety_and_harmlessness_10_percent_helpfulness():
    sources = {
        SAFETY: pairs_of("safe", 500, "safety"),
        OPEN_SOURCE_HARMLESSNESS: pairs_of("osharm", 400),
        HELPFULNESS: pairs_of("help", 60, "helpfulness"),
        OPEN_SOURCE_HELPFULNESS: pairs_of("oshelp", 1000),
    }
    mixed = mix(SAFETY_RECIPE, sources, seed=1)
    by_source = collections.Counter(p.source.split(":")[0] for p in mixed)
    assert (by_source["safe"], by_source["osharm"]) == (500, 400)
    assert by_source["help"] + by_source["oshelp"] == 100  # 900 * 10 / 90
    assert len(mixed) == 1000


def test_mix_drops_unsafe_chosen_safety_pairs_before_counting():
    unsafe_chosen = {"chosen_safe": False, "rejected_safe": True}
    safety = pairs_of("safe", 8, "safety") + [
        pair(i, "safety", **unsafe_chosen, source=f"dropped:{i}") for i in range(2)
    ]
    # The rule is for safety pairs whose labels are known: these stay.
    kept = [
        pair(10, "helpfulness", **unsafe_chosen, source="help:x"),
        pair(11, "safety", chosen_safe=None, rejected_safe=True, source="safe:x"),
        pair(12, "safety", chosen_safe=True, rejected_safe=False, source="safe:y"),
    ]
    assert drop_unsafe_chosen(safety + kept) == safety[:8] + kept
    recipe = MixRecipe("all", base=(SAFETY,), extra=(HELPFULNESS,), proportion=(1, 1))
    mixed = mix(recipe, {SAFETY: safety, HELPFULNESS: pairs_of("help", 20, "helpfulness")})
    assert not any(p.source.startswith("dropped") for p in mixed)
    assert len(mixed) == 16  # 8 kept safety pairs, and as many helpfulness pairs


def test_a_short_pool_is_used_once_with_a_warning_by_default():
    sources = {HELPFULNESS: pairs_of("help", 10), SAFETY: pairs_of("safe", 4)}
    with pytest.warns(UserWarning, match="asks for 10 pairs .* hold only 4"):
        mixed = mix(HELPFULNESS_RECIPE, sources)
    assert len(mixed) == 14
    assert len({p.pair_id for p in mixed}) == 14


def test_a_short_pool_is_repeated_whole_with_upsampling():
    recipe = MixRecipe(
        "up", base=(HELPFULNESS,), extra=(SAFETY,), proportion=(50, 50), upsample=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixed = mix(recipe, {HELPFULNESS: pairs_of("help", 10), SAFETY: pairs_of("safe", 4)})
    counts = collections.Counter(p.source for p in mixed if p.source.startswith("safe"))
    assert sum(counts.values()) == 10
    assert sorted(counts.values()) == [2, 2, 3, 3]  # 10 = 2 passes of 4, and 2 pairs once more


def test_extra_weights_split_the_count_by_largest_remainder():
    recipe = MixRecipe(
        "weighted",
        base=("base",),
        extra=("a", "b", "c"),
        proportion=(1, 1),
        extra_weights=(1, 1, 2),
    )
    sources = {name: pairs_of(name, 30) for name in ("a", "b", "c")} | {
        "base": pairs_of("base", 10)
    }
    by_source = collections.Counter(p.source.split(":")[0] for p in mix(recipe, sources))
    assert [by_source[name] for name in ("base", "a", "b", "c")] == [10, 3, 2, 5]  # 2.5, 2.5, 5


def test_mix_is_deterministic_for_a_seed():
    sources = {HELPFULNESS: pairs_of("help", 50), SAFETY: pairs_of("safe", 200)}
    first = [p.pair_id for p in mix(HELPFULNESS_RECIPE, sources, seed=3)]
    assert first == [p.pair_id for p in mix(HELPFULNESS_RECIPE, sources, seed=3)]
    assert first != [p.pair_id for p in mix(HELPFULNESS_RECIPE, sources, seed=4)]


def test_mix_rejects_unknown_sources_and_an_empty_pool():
    with pytest.raises(ValueError, match=r"not \['safty'\]"):
        mix(HELPFULNESS_RECIPE, {HELPFULNESS: pairs_of("help", 5), "safty": pairs_of("s", 5)})
    with pytest.raises(ValueError, match="needs 5 pairs from .* which hold none"):
        mix(HELPFULNESS_RECIPE, {HELPFULNESS: pairs_of("help", 5)})
    assert mix(HELPFULNESS_RECIPE, {}) == []


@pytest.mark.parametrize(
    "fields",
    [
        {"base": ()},
        {"base": ("a",), "extra": ("a",), "proportion": (1, 1)},
        {"base": ("a",), "proportion": (1, 1)},
        {"base": ("a",), "extra": ("b",), "proportion": (0, 1)},
        {"base": ("a",), "extra": ("b",), "proportion": (0.9, 0.1)},
        {"base": ("a",), "extra": ("b", "c"), "proportion": (1, 1), "extra_weights": (1,)},
    ],
)
def test_bad_recipes_are_rejected(fields):
    with pytest.raises(ValueError, match="recipe 'bad'"):
        MixRecipe("bad", **fields)


def test_safety_mix_of_the_real_hh_data_has_the_documented_counts():
    def load(name: str, kind: str) -> list[PreferencePair]:
        return load_pairs(shared_path(f"data/hh-rlhf/{name}/test.jsonl.gz"), kind=kind)

    harmless = load("harmless-base", "safety")
    helpful = load("helpful-online", "helpfulness") + load(
        "helpful-rejection-sampled", "helpfulness"
    )
    sources = {OPEN_SOURCE_HARMLESSNESS: harmless, OPEN_SOURCE_HELPFULNESS: helpful}
    mixed = mix(SAFETY_RECIPE, sources, seed=0)
    assert len(mixed) == 2312 + 257  # round(2312 / 9) = 257 helpful pairs
    assert sum(p.kind == "helpfulness" for p in mixed) == 257
    helpfulness_mix = mix(HELPFULNESS_RECIPE, sources, seed=0)  # no platform helpfulness yet
    assert helpfulness_mix == []


# --- the split ----------------------------------------------------------------------------------


def ids(pairs) -> set[str]:
    return {p.pair_id for p in pairs}


def test_split_is_deterministic_and_independent_of_the_input_order():
    pairs = [pair(i) for i in range(500)]
    train, held_out = split(pairs, 0.2, seed=0)
    assert (train, held_out) == split(pairs, 0.2, seed=0)
    assert ids(train) | ids(held_out) == ids(pairs) and not ids(train) & ids(held_out)
    shuffled = pairs[:]
    random.Random(1).shuffle(shuffled)
    train2, held_out2 = split(shuffled, 0.2, seed=0)
    assert (ids(train2), ids(held_out2)) == (ids(train), ids(held_out))
    assert held_out == [p for p in pairs if p.pair_id in ids(held_out)]  # input order kept


def test_a_pair_never_changes_side_when_the_dataset_grows():
    small = [pair(i) for i in range(300)]
    grown = small + [pair(i) for i in range(300, 1000)]
    train, held_out = split(small, 0.2, seed=7)
    grown_train, grown_held_out = split(grown, 0.2, seed=7)
    assert ids(train) <= ids(grown_train) and ids(held_out) <= ids(grown_held_out)


def test_all_pairs_of_one_context_land_on_the_same_side():
    pairs = []
    for i in range(200):
        base = pair(i)
        pairs += [
            base,
            base,  # a duplicate
            PreferencePair(base.context, base.rejected, base.chosen),  # the other ordering
            PreferencePair(base.context, "third answer", base.chosen, pair_id=f"c{i}"),
        ]
    train, held_out = split(pairs, 0.3, seed=0)
    train_contexts = {json.dumps(p.context) for p in train}
    assert not any(json.dumps(p.context) in train_contexts for p in held_out)
    assert len(held_out) % 4 == 0 and held_out


def test_eval_part_grows_monotonically_and_depends_on_the_seed():
    pairs = [pair(i) for i in range(1000)]
    held = [ids(split(pairs, fraction, seed=0)[1]) for fraction in (0.0, 0.1, 0.2, 0.5, 1.0)]
    assert held[0] == set() and held[-1] == ids(pairs)
    assert all(smaller <= larger for smaller, larger in zip(held, held[1:], strict=False))
    assert ids(split(pairs, 0.2, seed=1)[1]) != held[2]
    assert all((eval_score(p, 0) < 0.2) == (p.pair_id in held[2]) for p in pairs)


def test_split_by_first_user_turn_keeps_diverging_conversations_together():
    pairs = [
        PreferencePair([user(f"q{i}"), assistant(f"a{j}"), user("and?")], "x", "y")
        for i in range(100)
        for j in range(3)
    ]
    train, held_out = split(pairs, 0.25, seed=0, by="first_user_turn")
    assert not {p.context[0]["content"] for p in train} & {
        p.context[0]["content"] for p in held_out
    }
    with pytest.raises(ValueError, match="eval_fraction"):
        split(pairs, 1.5)
    with pytest.raises(ValueError, match="unknown split key"):
        split(pairs, by="turn")


def test_split_of_the_real_hh_data_holds_out_about_the_fraction_without_leaks():
    pairs = load_pairs(shared_path("data/hh-rlhf/harmless-base/test.jsonl.gz"))
    train, held_out = split(pairs, 0.2, seed=0)
    assert len(train) + len(held_out) == 2312
    assert abs(len(held_out) / 2312 - 0.2) < 0.03  # 0.186 at seed 0; sd 0.008
    train_contexts = {json.dumps(p.context) for p in train}
    assert not any(json.dumps(p.context) in train_contexts for p in held_out)


def test_pairs_are_frozen():
    with pytest.raises(AttributeError):
        pair(0).chosen = "changed"  # type: ignore[misc]
