"""The index knows what it was built from: any change of the jsonl (same size included)
is detected and re-indexed; a file changed under an open dataset is named as changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from weighted_mtp.data.dataset import ProcessedDataset
from weighted_mtp.data.index import Index, index_path
from weighted_mtp.errors import UserError


def rec(i: int, correct: bool) -> str:
    meta = {"source": "t", "difficulty": 1, "problem_id": f"p{i}"}
    out = {"instruction": f"q{i}", "input": "", "output": f"print({i})", "task_id": f"t{i}"}
    return json.dumps(out | {"is_correct": correct, "metadata": meta})


def write(path: Path, labels: list[bool], mtime_ns: int | None = None) -> None:
    path.write_text("".join(rec(i, c) + "\n" for i, c in enumerate(labels)))
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_same_size_edit_is_reindexed(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    write(path, [True, True, False, False])
    first = Index.for_jsonl(path)
    size = path.stat().st_size
    assert first.is_correct.tolist() == [True, True, False, False]
    assert first.source["size"] == size and len(first.content_sha256) == 64
    # labels flipped, same byte size ("true"/"false" swapped pairwise keeps the length)
    write(path, [False, False, True, True])
    assert path.stat().st_size == size
    again = Index.for_jsonl(path)
    assert again.is_correct.tolist() == [False, False, True, True]
    assert again.content_sha256 != first.content_sha256


def test_touched_file_keeps_its_index(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    write(path, [True, False])
    first = Index.for_jsonl(path)
    built = index_path(path).stat().st_mtime_ns
    os.utime(path, ns=(first.source["mtime_ns"] + 10**9,) * 2)  # same content, new mtime
    again = Index.for_jsonl(path)
    assert again.content_sha256 == first.content_sha256
    assert again.source["mtime_ns"] == path.stat().st_mtime_ns
    assert np.array_equal(again.rows, first.rows)
    assert index_path(path).stat().st_mtime_ns >= built  # re-saved, not rebuilt


def test_file_changed_under_an_open_dataset_is_not_a_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    write(path, [True, False, True, False])
    ds = ProcessedDataset(path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[2:] + lines[:2])[5:])  # shuffled and shifted
    with pytest.raises(UserError, match="changed after its index was built"):
        ds[1]
