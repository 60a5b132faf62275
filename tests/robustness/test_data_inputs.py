"""Data files that would fail late (or not at all) are refused while they are indexed:
records over the size cap, records over the tests cap, repeated task ids. Each exits 2
through the real entry points with ``file:line``, the cap and the fix; a cached index
never hides a check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from weighted_mtp.__main__ import main
from weighted_mtp.data import codecontests
from weighted_mtp.data.dataset import ProcessedDataset
from weighted_mtp.data.index import Index, IndexBuilder, JsonlWriter, build_index, index_path
from weighted_mtp.data.records import (
    MAX_RECORD_BYTES,
    MAX_TESTS_PER_RECORD,
    ReadStats,
    Record,
    RecordTooLarge,
    iter_lines,
    read_records,
    valid_lines,
)
from weighted_mtp.errors import UserError

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def rec(i: int, task_id: str | None = None, n_tests: int = 1, instruction: str = "") -> dict:
    return {
        "instruction": instruction or f"problem {i}",
        "input": "",
        "output": f"print({i})",
        "task_id": task_id if task_id is not None else f"p{i}/correct/0",
        "is_correct": True,
        "metadata": {"source": "test", "difficulty": 2, "problem_id": f"p{i}",
                     "tests": [{"input": f"{i}\n", "output": f"{i}\n"}] * n_tests},
    }  # fmt: skip


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weighted_mtp", *argv],
        capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300,
    )  # fmt: skip


def in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> subprocess.CompletedProcess:
    """``python -m weighted_mtp *argv`` through its ``main``, in this process (cheaper)."""
    code = main(list(argv))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


def expect_exit_2(res: subprocess.CompletedProcess, *texts: str) -> None:
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    for t in texts:
        assert t in res.stderr, f"{t!r} not in {res.stderr[-2000:]}"


# ---- 1. record size cap -----------------------------------------------------------


def test_line_over_a_given_cap_is_refused_with_line_and_cap(tmp_path: Path) -> None:
    """The same reader with a small cap: the line just over it is refused, the line at it
    is read; ``skip_invalid`` skips it and goes on (offsets stay right)."""
    small, other = json.dumps(rec(0)), json.dumps(rec(2))  # the same length
    big = json.dumps(rec(1, instruction="x" * 10))
    cap = len(small)
    p = tmp_path / "d.jsonl"
    p.write_text(f"{small}\n{big}\n{other}\n")
    with pytest.raises(UserError) as err:
        list(valid_lines(p, iter_lines(p, max_bytes=cap)))
    msg = str(err.value)
    assert f"{p}:2: the line is longer than {cap} bytes" in msg and "Fix:" in msg
    stats = ReadStats()
    rows = list(valid_lines(p, iter_lines(p, max_bytes=cap), skip_invalid=True, stats=stats))
    assert [r[0] for r in rows] == [1, 3] and stats.skipped_lines == [2]
    assert rows[1][1] == len(small) + len(big) + 2  # the offset of line 3
    assert rows[1][3].task_id == "p2/correct/0"


def test_line_without_newline_at_the_cap_is_read(tmp_path: Path) -> None:
    body = json.dumps(rec(0)).encode()
    p = tmp_path / "d.jsonl"
    p.write_bytes(body)  # no final newline, exactly the cap
    assert [b for *_, b in iter_lines(p, max_bytes=len(body))] == [body]
    p.write_bytes(body + b"\r\n")
    assert [b for *_, b in iter_lines(p, max_bytes=len(body))] == [body]


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Line 2 holds a 9 MiB instruction: just over the real 8 MiB cap."""
    p = tmp_path_factory.mktemp("huge") / "train.jsonl"
    big = rec(1, instruction="x" * (9 << 20))
    write(p, [rec(0), big, rec(2)])
    return p


def test_huge_record_exits_2_through_prepare_index(huge: Path) -> None:
    res = cli("prepare", "index", str(huge))
    expect_exit_2(res, f"{huge}:2: the line is longer than 8 MiB ({MAX_RECORD_BYTES} bytes)",
                  "Fix: records are at most 8 MiB", "--skip-invalid")  # fmt: skip
    assert not index_path(huge).exists()


