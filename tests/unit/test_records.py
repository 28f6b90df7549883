"""The one record reader and format detector (rlhf.data.records), and its two users.

The platform's importer (``read_file``) and the training-data loader (``load_pairs``) read a
file through the same reader and tell its format with the same detector: the tests here hold
each path to the other on the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from pathlib import Path

import pytest

from annotation_app.models import Batch
from annotation_app.services.imports import ImportFailed, read_file
from rlhf.data.messages import FieldError
from rlhf.data.pairs import DataError, load_pairs
from rlhf.data.records import (
    FORMATS,
    FileTooLarge,
    RecordReader,
    TooManyRecords,
    UnreadableGzip,
    detect_format,
)
from tests.messages import assistant, hh, user

TRL = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}
IMPLICIT_TRL = {
    "chosen": [user("Hi"), assistant("Hello")],
    "rejected": [user("Hi"), assistant("Go away")],
}
HH = {"chosen": hh("Hi", "Hello"), "rejected": hh("Hi", "Go away")}
CANONICAL = {
    "conversation": [user("What is 2 + 2?")],
    "responses": [{"slot": 1, "text": "4"}, {"slot": 2, "text": "5"}],
    "preferred": 1,
}
PROMPT = {"prompt": "Why is the sky blue?"}


def jsonl(*records) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def read(data: bytes, **limits) -> list[tuple[int, object]]:
    """(line, record) of ``data``; an unreadable record as its message."""
    return [
        (line, str(record) if isinstance(record, FieldError) else record)
        for line, record in RecordReader(io.BytesIO(data), **limits)
    ]


def imported(data: bytes, filename: str = "data.jsonl", file_format: str | None = None):
    return read_file(io.BytesIO(data), filename, Batch(kind="helpfulness"), file_format)


def import_errors(data: bytes, filename: str = "data.jsonl") -> list[tuple[int, str | None, str]]:
    with pytest.raises(ImportFailed) as caught:
        imported(data, filename)
    return [(e.line, e.field, e.message) for e in caught.value.errors]


def loaded(tmp_path: Path, data: bytes, filename: str = "data.jsonl"):
    path = tmp_path / filename
    path.write_bytes(data)
    return load_pairs(path)


def load_error(tmp_path: Path, data: bytes, filename: str = "data.jsonl") -> DataError:
    with pytest.raises(DataError) as caught:
        loaded(tmp_path, data, filename)
    return caught.value


def pair_texts(pairs) -> list[tuple[list, str, str]]:
    return [(p.context, p.chosen, p.rejected) for p in pairs]


# --- the detector -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("Why is the sky blue?", "prompts"),
        (PROMPT, "prompts"),
        ({"chosen": "only one side"}, "prompts"),
        (CANONICAL, "canonical"),
        (TRL, "trl"),
        (IMPLICIT_TRL, "trl"),
        (HH, "hh-rlhf"),
        ({"prompt": "Hi", "chosen": hh("x", "y"), "rejected": "z"}, "trl"),  # it has a prompt
    ],
)
def test_the_detector_knows_every_format(record, expected):
    assert expected in FORMATS
    assert detect_format(record) == expected


@pytest.mark.parametrize("record", [42, [1, 2], None, True])
def test_the_detector_refuses_records_that_are_neither_objects_nor_strings(record):
    with pytest.raises(FieldError, match="JSON object or string"):
        detect_format(record)


@pytest.mark.parametrize(
    ("record", "expected"),
    [(TRL, "trl"), (IMPLICIT_TRL, "trl"), (HH, "hh-rlhf"), (CANONICAL, "canonical")],
)
def test_both_paths_detect_a_pair_format_alike(tmp_path, record, expected):
    data = jsonl(record, record)
    assert imported(data).format == expected
    # load_pairs reads it as that format: the same pairs as when the format is named.
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(data)
    assert pair_texts(load_pairs(path)) == pair_texts(load_pairs(path, file_format=expected))


def test_a_prompts_file_is_imported_and_refused_for_training_naming_the_format(tmp_path):
    data = jsonl(PROMPT, "A second prompt")
    assert imported(data).format == "prompts"
    error = load_error(tmp_path, data, "prompts.jsonl")
    assert (error.line, error.field) == (1, None)
    assert "format 'prompts'" in error.message and "no preference pair" in error.message
    with pytest.raises(DataError, match="prompts file holds no preference pairs"):
        load_pairs(tmp_path / "prompts.jsonl", file_format="prompts")


# --- plain and gzip -----------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz", "pairs.txt"])
def test_plain_and_gzip_files_read_identically_by_both_paths_whatever_their_name(
    tmp_path, compress, name
):
    plain = b"\xef\xbb\xbf" + jsonl(TRL) + b"\n  \n" + jsonl(IMPLICIT_TRL)  # a BOM, blank lines
    data = gzip.compress(plain) if compress else plain
    assert RecordReader(io.BytesIO(data)).compressed is compress
    assert read(data) == [(1, TRL), (4, IMPLICIT_TRL)]

    parsed = imported(data, name)
    pairs = loaded(tmp_path, data, name)
    assert parsed.format == "trl" and parsed.records == 2
    assert parsed.sha256 == hashlib.sha256(plain).hexdigest()
    assert [c.context for c in parsed.comparisons] == [p.context for p in pairs]
    assert [[r.text for r in c.responses] for c in parsed.comparisons] == [
        [p.chosen, p.rejected] for p in pairs
    ]
    # Both number the lines alike: the source of each names line 1 and line 4.
    assert [c.source.rsplit(":", 1)[1] for c in parsed.comparisons] == ["1", "4"]
    assert [p.source.rsplit(":", 1)[1] for p in pairs] == ["1", "4"]


def test_a_damaged_gzip_stream_stops_both_paths_with_the_same_words(tmp_path):
    truncated = gzip.compress(jsonl(TRL) * 50)[:-12]
    with pytest.raises(UnreadableGzip) as caught:
        read(truncated)
    assert caught.value.line == 0
    message = str(caught.value)
    assert message.startswith("unreadable gzip file: ")
    assert "reading stopped after line" in message
    assert import_errors(truncated, "cut.jsonl.gz") == [(0, None, message)]
    error = load_error(tmp_path, truncated, "cut.jsonl.gz")
    assert (error.line, error.field, error.message) == (None, None, message)


# --- bad lines ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            b"{not json",
            "invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        ),
        (b'{"prompt": "Hi", "x": NaN}', "invalid JSON: NaN is not a number JSON allows"),
        (b'{"prompt": "Hi", "x": 1e400}', "invalid JSON: the number 1e400 is too large"),
        (
            b'{"prompt": "Hi", "x": ' + b"9" * 101 + b"}",
            "invalid JSON: an integer of 101 digits is too large",
        ),
        (b'{"prompt": "caf\xe9"}', "not valid UTF-8: byte 0xe9 at position 16 of the line"),
    ],
    ids=["syntax", "nan", "overflow", "digits", "utf-8"],
)
def test_a_bad_line_is_an_error_of_its_line_in_the_same_words_on_both_paths(
    tmp_path, line, message
):
    data = jsonl(TRL, TRL) + line + b"\n" + jsonl(TRL)
    records = read(data)
    assert [number for number, _ in records] == [1, 2, 3, 4]  # reading went on past it
    assert records[2][1].startswith(message)
    (only,) = import_errors(data)
    assert only[:2] == (3, None) and only[2].startswith(message)
    error = load_error(tmp_path, data)
    assert (error.line, error.field, error.message) == (3, None, only[2])


def test_nesting_is_bounded_by_the_callers_depth_and_else_only_by_recursion():
    nested = b"[" * 10 + b"]" * 10 + b"\n"
    assert read(nested, max_depth=10) == [(1, json.loads(nested))]
    assert read(nested, max_depth=9) == [(1, "nested more than 9 levels deep")]
    assert read(nested) == [(1, json.loads(nested))]
    assert read(b"[" * 100_000 + b"]" * 100_000) == [(1, "nested too deeply")]


# --- limits -------------------------------------------------------------------------------------


def test_the_record_limit_stops_reading_at_the_first_record_past_it():
    data = jsonl("one", "two") + b"\n" + jsonl("three", "four")
    assert [line for line, _ in read(data, max_records=4)] == [1, 2, 4, 5]
    reader = RecordReader(io.BytesIO(data), max_records=2)
    seen = []
    with pytest.raises(TooManyRecords, match="the file holds more than 2 records") as caught:
        seen.extend(reader)
    assert caught.value.line == 4  # the third record's line; nothing past it was read
    assert [line for line, _ in seen] == [1, 2] and reader.records == 2


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_the_byte_limit_counts_uncompressed_bytes_and_stops_reading(compress):
    data = jsonl("A prompt") * 10  # 110 bytes
    source = gzip.compress(data) if compress else data
    assert len(read(source, max_bytes=len(data))) == 10  # at the limit: fine
    reader = RecordReader(io.BytesIO(source), max_bytes=len(data) - 1)
    seen = []
    with pytest.raises(FileTooLarge, match="larger than 109 bytes uncompressed") as caught:
        seen.extend(reader)
    # Bytes are read ahead of the lines: the limit passed before line 1 was done with.
    assert (caught.value.line, seen) == (1, [])


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_rows_are_dicts_keyed_by_the_header_on_the_line_they_start():
    data = b'prompt,category\nHi,a\n\n"Two\nlines",b\nshort\n'
    assert read(data, csv=True) == [
        (2, {"prompt": "Hi", "category": "a"}),
        (4, {"prompt": "Two\nlines", "category": "b"}),
        (6, {"prompt": "short", "category": None}),
    ]
    assert read(gzip.compress(data), csv=True) == read(data, csv=True)
    assert read(b'prompt\n"never closed\n', csv=True) == [
        (2, "a quoted field that starts on this line is never closed")
    ]
