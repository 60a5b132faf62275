"""A compact index beside each processed jsonl, so nothing parses the whole file to sample.

``train.jsonl`` -> ``train.index.npz`` holding one structured numpy array ``rows``
(one row per valid record, in file order) and the problem-id table:

=========== ======= ==============================================
column      dtype   meaning
=========== ======= ==============================================
offset      int64   byte offset of the line in the jsonl
length      int32   byte length of the line (without the newline)
line        int64   1-based line number in the file
is_correct  bool    the record's label
difficulty  int16   ``metadata.difficulty``
problem     int32   position of ``metadata.problem_id`` in ``problems``
=========== ======= ==============================================

A row number is a *record id*: the sampler yields them and ``ProcessedDataset`` reads
them. The index also records what it was built from: the jsonl's byte size, its mtime
(ns) and the sha256 of its content (computed while streaming). When size or mtime differ,
the file is hashed again: same content -> the index is kept (its mtime updated), other
content (a same-size edit included) -> the index is rebuilt (streaming, one line at a
time). An index of an older layout (without these) is rebuilt too, and so is one built
under other record checks (``records.CHECKS``: size cap, tests cap, unique task ids, all
run during the same streaming pass): a cached index never hides a check.
"""

from __future__ import annotations

import hashlib
import json
import logging
from array import array
from pathlib import Path

import numpy as np

from weighted_mtp.data.records import (
    CHECKS,
    MAX_RECORD_BYTES,
    MAX_TESTS_PER_RECORD,
    ReadStats,
    Record,
    RecordTooLarge,
    TaskIds,
    iter_lines,
    valid_lines,
)
from weighted_mtp.errors import UserError
from weighted_mtp.fileio import AtomicFile

log = logging.getLogger(__name__)

ROW_DTYPE = np.dtype(
    [
        ("offset", "<i8"),
        ("length", "<i4"),
        ("line", "<i8"),
        ("is_correct", "?"),
        ("difficulty", "<i2"),
        ("problem", "<i4"),
    ]
)
DIFFICULTY_RANGE = (int(np.iinfo(np.int16).min), int(np.iinfo(np.int16).max))


def index_path(jsonl: str | Path) -> Path:
    """``x/train.jsonl`` -> ``x/train.index.npz``."""
    p = Path(jsonl)
    return p.with_name(p.name.removesuffix(".jsonl") + ".index.npz")


