"""Reading preference files into records, and telling their format: one reader, one detector.

Shared by the platform's importer (``annotation_app.services.imports``) and the training-data
loader (:func:`rlhf.data.pairs.load_pairs`), so that a file one of them reads is read the same
way by the other: same lines, same numbers, same errors.

Reading (:class:`RecordReader`):

- gzip compression is known from the content (its first two bytes), whatever the file's name;
- lines are split on the bytes and decoded one by one (UTF-8, a leading byte-order mark
  ignored), so a line that is not UTF-8 is an error of that line and the lines after it are
  still read; blank lines hold no record;
- a JSON Lines record is strict JSON: NaN and Infinity, numbers out of a float's range and
  integers of more than :data:`MAX_INTEGER_DIGITS` digits are errors, as is nesting deeper than
  the caller's ``max_depth``; a record that cannot be read is yielded as the
  :class:`~rlhf.data.messages.FieldError` saying why, so that a caller can list every bad line;
- CSV (asked for by the caller) is read strictly, each row a dict keyed by the header;
- the limits the caller gives (``max_bytes`` of uncompressed content, ``max_records``) stop
  reading as soon as they are passed, so a compression bomb costs no more than the limit. The
  uncompressed content is hashed (SHA-256) as it is read.

Formats (:func:`detect_format`, :data:`FORMATS`) are told from a file's first record; what each
holds is documented where it is parsed (the importer; :mod:`rlhf.data.pairs` for the three that
carry preference pairs).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import math
import zlib
from collections.abc import Iterator
from typing import IO, Any

from rlhf.data.hh_rlhf import HH_ASSISTANT
from rlhf.data.messages import FieldError

FORMATS = ("prompts", "canonical", "trl", "hh-rlhf")

GZIP_MAGIC = b"\x1f\x8b"  # the first two bytes of every gzip file
READ_CHUNK_BYTES = 1 << 16
# Integers are refused past this many digits, before Python converts them (its own limit, of
# 4,300 digits, answers with advice for programmers); no field of any format needs more.
MAX_INTEGER_DIGITS = 100
# The widest field csv can be told to accept: its limit is a C long.
_CSV_FIELD_MAX = 2**31 - 1


# --- the format ---------------------------------------------------------------------------------


def detect_format(record: Any) -> str:
    """The format (one of :data:`FORMATS`) of a file, from its first record.

    A string, or an object without both ``chosen`` and ``rejected`` nor ``responses``, is a
    prompt; ``responses`` make a canonical record; ``chosen`` and ``rejected`` make TRL, or
    HH-RLHF when there is no ``prompt`` and ``chosen`` is a transcript (a string holding an
    ``"\\n\\nAssistant:"`` marker). Anything but an object or a string is a :class:`FieldError`.
    """
    if isinstance(record, str):
        return "prompts"
    if not isinstance(record, dict):
        raise FieldError("each line must be a JSON object or string")
    if "responses" in record:
        return "canonical"
    if "chosen" in record and "rejected" in record:
        chosen = record["chosen"]
        if "prompt" not in record and isinstance(chosen, str) and HH_ASSISTANT in chosen:
            return "hh-rlhf"
        return "trl"
    return "prompts"


# --- where reading stops ------------------------------------------------------------------------


class ReadingStopped(Exception):
    """Reading stopped before the end of the file; ``line`` is where (0: the file as a whole).

    The message says why, in words fit for the person who gave the file.
    """

    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


class FileTooLarge(ReadingStopped):
    """The uncompressed content passed ``max_bytes``; ``line`` is the line being read."""


class TooManyRecords(ReadingStopped):
    """The file holds more than ``max_records`` records; ``line`` is the first one past it."""


class UnreadableGzip(ReadingStopped):
    """The gzip stream is damaged (truncated, corrupt, trailing bytes); ``line`` is 0, since
    decompressed text is read ahead of the lines checked: the damage lies past them."""


# --- bytes --------------------------------------------------------------------------------------


class _Overflow(Exception):
    """Raised by :class:`_MeteredReader` past its limit; turned into :class:`FileTooLarge`."""


class _MeteredReader(io.RawIOBase):
    """The file's (uncompressed) bytes, counted and hashed as they are read.

    Reading past ``max_bytes`` raises :class:`_Overflow`; no more than one byte beyond the
    limit is ever asked of the source, so a gzip bomb is decompressed no further than that.
    """

    def __init__(self, source: IO[bytes], max_bytes: int | None):
        self._source = source
        self._max_bytes = max_bytes
        self.bytes_read = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        wanted = len(buffer)
        if self._max_bytes is not None:
            wanted = min(wanted, self._max_bytes + 1 - self.bytes_read)
        data = self._source.read(wanted)
        self.bytes_read += len(data)
        if self._max_bytes is not None and self.bytes_read > self._max_bytes:
            raise _Overflow
        self.sha256.update(data)
        buffer[: len(data)] = data
        return len(data)


class _Rejoined(io.RawIOBase):
    """The bytes ``head``, already read from ``source``, then the rest of ``source``."""

    def __init__(self, head: bytes, source: IO[bytes]):
        self._head = head
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            data, self._head = self._head[: len(buffer)], self._head[len(buffer) :]
        else:
            data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


# --- one line, one record -----------------------------------------------------------------------


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FieldError(
            f"not valid UTF-8: byte 0x{raw[error.start]:02x} at position {error.start + 1} of "
            "the line; save the file as UTF-8"
        ) from None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is too large")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise ValueError(f"an integer of {digits:,} digits is too large")
    return int(text)


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest in ``value`` more than ``limit`` levels deep (looked at
    without recursion, and no deeper than the first level past the limit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend(
                (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    return False


def _json_record(text: str, max_depth: int | None) -> Any:
    """One JSON line, or a :class:`FieldError` saying what is wrong with it."""
    too_deep = (
        "nested too deeply" if max_depth is None else f"nested more than {max_depth} levels deep"
    )
    try:
        value = json.loads(
            text,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            parse_constant=_reject_constant,
        )
    except json.JSONDecodeError as error:
        raise FieldError(f"invalid JSON: {error.msg} (column {error.colno})") from None
    except RecursionError:
        raise FieldError(too_deep) from None
    except ValueError as error:  # a number out of range, NaN or Infinity
        raise FieldError(f"invalid JSON: {error}") from None
    if max_depth is not None and nested_deeper_than(value, max_depth):
        raise FieldError(too_deep)
    return value


# --- the reader ---------------------------------------------------------------------------------


class RecordReader:
    """The numbered records of a file (plain or gzip-compressed): JSON Lines, or CSV.

    Iterating yields ``(line number, record)``; a record that cannot be read is yielded as the
    :class:`FieldError` saying why, and reading goes on. Reading stops with a
    :class:`ReadingStopped` (:class:`FileTooLarge`, :class:`TooManyRecords`,
    :class:`UnreadableGzip`). ``max_depth`` bounds the nesting of JSON records (None: only
    Python's recursion does). Iterate once.
    """

    def __init__(
        self,
        stream: IO[bytes],
        *,
        csv: bool = False,
        max_bytes: int | None = None,
        max_records: int | None = None,
        max_depth: int | None = None,
    ):
        head = stream.read(len(GZIP_MAGIC))
        self.compressed = head.startswith(GZIP_MAGIC)
        self.csv = csv
        source: IO[bytes] = _Rejoined(head, stream)
        if self.compressed:
            source = gzip.GzipFile(fileobj=source, mode="rb")
        self._reader = _MeteredReader(source, max_bytes)
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.max_depth = max_depth
        self.line = 0  # lines read so far: where reading stopped, if it stops early
        self.records = 0  # records yielded so far, unreadable ones included

    @property
    def sha256(self) -> str:
        """The SHA-256 of the uncompressed bytes read so far (all of them, once read)."""
        return self._reader.sha256.hexdigest()

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        records = self._csv_rows() if self.csv else self._json_records()
        try:
            for line, record in records:
                if self.max_records is not None and self.records >= self.max_records:
                    raise TooManyRecords(
                        f"the file holds more than {self.max_records:,} records", line
                    )
                self.records += 1
                yield line, record
        except _Overflow:
            raise FileTooLarge(
                f"the file is larger than {self.max_bytes:,} bytes uncompressed", self.line + 1
            ) from None
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise UnreadableGzip(
                f"unreadable gzip file: {error}; reading stopped after line {self.line} "
                "(is the file whole?)",
                0,
            ) from None

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """The numbered lines, as bytes ending in ``\\n`` (the last one may not)."""
        for raw in io.BufferedReader(self._reader, buffer_size=READ_CHUNK_BYTES):
            self.line += 1
            if self.line == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            yield self.line, raw

    def _json_records(self) -> Iterator[tuple[int, Any]]:
        for line_number, raw in self._lines():
            if not raw.strip():
                continue
            try:
                yield line_number, _json_record(_decode(raw), self.max_depth)
            except FieldError as error:
                yield line_number, error

    def _csv_rows(self) -> Iterator[tuple[int, Any]]:
        """Yield (line on which the row starts, row as a dict keyed by the header) pairs.

        Blank lines are skipped; missing trailing fields read as None, like ``csv.DictReader``.
        The reader is strict: a quote left open at the end of the file is an error, not a field
        that silently swallows the rest of the file. A line that is not UTF-8 is an error of the
        row it belongs to (the row is then skipped; the rows after it are still checked), unless
        it is the header's: without column names no row can be read, so reading stops there.
        """
        # A field may be as large as the file (csv's own limit is 128 KiB).
        widest = _CSV_FIELD_MAX if self.max_bytes is None else min(self.max_bytes, _CSV_FIELD_MAX)
        csv.field_size_limit(max(csv.field_size_limit(), widest))
        undecodable: list[tuple[int, FieldError]] = []

        def texts() -> Iterator[str]:
            for number, raw in self._lines():
                try:
                    yield _decode(raw)
                except FieldError as error:
                    undecodable.append((number, error))
                    yield raw.decode("utf-8", errors="replace")

        reader = csv.reader(texts(), strict=True)
        header: list[str] | None = None
        while True:
            line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                yield from undecodable
                return
            except csv.Error as error:
                yield from undecodable
                if str(error) == "unexpected end of data":
                    message = "a quoted field that starts on this line is never closed"
                else:
                    message = f"bad CSV: {error}"
                yield line, FieldError(message)
                return
            if undecodable:
                if header is None:
                    for number, error in undecodable:
                        yield number, FieldError(f"{error} (the header: no row below it was read)")
                    return
                yield from undecodable
                undecodable.clear()
                continue
            if not row:
                continue
            if header is None:
                header = row
                continue
            yield line, {name: row[i] if i < len(row) else None for i, name in enumerate(header)}
