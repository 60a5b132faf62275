"""The processed record: one JSON object per line of a ``*.jsonl`` file.

=================  ======  =====================================================
field              type    meaning
=================  ======  =====================================================
instruction        str     problem statement (CodeContests ``description``)
input              str     worked examples shown in the prompt ("" if none)
output             str     the solution program: the response the model learns
task_id            str     unique per record, e.g. ``"1548_E/correct/3"``
is_correct         bool    the solution passes the problem's tests
metadata           object  ``source`` (str), ``difficulty`` (int, 0 = unknown),
                           ``problem_id`` (str, shared by a problem's records),
                           plus optional keys below
=================  ======  =====================================================

Optional metadata keys: ``language`` ("python3" / "python2"), ``python2`` (bool),
``cf_rating`` (int), ``origin`` (platform), ``bug`` (synthetic bug kind), ``bug_offset``
(int, where a synthetic bug starts in ``output``: see ``data.synthetic``), ``tests``
and ``humaneval`` (the test format, below).

Limits checked on every read, in the one streaming pass that validates and indexes a file
(``file:line`` errors, exit 2; with ``skip_invalid`` the first two lines are skipped):

- a line (one record) is at most :data:`MAX_RECORD_BYTES` (8 MiB) of UTF-8: a larger one
  is refused before it is decoded or tokenised;
- ``metadata.tests`` holds at most :data:`MAX_TESTS_PER_RECORD` (1000) tests;
- ``task_id`` is unique within a file: a repeat is reported with both line numbers (also
  with ``skip_invalid``: a duplicate is not a malformed line but an ambiguous data set).

Test format (what an evaluator runs a generated program against):

- stdin/stdout problems (synthetic, CodeContests): ``metadata.tests`` is a list of
  ``{"input": str, "output": str}``. A program passes a test when, fed ``input`` on
  stdin, its stdout matches ``output`` under :func:`outputs_match` (line by line,
  trailing whitespace of each line and trailing empty lines ignored). Read them with
  :func:`tests_of`.
- HumanEval: ``metadata.humaneval = {"prompt", "test", "entry_point"}``; the evaluator
  checks :func:`check_parts` (solution = prompt + completion, test, entry point) in a
  harness that passes only when ``check(entry_point)`` returned and the function returned
  plain data (``evaluation.checks``); :func:`check_program` is the same as one plain
  script (prompt + completion + test + ``check(entry_point)``), for trusted code only.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weighted_mtp.errors import UserError

# One record (a jsonl line, without its newline) is at most this many bytes: the largest
# shipped record is ~1.2 KB, a CodeContests one with its tests well under 1 MiB. A larger
# line is refused before it is decoded (a 200 MB instruction would otherwise exhaust memory
# in the tokenizer).
MAX_RECORD_BYTES = 8 << 20
# ``metadata.tests`` of one record holds at most this many tests (every test is a sandboxed
# run per scored program; the shipped data has at most 6, CodeContests' public + private
# tests rarely more than a few hundred).
MAX_TESTS_PER_RECORD = 1000
# What an index certifies about its file (saved with it; an index built under other limits
# is rebuilt, so a cached index never hides these checks).
CHECKS = f"record_bytes<={MAX_RECORD_BYTES};tests<={MAX_TESTS_PER_RECORD};unique_task_id"
REQUIRED_METADATA: dict[str, type] = {"source": str, "difficulty": int, "problem_id": str}
_FIELDS: dict[str, type] = {
    "instruction": str,
    "input": str,
    "output": str,
    "task_id": str,
    "is_correct": bool,
    "metadata": dict,
}


@dataclass
class Record:
    """One processed sample. ``row`` is its position in the file's index (not serialized)."""

    instruction: str
    input: str
    output: str
    task_id: str
    is_correct: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    row: int = -1

    @property
    def difficulty(self) -> int:
        return int(self.metadata["difficulty"])

    @property
    def problem_id(self) -> str:
        return str(self.metadata["problem_id"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "instruction": self.instruction,
            "input": self.input,
            "output": self.output,
            "task_id": self.task_id,
            "is_correct": self.is_correct,
            "metadata": self.metadata,
        }

    def to_json(self) -> str:
        """One jsonl line (no newline); non-ASCII kept as is."""
        return json.dumps(self.to_dict(), ensure_ascii=False)


class RecordError(ValueError):
    """A line that is not a valid record; the message says what is wrong, ``fix`` (when
    given) how to repair it."""

    def __init__(self, reason: str, fix: str | None = None) -> None:
        super().__init__(reason)
        self.fix = fix


class RecordTooLarge(UserError):
    """A record over :data:`MAX_RECORD_BYTES` or :data:`MAX_TESTS_PER_RECORD` (writers
    raise it before writing; a converter may drop the record and count it)."""


def _size(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


TOO_LONG_FIX = (
    f"records are at most {_size(MAX_RECORD_BYTES)} ({MAX_RECORD_BYTES} bytes, "
    "weighted_mtp.data.records.MAX_RECORD_BYTES): shorten or delete this line, or skip it "
    "(--skip-invalid)"
)


def tests_over_cap(n: int) -> RecordError:
    return RecordError(
        f"metadata.tests has {n} tests, over the cap of {MAX_TESTS_PER_RECORD} per record",
        f"keep at most {MAX_TESTS_PER_RECORD} tests in this record "
        "(weighted_mtp.data.records.MAX_TESTS_PER_RECORD), or skip it (--skip-invalid)",
    )


class TooLong:
    """Stands for a line over the size cap in :func:`iter_lines` (its bytes are not
    read into memory)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap


def _type_ok(value: Any, expected: type) -> bool:
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _check_fields(obj: dict[str, Any], fields: dict[str, type], prefix: str = "") -> None:
    """Every one of ``fields`` is in ``obj`` with its type; RecordError naming the first
    that is not (``prefix``: where ``obj`` sits, e.g. ``metadata.``)."""
    for name, expected in fields.items():
        if name not in obj:
            raise RecordError(f"missing field '{prefix}{name}'")
        if not _type_ok(obj[name], expected):
            raise RecordError(
                f"field '{prefix}{name}' must be {expected.__name__}, "
                f"got {type(obj[name]).__name__}"
            )


def validate_record(obj: Any) -> Record:
    """Check a decoded JSON value against the schema; raise RecordError naming the field."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    _check_fields(obj, _FIELDS)
    meta = obj["metadata"]
    _check_fields(meta, REQUIRED_METADATA, "metadata.")
    tests = meta.get("tests")
    if tests is not None and not (
        isinstance(tests, list)
        and all(
            isinstance(t, dict)
            and isinstance(t.get("input"), str)
            and isinstance(t.get("output"), str)
            for t in tests
        )
    ):
        raise RecordError("field 'metadata.tests' must be a list of {input: str, output: str}")
    if tests is not None and len(tests) > MAX_TESTS_PER_RECORD:
        raise tests_over_cap(len(tests))
    return Record(**{name: obj[name] for name in _FIELDS})


def parse_line(line: str | bytes, path: str | Path, lineno: int) -> Record:
    """Decode and validate one line; UserError names ``path:lineno`` (1-based) and the fix."""
    try:
        return validate_record(json.loads(line))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = f"invalid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
    except RecordError as exc:
        if exc.fix:
            raise UserError(f"{path}:{lineno}: {exc}. Fix: {exc.fix}.") from None
        reason = str(exc)
    raise UserError(
        f"{path}:{lineno}: malformed record: {reason}. Fix or delete this line, "
        "or skip bad lines (skip_invalid=True / --skip-invalid)."
    )


@dataclass
class ReadStats:
    """What a read saw: valid records and skipped (malformed) lines."""

    records: int = 0
    skipped: int = 0
    skipped_lines: list[int] = field(default_factory=list)


def iter_lines(
    path: str | Path, digest: Any = None, max_bytes: int = MAX_RECORD_BYTES
) -> Iterator[tuple[int, int, bytes | TooLong]]:
    """Yield ``(lineno (1-based), byte offset, raw line without newline)`` for non-blank
    lines; every byte read goes to ``digest.update`` too when a digest (hashlib) is given.

    A line over ``max_bytes`` is yielded as a :class:`TooLong` as soon as its first
    ``max_bytes + 2`` bytes are read; the rest of it is streamed past (never held whole)
    only if the caller asks for the next line.
    """
    offset = 0
    limit = max_bytes + 2  # the body and its "\r\n"
    with open(path, "rb") as fh:
        lineno = 0
        while raw := fh.readline(limit):
            lineno += 1
            if digest is not None:
                digest.update(raw)
            start = offset
            offset += len(raw)
            body = raw.rstrip(b"\r\n")
            if len(body) > max_bytes or (len(raw) == limit and not raw.endswith(b"\n")):
                yield lineno, start, TooLong(max_bytes)
                while not raw.endswith(b"\n") and (raw := fh.readline(1 << 20)):
                    if digest is not None:
                        digest.update(raw)
                    offset += len(raw)
            elif body.strip():
                yield lineno, start, body


def read_records(
    path: str | Path, skip_invalid: bool = False, stats: ReadStats | None = None
) -> Iterator[Record]:
    """Stream validated records from a jsonl file.

    A malformed line raises UserError (``file:line: reason``) unless ``skip_invalid``;
    then it is skipped and counted in ``stats`` (pass a ReadStats to read the counts).
    Blank lines are ignored. ``Record.row`` is the record's position among valid records.
    """
    for *_, rec in valid_lines(path, iter_lines(path), skip_invalid, stats):
        yield rec


def valid_lines(
    path: str | Path,
    lines: Iterable[tuple[int, int, bytes | TooLong]],
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[tuple[int, int, int, Record]]:
    """``(lineno, offset, length, record)`` of each valid line of ``lines`` (from
    :func:`iter_lines`). A malformed line (or one over the size cap) raises UserError
    (``file:line: reason``) unless ``skip_invalid``; then it is skipped and counted in
    ``stats``. Once every line is read, a repeated ``task_id`` raises UserError naming
    both lines (whatever ``skip_invalid``)."""
    stats = stats if stats is not None else ReadStats()
    ids = TaskIds()
    for lineno, offset, body in lines:
        try:
            if isinstance(body, TooLong):
                raise UserError(
                    f"{path}:{lineno}: the line is longer than {_size(body.cap)} ({body.cap} "
                    f"bytes), the cap of one record. Fix: {TOO_LONG_FIX}."
                )
            rec = parse_line(body, path, lineno)
        except UserError:
            if not skip_invalid:
                raise
            stats.skipped += 1
            stats.skipped_lines.append(lineno)
            continue
        rec.row = stats.records
        stats.records += 1
        ids.add(rec.task_id, lineno, offset)
        yield lineno, offset, len(body), rec
    ids.check(str(path), lambda off: _task_id_at(path, off))


def _task_id_at(path: str | Path, offset: int) -> str | None:
    with open(path, "rb") as fh:
        fh.seek(offset)
        try:
            return json.loads(fh.readline(MAX_RECORD_BYTES + 2))["task_id"]
        except (ValueError, KeyError, TypeError):
            return None


class TaskIds:
    """Finds repeated ``task_id`` s of a file in O(n log n) with 24 bytes per record:
    ``add`` keeps the id's hash, line and offset; ``check`` sorts the hashes and reads back
    only the lines whose hashes clash (``task_id_at(offset)``) to confirm and name them."""

    def __init__(self) -> None:
        self._hash = array("q")
        self._line = array("q")
        self._offset = array("q")

    def add(self, task_id: str, line: int, offset: int) -> None:
        self._hash.append(hash(task_id))
        self._line.append(line)
        self._offset.append(offset)

    def check(self, source: str, task_id_at: Callable[[int], str | None]) -> None:
        """Raise UserError for the first repeated id (by its second line), if any."""
        if len(self._hash) < 2:
            return
        h = np.frombuffer(self._hash, dtype=np.int64)
        order = np.argsort(h, kind="stable")
        sorted_h = h[order]
        clash = np.flatnonzero(sorted_h[1:] == sorted_h[:-1])
        if clash.size == 0:
            return
        first: dict[str, int] = {}
        found: list[tuple[int, int, str]] = []  # (second line, first line, id)
        for j in np.unique(np.concatenate([clash, clash + 1])):
            k = int(order[j])
            tid = task_id_at(int(self._offset[k]))
            if tid is None:
                continue
            line = int(self._line[k])
            if tid in first:
                found.append((max(line, first[tid]), min(line, first[tid]), tid))
            else:
                first[tid] = line
        if found:
            line, prev, tid = min(found)
            more = f" ({len(found)} repeats in the file)" if len(found) > 1 else ""
            raise UserError(
                f"{source}:{line}: duplicate task_id {tid!r} (first at line {prev}){more}. "
                "Fix: task_id must be unique within a file: rename or delete one of the "
                "two records."
            )


def normalize_output(text: str) -> str:
    """Program output as label verification and evaluation compare it: ``\\r\\n`` read as
    ``\\n``, trailing whitespace of every line and trailing empty lines dropped. Only
    ``\\n`` separates lines: a ``\\r`` or ``\\x0c`` inside a line stays."""
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def outputs_match(actual: str, expected: str) -> bool:
    """Compare program output with the expected output, line by line
    (:func:`normalize_output`); everything else (separators, case, number formatting)
    must match exactly."""
    return normalize_output(actual) == normalize_output(expected)


def kind_of_tests(record: Record) -> str:
    """``"stdio"`` (metadata.tests), ``"humaneval"`` (metadata.humaneval) or ``"none"``."""
    if "humaneval" in record.metadata:
        return "humaneval"
    return "stdio" if record.metadata.get("tests") else "none"


def tests_of(record: Record) -> list[dict[str, str]]:
    """The stdin/stdout tests of a record: a list of ``{"input": str, "output": str}``.

    Empty for records without stdio tests (HumanEval: use :func:`check_program`).
    """
    return [{"input": t["input"], "output": t["output"]} for t in record.metadata.get("tests", [])]


tests_of.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported


def check_parts(record: Record, completion: str) -> tuple[str, str, str]:
    """``(solution, test, entry_point)`` of a HumanEval record: solution = prompt +
    ``completion``, test = the code defining ``check``."""
    he = record.metadata.get("humaneval")
    if he is None:
        raise ValueError(f"record {record.task_id} has no HumanEval tests (metadata.humaneval)")
    return he["prompt"] + completion, he["test"], he["entry_point"]


def check_program(record: Record, completion: str) -> str:
    """The HumanEval program for ``completion`` as one script that exits 0 iff ``check``
    passes: trusted code only (an early exit passes too; see :func:`check_parts`)."""
    solution, test, entry_point = check_parts(record, completion)
    return humaneval_program("", solution, test, entry_point)


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """HumanEval-style program: solution, test code (defining ``check``), ``check(entry)``."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def format_examples(tests: list[dict[str, str]]) -> str:
    """Render tests as the prompt's worked examples (the ``input`` field)."""
    blocks = []
    for i, t in enumerate(tests, start=1):
        blocks.append(
            f"Example {i}\nInput:\n{t['input'].rstrip()}\nOutput:\n{t['output'].rstrip()}"
        )
    return "\n\n".join(blocks)
