"""Record schema validation, malformed-line errors, index, random-access reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from weighted_mtp.data.dataset import ProcessedDataset
from weighted_mtp.data.index import Index, JsonlWriter, build_index, index_path
from weighted_mtp.data.records import (
    ReadStats,
    Record,
    check_program,
    kind_of_tests,
    outputs_match,
    read_records,
    tests_of,
)
from weighted_mtp.errors import UserError


def rec(i: int, correct: bool = True, difficulty: int = 3) -> dict:
    return {
        "instruction": f"problem {i} ünïcode",
        "input": "Example 1\nInput:\n1\nOutput:\n2",
        "output": f"print({i})",
        "task_id": f"p{i // 2}/{i}",
        "is_correct": correct,
        "metadata": {"source": "test", "difficulty": difficulty, "problem_id": f"p{i // 2}",
                     "tests": [{"input": "1\n", "output": "2\n"}]},
    }  # fmt: skip


BAD_LINES = {
    "bad_json": ('{"instruction": "x", ', "invalid JSON"),
    "missing": (json.dumps({k: v for k, v in rec(0).items() if k != "task_id"}), "'task_id'"),
    "wrong_type": (json.dumps({**rec(0), "is_correct": "yes"}), "'is_correct' must be bool"),
    "meta_type": (
        json.dumps({**rec(0), "metadata": {**rec(0)["metadata"], "difficulty": "3"}}),
        "'metadata.difficulty' must be int",
    ),
    "not_object": ("[1, 2]", "expected a JSON object"),
}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_malformed_line_names_file_and_line(tmp_path: Path, kind: str) -> None:
    bad, reason = BAD_LINES[kind]
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(rec(0)), json.dumps(rec(1)), bad])
    with pytest.raises(UserError) as err:
        list(read_records(path))
    msg = str(err.value)
    assert f"{path}:3:" in msg and reason in msg and "skip" in msg
    with pytest.raises(UserError, match=f"{path}:3:"):
        build_index(path)


def test_skip_invalid_counts_and_index_keeps_line_numbers(tmp_path: Path) -> None:
    lines = [json.dumps(rec(0))]
    for bad, _ in BAD_LINES.values():
        lines += [bad, json.dumps(rec(len(lines)))]
    lines.insert(3, "")  # blank lines are ignored, not errors
    path = write_lines(tmp_path / "d.jsonl", lines)
    stats = ReadStats()
    got = list(read_records(path, skip_invalid=True, stats=stats))
    assert stats.skipped == len(BAD_LINES) == 5 and stats.records == len(got) == 6
    assert stats.skipped_lines == [2, 5, 7, 9, 11]
    istats = ReadStats()
    index = build_index(path, skip_invalid=True, stats=istats)
    assert istats.skipped == 5 and len(index) == 6
    assert index.rows["line"].tolist() == [1, 3, 6, 8, 10, 12]
    ds = ProcessedDataset(path)
    assert [ds[i].to_dict() for i in range(len(ds))] == [r.to_dict() for r in got]


def test_writer_index_matches_rebuilt_index_and_reader_seeks(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    with JsonlWriter(path) as w:
        for i in range(20):
            w.write(Record(**rec(i, correct=i % 3 == 0, difficulty=i % 11 + 1)))
    written = Index.load(index_path(path))
    rebuilt = build_index(path)
    assert np.array_equal(written.rows, rebuilt.rows) and written.problems == rebuilt.problems
    assert written.is_correct.sum() == 7 and written.difficulty.tolist()[:3] == [1, 2, 3]
    assert written.problems[written.problem[5]] == "p2"
    ds = ProcessedDataset(path)
    assert ds[5].task_id == "p2/5" and ds[5].row == 5 and ds[-1].task_id == "p9/19"
    with pytest.raises(IndexError):
        ds[20]
    # overwrite line 4 with same-length garbage: the same-size edit is detected, the index
    # rebuilt, and line 4 fails with its line number
    raw = path.read_bytes().split(b"\n")
    raw[3] = b"#" * len(raw[3])
    path.write_bytes(b"\n".join(raw))
    with pytest.raises(UserError, match=f"{path}:4:"):
        ProcessedDataset(path)


def test_stale_index_is_rebuilt(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "v.jsonl", [json.dumps(rec(i)) for i in range(3)])
    assert len(ProcessedDataset(path)) == 3
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec(3)) + "\n")
    assert len(ProcessedDataset(path)) == 4
    with pytest.raises(UserError, match="no such data file"):
        ProcessedDataset(tmp_path / "missing.jsonl")


def test_tests_of_outputs_match_and_check_program() -> None:
    r = Record(**rec(1))
    assert kind_of_tests(r) == "stdio"
    assert tests_of(r) == [{"input": "1\n", "output": "2\n"}]
    assert outputs_match("2  \n\n", "2\n") and not outputs_match("2 3", "2\n3")
    assert not outputs_match("yes", "YES")
    he = Record("i", "", "    return 1\n", "HumanEval/x", True, {
        "source": "humaneval", "difficulty": 0, "problem_id": "HumanEval/x",
        "humaneval": {"prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1",
                      "entry_point": "f"}})  # fmt: skip
    assert kind_of_tests(he) == "humaneval" and tests_of(he) == []
    scope: dict = {}
    exec(check_program(he, he.output), scope)  # passes: no AssertionError
    with pytest.raises(AssertionError):
        exec(check_program(he, "    return 2\n"), {})


def test_task_ids_hash_clash_of_distinct_ids_is_not_a_duplicate() -> None:
    """Two distinct ids whose hashes clash are read back and told apart; a true repeat
    among them is still found."""
    from weighted_mtp.data.records import TaskIds

    ids = TaskIds()
    names = {0: "a", 10: "b", 20: "c", 30: "a"}  # offset -> task_id
    for line, off in enumerate(names, start=1):
        ids._hash.append(7)  # every hash clashes
        ids._line.append(line)
        ids._offset.append(off)
    with pytest.raises(UserError, match=r"f:4: duplicate task_id 'a' \(first at line 1\)"):
        ids.check("f", names.__getitem__)
    del names[30]
    ids = TaskIds()
    for line, (off, tid) in enumerate(names.items(), start=1):
        ids.add(tid, line, off)
        ids._hash[-1] = 7
    ids.check("f", names.__getitem__)  # no error


def test_reading_a_huge_line_does_not_hold_it(tmp_path: Path) -> None:
    """A line over the cap is refused from its first cap + 2 bytes: skipping it streams
    past the rest (the next line's offset is right)."""
    from weighted_mtp.data.records import TooLong, iter_lines

    p = tmp_path / "d.jsonl"
    p.write_bytes(b"x" * 5000 + b"\n" + b"{}\n")
    lines = list(iter_lines(p, max_bytes=100))
    assert isinstance(lines[0][2], TooLong) and lines[0][:2] == (1, 0)
    assert lines[1] == (2, 5001, b"{}")
