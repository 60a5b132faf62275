"""The frozen reference's per-token losses (Rho-1), computed once and cached on disk.

The cache lives in ``<cache_dir>/<key>/`` where ``key`` hashes everything the losses
depend on: the reference model (its config and a fingerprint of each weight file: name,
size, sha256 of the first and last MiB) and its dtype, the training data (size, head/tail sha256 and
the sha256 of its line index), ``dataset.max_length``, the tokenizer file and the
temperature. Any change gives a new key, so stale losses are never reused. Each rank
appends to its own pair of files (``ce-rank{r}.bin`` float32 values, ``ce-rank{r}.idx``
(record id, offset, length) int64 rows); a record whose losses are missing is computed
by one reference forward over just the missing rows of the batch. ``precompute`` scores
a rank's training batches up front and then releases the reference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from weighted_mtp.data.collate import Batch
from weighted_mtp.data.index import index_path

_MIB = 1 << 20


def _file_fingerprint(path: Path) -> str:
    h = hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(_MIB))
        if path.stat().st_size > _MIB:
            f.seek(-_MIB, 2)
            h.update(f.read(_MIB))
    return h.hexdigest()


def cache_key(
    reference_dir: str | Path,
    train_file: str | Path,
    tokenizer_file: str | Path,
    max_length: int,
    temperature: float,
    dtype: str = "float32",
) -> str:
    """sha256 over the reference model and its dtype, the data, the tokenizer,
    max_length and T."""
    ref = Path(reference_dir)
    parts = [f"max_length={max_length}", f"temperature={temperature!r}", f"dtype={dtype}"]
    files = sorted(p for p in ref.iterdir() if p.is_file()) if ref.is_dir() else [ref]
    parts += [_file_fingerprint(p) for p in files]
    train = Path(train_file)
    parts.append(_file_fingerprint(train))
    idx = index_path(train)
    if idx.is_file():
        parts.append(hashlib.sha256(idx.read_bytes()).hexdigest())
    parts.append(_file_fingerprint(Path(tokenizer_file)))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


class ReferenceLossCache:
    """``cache(batch) -> [B, S]``: the reference's CE of the token at each position."""

    def __init__(
        self,
        compute: Callable[[Tensor, Tensor, Tensor], Tensor],
        directory: str | Path,
        rank: int = 0,
    ) -> None:
        """``compute(input_ids, attention_mask, labels) -> [B, S]``: the CE of the token at
        each position (0 where it is not a label)."""
        self.compute: Callable[[Tensor, Tensor, Tensor], Tensor] | None = compute
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._bin = self.dir / f"ce-rank{rank}.bin"
        self._idx = self.dir / f"ce-rank{rank}.idx"
        self.entries: dict[int, tuple[Path, int, int]] = {}
        self._load_entries()
        self.hits = self.misses = 0

    def _load_entries(self) -> None:
        for idx_file in sorted(self.dir.glob("ce-rank*.idx")):
            bin_file = idx_file.with_suffix(".bin")
            size = bin_file.stat().st_size if bin_file.exists() else 0
            rows = np.fromfile(idx_file, dtype=np.int64)
            rows = rows[: len(rows) // 3 * 3].reshape(-1, 3)  # ignore a torn last row
            for rid, off, n in rows:
                if off + 4 * n <= size:  # ignore values a crash did not finish writing
                    self.entries[int(rid)] = (bin_file, int(off), int(n))

    def _read(self, rid: int) -> np.ndarray:
        path, off, n = self.entries[rid]
        return np.fromfile(path, dtype=np.float32, count=n, offset=off)

    def _append(self, rows: list[tuple[int, np.ndarray]]) -> None:
        with open(self._bin, "ab") as fb:
            offset = fb.tell()
            index = []
            for rid, values in rows:
                fb.write(values.astype(np.float32).tobytes())
                index.append((rid, offset, len(values)))
                self.entries[rid] = (self._bin, offset, len(values))
                offset += 4 * len(values)
        with open(self._idx, "ab") as fi:
            fi.write(np.asarray(index, dtype=np.int64).tobytes())

    def precompute(self, batches: Iterable[Batch]) -> None:
        """Score every record of ``batches`` that the cache lacks, then drop ``compute``
        (and with it the reference model): training then only reads the cache, and the
        reference never sits in memory next to the trained policy. Each rank passes the
        batches it will train on (its own share)."""
        for batch in batches:
            self(batch)
        self.compute = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __call__(self, batch: Batch) -> Tensor:
        ids = batch.record_ids.tolist()
        lengths = batch.attention_mask.sum(dim=1).tolist()
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        missing = [i for i, rid in enumerate(ids) if rid not in self.entries]
        if missing and self.compute is None:
            raise RuntimeError(
                f"records {[ids[i] for i in missing]} were not scored by precompute() "
                "and the reference is released"
            )
        if missing:
            rows = torch.tensor(missing, device=batch.input_ids.device)
            ce = (
                self.compute(batch.input_ids[rows], batch.attention_mask[rows], batch.labels[rows])
                .float()
                .cpu()
            )
            self._append([(ids[i], ce[j, : lengths[i]].numpy()) for j, i in enumerate(missing)])
        self.misses += len(missing)
        self.hits += len(ids) - len(missing)
        for i, rid in enumerate(ids):
            values = self._read(rid)
            out[i, : len(values)] = torch.from_numpy(values)
        return out.to(batch.input_ids.device)
