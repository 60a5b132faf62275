"""Random access to a processed jsonl through its index (one seek + one line per record)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from weighted_mtp.data.index import Index
from weighted_mtp.data.records import Record, parse_line


class ProcessedDataset:
    """``ds[i]`` is the Record with record id ``i`` (a row of the index).

    Opens ``path`` and loads its index, building it when missing or stale. Reads seek to
    the byte offset and parse only that line. Safe to pickle into DataLoader workers
    (each process reopens the file).
    """

    def __init__(self, path: str | Path, index: Index | None = None) -> None:
        self.path = Path(path)
        self.index = index if index is not None else Index.for_jsonl(self.path)
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
        rec = parse_line(fh.read(int(row["length"])), self.path, int(row["line"]))
        rec.row = int(i) % n
        return rec

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