def test_huge_record_is_skipped_with_skip_invalid(huge: Path, capsys) -> None:
    assert main(["prepare", "index", str(huge), "--skip-invalid"]) == 0
    assert "indexed 2 records, skipped 1 malformed line(s)" in capsys.readouterr().out
    with ProcessedDataset(huge) as ds:  # the index of the skipped file reads right
        assert [r.task_id for r in ds.records([0, 1])] == ["p0/correct/0", "p2/correct/0"]
    index_path(huge).unlink()


def test_huge_record_exits_2_before_training(
    huge: Path, tmp_path: Path, micro_storage: Path
) -> None:
    """``train`` refuses the file when it indexes it, before any step (and before any
    record reaches the tokenizer)."""
    model = micro_storage / "models" / "micro-mtp"
    data = micro_storage / "datasets" / "synthetic" / "processed"
    res = subprocess.run(
        [sys.executable, "-m", "weighted_mtp.cli", "stage=baseline", "profile=local",
         f"models.policy.path={model}", f"models.policy.tokenizer_path={model / 'tokenizer'}",
         f"dataset.train={huge}", f"dataset.validation={data / 'valid.jsonl'}",
         f"checkpoint.save_dir={tmp_path / 'ck'}", "data_sampling.n_samples=4",
         "training.batch_size=2", "dataset.max_length=64", "runtime.device=cpu"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    expect_exit_2(res, f"{huge}:2: the line is longer than 8 MiB")
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").rglob("checkpoint_*"))


def test_writer_refuses_a_record_over_the_cap(tmp_path: Path) -> None:
    out = tmp_path / "w.jsonl"
    with JsonlWriter(out) as w:
        w.write(Record(**rec(0)))
        with pytest.raises(RecordTooLarge, match=r"is \d+ bytes \(at most 8388608"):
            w.write(Record(**rec(1, instruction="x" * (MAX_RECORD_BYTES + 1))))
    assert [r.task_id for r in read_records(out)] == ["p0/correct/0"]


# ---- 2. duplicate task ids --------------------------------------------------------


def test_duplicate_task_id_exits_2_naming_both_lines(tmp_path: Path, capsys) -> None:
    p = write(tmp_path / "dup.jsonl", [rec(0), rec(1), rec(2, task_id="p0/correct/0"), rec(3)])
    res = in_process(capsys, "prepare", "index", str(p))
    expect_exit_2(res, f"{p}:3: duplicate task_id 'p0/correct/0' (first at line 1)",
                  "Fix: task_id must be unique")  # fmt: skip
    assert not index_path(p).exists()
    # not a malformed line: --skip-invalid does not hide it
    res = in_process(capsys, "prepare", "index", str(p), "--skip-invalid")
    expect_exit_2(res, f"{p}:3: duplicate")


def test_duplicates_counted_and_first_reported(tmp_path: Path) -> None:
    rows = [rec(i, task_id=f"t{i % 3}") for i in range(7)]  # t0 at 1,4,7; t1 at 2,5; ...
    p = write(tmp_path / "d.jsonl", rows)
    with pytest.raises(UserError, match=r":4: duplicate task_id 't0' \(first at line 1\) "
                       r"\(4 repeats in the file\)"):  # fmt: skip
        build_index(p)


def test_evaluation_reader_refuses_duplicates(tmp_path: Path) -> None:
    p = write(tmp_path / "t.jsonl", [rec(0), rec(1, task_id="p0/correct/0")])
    with pytest.raises(UserError, match=r"t\.jsonl:2: duplicate task_id"):
        list(read_records(p))


def test_many_distinct_ids_pass(tmp_path: Path) -> None:
    p = write(tmp_path / "d.jsonl", [rec(i) for i in range(2000)])
    assert len(build_index(p)) == 2000


def test_writer_refuses_duplicates_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "w.jsonl"
    dup = pytest.raises(UserError, match=r"w\.jsonl:2: duplicate task_id 'x'")
    with dup, JsonlWriter(out) as w:
        w.write(Record(**rec(0, task_id="x")))
        w.write(Record(**rec(1, task_id="x")))
    assert not out.exists() and not index_path(out).exists()
    assert not list(tmp_path.glob(".w.jsonl.*"))  # no temp file left


def test_shipped_data_passes_every_check(tmp_path: Path, micro_storage: Path) -> None:
    """Every data file `setup` builds passes the caps and has unique task_ids."""
    shipped = sorted((micro_storage / "datasets").rglob("*.jsonl"))
    assert shipped
    for path in shipped:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        idx = build_index(copy)
        assert len(idx) == sum(1 for line in path.read_bytes().splitlines() if line.strip())


# ---- 3. tests per record ----------------------------------------------------------


def test_too_many_tests_exits_2(tmp_path: Path, capsys) -> None:
    n = MAX_TESTS_PER_RECORD + 1
    p = write(tmp_path / "t.jsonl", [rec(0, n_tests=MAX_TESTS_PER_RECORD), rec(1, n_tests=n)])
    res = in_process(capsys, "prepare", "index", str(p))
    expect_exit_2(res, f"{p}:2: metadata.tests has {n} tests, over the cap of "
                  f"{MAX_TESTS_PER_RECORD} per record", "Fix: keep at most")  # fmt: skip


def test_writer_refuses_too_many_tests(tmp_path: Path) -> None:
    w = JsonlWriter(tmp_path / "w.jsonl")
    with pytest.raises(RecordTooLarge, match=f"has {MAX_TESTS_PER_RECORD + 1} tests"):
        w.write(Record(**rec(0, n_tests=MAX_TESTS_PER_RECORD + 1)))
    w.abort()


def test_codecontests_caps_tests_by_count_and_bytes() -> None:
    many = [{"input": "1", "output": "1"}] * (MAX_TESTS_PER_RECORD + 50)
    assert len(codecontests.cap_tests(many)) == MAX_TESTS_PER_RECORD
    big = [{"input": "x" * (1 << 20), "output": ""}] * 10
    kept = codecontests.cap_tests(big)
    assert 0 < len(kept) < 10
    assert len(json.dumps(kept).encode()) <= codecontests.TESTS_BUDGET


# ---- 4. a cached index does not hide the checks -----------------------------------


def _stale_index_without_checks(p: Path) -> None:
    """Index ``p`` the way an older version did: rows for every line, no duplicate check,
    saved without the ``checks`` stamp."""
    b = IndexBuilder(str(p))
    offset = 0
    for line, raw in enumerate(p.read_bytes().splitlines(keepends=True), start=1):
        b.add(offset, len(raw.rstrip(b"\n")), line, Record(**json.loads(raw)))
        offset += len(raw)
    st = p.stat()
    from weighted_mtp.data.index import sha256_file

    b.build({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(p)}).save(
        index_path(p)
    )
    with np.load(index_path(p)) as z:
        arrays = {k: z[k] for k in z.files if k != "checks"}
    with open(index_path(p), "wb") as f:
        np.savez(f, **arrays)


def test_index_from_before_the_checks_is_rebuilt(tmp_path: Path) -> None:
    p = write(tmp_path / "d.jsonl", [rec(0), rec(1, task_id="p0/correct/0")])
    _stale_index_without_checks(p)
    assert Index.load(index_path(p)) is None  # not trusted
    with pytest.raises(UserError, match=r"d\.jsonl:2: duplicate task_id"):
        ProcessedDataset(p)


def test_edited_file_is_checked_again(tmp_path: Path) -> None:
    p = write(tmp_path / "d.jsonl", [rec(0), rec(1)])
    assert len(ProcessedDataset(p)) == 2
    write(p, [rec(0), rec(7, task_id="p0/correct/0")])  # same size, new content
    with pytest.raises(UserError, match=r"d\.jsonl:2: duplicate task_id 'p0/correct/0'"):
        ProcessedDataset(p)
    write(p, [rec(0), rec(1, n_tests=MAX_TESTS_PER_RECORD + 1)])
    with pytest.raises(UserError, match=r"d\.jsonl:2: metadata\.tests has 1001 tests"):
        Index.for_jsonl(p)
