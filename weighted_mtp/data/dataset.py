"""Random access to a processed jsonl through its index (one seek + one line per record)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from weighted_mtp.data.index import Index, index_path
from weighted_mtp.data.records import Record, parse_line
from weighted_mtp.errors import UserError


class ProcessedDataset:
    """``ds[i]`` is the Record with record id ``i`` (a row of the index).

    Opens ``path`` and loads its index, building it when missing or stale (an empty file
    is a user error). Reads seek to the byte offset and parse only that line; a line that
    does not end where the index says, or a file changed since it was indexed, is reported
    as such (never as a malformed record). Safe to pickle into DataLoader workers (each
    process reopens the file).
    """

    def __init__(self, path: str | Path, index: Index | None = None) -> None:
        self.path = Path(path)
        self.index = index if index is not None else Index.for_jsonl(self.path)
        if len(self.index) == 0:
            raise UserError(
                f"{self.path}: no records (the file is empty or blank); point the dataset "
                "field at a processed jsonl (python -m weighted_mtp prepare writes one)"
            )
        self._fh: BinaryIO | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.index)

    def _file(self) -> BinaryIO:
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open for reads
            self._pid = os.getpid()
        return self._fh

    def __getitem__(self, i: int) -> Record:
        n = len(self.index)
        if not -n <= i < n:
            raise IndexError(f"record id {i} out of range for {self.path} ({n} records)")
        row = self.index.rows[i]
        fh = self._file()
        fh.seek(int(row["offset"]))
        length = int(row["length"])
        body = fh.read(length + 1)
        if len(body) < length or body[length:] not in (b"", b"\n", b"\r"):
            self._changed()
            raise UserError(
                f"{self.path}:{int(row['line'])}: the line is not where its index says: the "
                f"file changed after indexing; delete {index_path(self.path)} to rebuild it"
            )
        try:
            rec = parse_line(body[:length], self.path, int(row["line"]))
        except UserError:
            self._changed()
            raise
        rec.row = int(i) % n
        return rec

    def _changed(self) -> None:
        """Raise if the file no longer is what the index was built from."""
        st = self.path.stat()
        src = self.index.source
        if (st.st_size, st.st_mtime_ns) != (src["size"], src.get("mtime_ns", st.st_mtime_ns)):
            raise UserError(
                f"{self.path} changed after its index was built (size or mtime differ): "
                "do not edit a data file during a run; start again to re-index it"
            )

    def records(self, ids: Iterable[int]) -> list[Record]:
        """The records for ``ids``, in the given order."""
        return [self[int(i)] for i in ids]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fh"] = None
        state["_pid"] = -1
        return state

    def __enter__(self) -> ProcessedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