class Index:
    """Per-record columns of one processed jsonl (see the module docstring).

    ``source``: what it was built from: ``size``, ``mtime_ns``, ``sha256`` of the jsonl.
    """

    def __init__(self, rows: np.ndarray, problems: list[str], source: dict[str, int | str]):
        self.rows = rows
        self.problems = problems
        self.source = source

    @property
    def file_size(self) -> int:
        return int(self.source["size"])

    @property
    def content_sha256(self) -> str:
        return str(self.source["sha256"])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def is_correct(self) -> np.ndarray:
        return self.rows["is_correct"]

    @property
    def difficulty(self) -> np.ndarray:
        return self.rows["difficulty"]

    @property
    def problem(self) -> np.ndarray:
        return self.rows["problem"]

    def save(self, path: str | Path) -> None:
        with AtomicFile(path) as f:  # ranks that rebuild a missing index at once: no clash
            np.savez(
                f,
                rows=self.rows,
                problems=np.array(self.problems, dtype=str),
                file_size=np.int64(self.source["size"]),
                mtime_ns=np.int64(self.source["mtime_ns"]),
                sha256=np.array(self.source["sha256"]),
                checks=np.array(CHECKS),
            )

    @classmethod
    def load(cls, path: str | Path) -> Index | None:
        """The saved index, or None when it is unreadable, of an older layout or built
        under other record checks than today's (``records.CHECKS``)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if "sha256" not in z.files or "mtime_ns" not in z.files:
                    return None
                if "checks" not in z.files or str(z["checks"]) != CHECKS:
                    return None
                source = {
                    "size": int(z["file_size"]),
                    "mtime_ns": int(z["mtime_ns"]),
                    "sha256": str(z["sha256"]),
                }
                return cls(z["rows"], z["problems"].tolist(), source)
        except (OSError, ValueError, KeyError):
            return None

    @classmethod
    def for_jsonl(cls, jsonl: str | Path, build: bool = True) -> Index:
        """Load the index of ``jsonl``; build (and save) it when missing or stale."""
        jsonl = Path(jsonl)
        if not jsonl.is_file():
            raise UserError(f"{jsonl}: no such data file. Check dataset.train/validation paths.")
        ipath = index_path(jsonl)
        st = jsonl.stat()
        index = cls.load(ipath) if ipath.is_file() else None
        if index is not None:
            if (index.file_size, index.source["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
                return index
            if index.file_size == st.st_size and sha256_file(jsonl) == index.content_sha256:
                index.source["mtime_ns"] = st.st_mtime_ns  # touched, same content
                index.save(ipath)
                return index
            log.warning("%s is stale (%s changed since it was indexed); rebuilding", ipath, jsonl)
        if not build:
            raise UserError(f"{ipath}: index missing or stale; rebuild it with build_index()")
        return build_index(jsonl)


def sha256_file(path: Path) -> str:
    """sha256 of a file, streamed (shared by the data index and checkpoint manifests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def content_sha256(jsonl: str | Path) -> str:
    """sha256 of a processed jsonl, from its (fresh) index."""
    return Index.for_jsonl(jsonl).content_sha256


class IndexBuilder:
    """Accumulates index rows in compact arrays while a jsonl is written or scanned."""

    def __init__(self, source: str = "") -> None:
        self.source = source  # how messages name the file
        self._offset = array("q")
        self._length = array("i")
        self._line = array("q")
        self._correct = array("b")
        self._difficulty = array("h")
        self._problem = array("i")
        self._problem_ids: dict[str, int] = {}

    def add(self, offset: int, length: int, line: int, record: Record) -> None:
        self._offset.append(offset)
        self._length.append(length)
        self._line.append(line)
        lo, hi = DIFFICULTY_RANGE
        if not lo <= record.difficulty <= hi:
            raise UserError(
                f"{self.source}:{line}: metadata.difficulty {record.difficulty} is outside "
                f"the index's range {lo}..{hi}; fix the record (difficulties are small "
                "integers, 0 = unknown)"
            )
        self._correct.append(1 if record.is_correct else 0)
        self._difficulty.append(record.difficulty)
        pid = self._problem_ids.setdefault(record.problem_id, len(self._problem_ids))
        self._problem.append(pid)

    def build(self, source: dict[str, int | str]) -> Index:
        rows = np.empty(len(self._offset), dtype=ROW_DTYPE)
        rows["offset"] = np.frombuffer(self._offset, dtype=np.int64)
        rows["length"] = np.frombuffer(self._length, dtype=np.int32)
        rows["line"] = np.frombuffer(self._line, dtype=np.int64)
        rows["is_correct"] = np.frombuffer(self._correct, dtype=np.int8).astype(bool)
        rows["difficulty"] = np.frombuffer(self._difficulty, dtype=np.int16)
        rows["problem"] = np.frombuffer(self._problem, dtype=np.int32)
        return Index(rows, list(self._problem_ids), source)


def build_index(
    jsonl: str | Path, skip_invalid: bool = False, stats: ReadStats | None = None
) -> Index:
    """(Re)build and save the index of any processed jsonl, streaming line by line and
    hashing the content on the way.

    Malformed lines raise UserError (file:line) unless ``skip_invalid``; skipped lines
    get no row and are counted in ``stats``.
    """
    jsonl = Path(jsonl)
    stats = stats if stats is not None else ReadStats()
    builder = IndexBuilder(str(jsonl))
    h = hashlib.sha256()
    before = jsonl.stat()
    for lineno, offset, length, rec in valid_lines(
        jsonl, iter_lines(jsonl, h), skip_invalid, stats
    ):
        builder.add(offset, length, lineno, rec)
    if stats.skipped:
        log.warning("%s: skipped %d malformed line(s)", jsonl, stats.skipped)
    after = jsonl.stat()
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise UserError(f"{jsonl} changed while it was being indexed; run again once it is written")
    index = builder.build(
        {"size": after.st_size, "mtime_ns": after.st_mtime_ns, "sha256": h.hexdigest()}
    )
    index.save(index_path(jsonl))
    return index


class JsonlWriter:
    """Write records to ``path`` (via a temp file) and its index; use as a context manager.

    Holds written files to what readers accept: ``write`` raises :class:`RecordTooLarge`
    (nothing written) for a record over ``MAX_RECORD_BYTES`` or ``MAX_TESTS_PER_RECORD``;
    ``close`` raises UserError (and writes nothing) when a ``task_id`` repeats.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = AtomicFile(self.path)
        self._fh = self._out.file
        self._builder = IndexBuilder(str(self.path))
        self._hash = hashlib.sha256()
        self._ids = TaskIds()
        self._offset = 0
        self.count = 0

    def write(self, record: Record) -> None:
        tests = record.metadata.get("tests")
        n_tests = len(tests) if isinstance(tests, list) else 0
        body = b"" if n_tests > MAX_TESTS_PER_RECORD else record.to_json().encode("utf-8")
        if n_tests > MAX_TESTS_PER_RECORD or len(body) > MAX_RECORD_BYTES:
            what = (
                f"has {n_tests} tests (at most {MAX_TESTS_PER_RECORD}, "
                "records.MAX_TESTS_PER_RECORD)"
                if body == b""
                else f"is {len(body)} bytes (at most {MAX_RECORD_BYTES}, records.MAX_RECORD_BYTES)"
            )
            raise RecordTooLarge(
                f"{self.path}: record {record.task_id!r} {what}: readers would refuse it; "
                "leave it out or make it smaller"
            )
        self._fh.write(body + b"\n")
        self._hash.update(body + b"\n")
        self.count += 1
        self._builder.add(self._offset, len(body), self.count, record)
        self._ids.add(record.task_id, self.count, self._offset)
        self._offset += len(body) + 1

    def _task_id_at(self, offset: int) -> str:
        self._fh.flush()
        with open(self._out.tmp, "rb") as fh:
            fh.seek(offset)
            return json.loads(fh.readline())["task_id"]

    def close(self) -> Index:
        """Finish the file, move it in place and save its index."""
        try:
            self._ids.check(str(self.path), self._task_id_at)
        except UserError:
            self.abort()
            raise
        self._out.commit()
        st = self.path.stat()
        index = self._builder.build(
            {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": self._hash.hexdigest()}
        )
        index.save(index_path(self.path))
        return index

    def abort(self) -> None:
        self._out.discard()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
