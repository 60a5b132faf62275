"""prepare codecontests on a tiny parquet fixture in the real deepmind/code_contests schema."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from weighted_mtp.data import prepare
from weighted_mtp.data.codecontests import curriculum_difficulty, prepare_codecontests
from weighted_mtp.data.collate import encode_record
from weighted_mtp.data.dataset import ProcessedDataset
from weighted_mtp.data.index import Index
from weighted_mtp.data.records import read_records
from weighted_mtp.data.sampling import RecordSampler
from weighted_mtp.errors import UserError

TESTS = pa.struct([("input", pa.list_(pa.string())), ("output", pa.list_(pa.string()))])
SOLS = pa.struct([("language", pa.list_(pa.int64())), ("solution", pa.list_(pa.string()))])
SCHEMA = pa.schema([
    ("name", pa.string()), ("description", pa.string()), ("public_tests", TESTS),
    ("private_tests", TESTS), ("generated_tests", TESTS), ("source", pa.int64()),
    ("difficulty", pa.int64()), ("solutions", SOLS), ("incorrect_solutions", SOLS),
    ("cf_contest_id", pa.int64()), ("cf_index", pa.string()), ("cf_points", pa.float32()),
    ("cf_rating", pa.int64()), ("cf_tags", pa.list_(pa.string())),
    ("is_description_translated", pa.bool_()), ("untranslated_description", pa.string()),
    ("time_limit", pa.struct([("seconds", pa.int64()), ("nanos", pa.int64())])),
    ("memory_limit_bytes", pa.int64()), ("input_file", pa.string()), ("output_file", pa.string()),
])  # fmt: skip
LONG = "x = 1\n" * 80


def problem(name: str, correct: list[tuple[int, str]], incorrect: list[tuple[int, str]],
            difficulty: int = 7, private: int = 0, cf_rating: int = 800) -> dict:  # fmt: skip
    def sols(items: list[tuple[int, str]]) -> dict:
        return {"language": [lang for lang, _ in items], "solution": [s for _, s in items]}

    return {
        "name": name, "description": f"Solve {name}. Read n, print n + 1.",
        "public_tests": {"input": ["1\n", "5\n", "9\n"], "output": ["2\n", "6\n", "10\n"]},
        "private_tests": {"input": [f"{i}\n" for i in range(private)],
                          "output": [f"{i + 1}\n" for i in range(private)]},
        "generated_tests": {"input": ["7\n"] * 50, "output": ["8\n"] * 50},
        "source": 2, "difficulty": difficulty, "solutions": sols(correct),
        "incorrect_solutions": sols(incorrect), "cf_contest_id": 1, "cf_index": "A",
        "cf_points": 500.0, "cf_rating": cf_rating, "cf_tags": ["math"],
        "is_description_translated": False, "untranslated_description": "",
        "time_limit": {"seconds": 1, "nanos": 0}, "memory_limit_bytes": 256 << 20,
        "input_file": "", "output_file": "",
    }  # fmt: skip


def write_fixture(raw: Path) -> None:
    (raw / "data").mkdir(parents=True)
    p1 = problem(
        "1A. Plus one",
        correct=[(3, "print(int(input()) + 1)"), (3, "print(int(input()) + 1)   \n"),
                 (1, "print int(raw_input()) + 1"), (2, "int main() {}"), (4, "class A {}"),
                 (3, LONG + "print(int(input()) + 1)")],
        incorrect=[(3, "print(int(input()))"), (3, "print(int(input()) + 1)"), (2, "int x;"),
                   (0, "???")],
    )  # fmt: skip
    p2 = problem("2B. Other", [(3, "n = int(input())\nprint(n + 1)")], [], difficulty=2)
    p3 = problem("3C. Valid", [(3, "print(int(input())+1)")], [(1, "print 0")], private=4)
    pq.write_table(pa.Table.from_pylist([p1], SCHEMA), raw / "data/train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist([p2], SCHEMA), raw / "data/train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist([p3], SCHEMA), raw / "data/valid-00000-of-00001.parquet")


class SpTokenizer:
    def __init__(self, path: Path) -> None:
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.bos_id, self.eos_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), -1

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return [self.bos_id] * bos + self.sp.encode(text) + [self.eos_id] * eos


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> SpTokenizer:
    d = tmp_path_factory.mktemp("sp")
    corpus = "\n".join(
        [f"Solve {i}A. Read n, print n + {i}. x = {i} print(int(input()) + 1)" for i in range(300)]
    )
    (d / "corpus.txt").write_text(corpus)
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "sp"), vocab_size=120,
        model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
    )  # fmt: skip
    return SpTokenizer(d / "sp.model")


def test_prepare_filters_dedups_and_indexes(tmp_path: Path) -> None:
    write_fixture(tmp_path / "raw")
    stats = prepare_codecontests(tmp_path / "raw", tmp_path / "out", progress=False)
    t = stats["train"]
    assert t["problems"] == 2 and t["written_correct"] == 4 and t["written_incorrect"] == 1
    assert t["dropped_duplicate"] == 1 and t["dropped_label_conflict"] == 1
    assert t["dropped_language_cpp"] == 2 and t["dropped_language_java"] == 1
    assert t["dropped_language_unknown"] == 1 and "dropped_too_long" not in t
    recs = list(read_records(tmp_path / "out/train.jsonl"))
    assert len(recs) == 5 and len({r.task_id for r in recs}) == 5
    py2 = [r for r in recs if r.metadata["python2"]]
    assert len(py2) == 1 and py2[0].metadata["language"] == "python2"
    r0 = recs[0]
    assert r0.instruction.startswith("Solve 1A") and r0.input.startswith("Example 1\nInput:\n1")
    assert "Example 2" in r0.input and "Example 3" not in r0.input
    assert r0.metadata["cc_difficulty"] == 7 and r0.metadata["cf_rating"] == 800
    assert r0.metadata["difficulty"] == 1  # rating 800: the bottom of the curriculum scale
    assert r0.metadata["origin"] == "codeforces" and len(r0.metadata["tests"]) == 3
    index = Index.for_jsonl(tmp_path / "out/train.jsonl")
    assert index.is_correct.tolist() == [r.is_correct for r in recs]
    assert index.difficulty.tolist() == [1, 1, 1, 1, 1]
    assert [index.problems[p] for p in index.problem] == [r.problem_id for r in recs]
    ds = ProcessedDataset(tmp_path / "out/train.jsonl")
    assert [ds[i].to_dict() for i in np.arange(5)[::-1]] == [r.to_dict() for r in recs[::-1]]
    valid = list(read_records(tmp_path / "out/valid.jsonl"))
    assert [len(r.metadata["tests"]) for r in valid] == [7, 7]  # public + private
    assert not (tmp_path / "out/test.jsonl").exists()


def test_max_length_drops_long_records(tmp_path: Path, tokenizer: SpTokenizer) -> None:
    write_fixture(tmp_path / "raw")
    plain = list(read_records(_prepared(tmp_path, "plain", None, None)))
    lengths = [len(encode_record(r, tokenizer, 10**6).ids) for r in plain]
    limit = sorted(lengths)[-1] - 1  # only the LONG solution is over it
    assert sum(n > limit for n in lengths) == 1
    stats = prepare_codecontests(
        tmp_path / "raw", tmp_path / "cut", limit, tokenizer, progress=False
    )
    assert stats["train"]["dropped_too_long"] == 1 and stats["train"]["written_correct"] == 3
    kept = list(read_records(tmp_path / "cut/train.jsonl"))
    assert all(len(encode_record(r, tokenizer, 10**6).ids) <= limit for r in kept)
    with pytest.raises(UserError, match="go together"):
        prepare_codecontests(tmp_path / "raw", tmp_path / "x", 100, None)


def _prepared(tmp: Path, name: str, limit: int | None, tok: object) -> Path:
    prepare_codecontests(tmp / "raw", tmp / name, limit, tok, progress=False)
    return tmp / name / "train.jsonl"


def test_cli_prepare_codecontests_and_index(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_fixture(tmp_path / "raw")
    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    args = parser.parse_args(
        ["codecontests", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "o"),
         "--no-progress"]
    )  # fmt: skip
    assert prepare.run(args) == 0
    out = capsys.readouterr().out
    assert "train: " in out and "written_correct=4" in out and "dropped_duplicate=1" in out
    path = tmp_path / "o/train.jsonl"
    path.write_text(path.read_text() + "not json\n")
    args = parser.parse_args(["index", str(path), "--skip-invalid"])
    assert prepare.run(args) == 0
    assert "indexed 5 records, skipped 1 malformed line(s)" in capsys.readouterr().out
    with pytest.raises(UserError, match="not a directory"):
        prepare.run(parser.parse_args(["codecontests", "--raw", str(tmp_path / "nope")]))


def test_curriculum_covers_every_codecontests_difficulty(tmp_path: Path, caplog) -> None:
    """Raw difficulties 0 (unknown), 1-5 (labels), 6 (external), 7-29 (Codeforces letters),
    with and without a Codeforces rating, all land in the default curriculum bins."""
    raw = tmp_path / "raw"
    (raw / "data").mkdir(parents=True)
    rows = [
        problem(f"{d}-{r}. P", [(3, f"print({d} + {r})")], [(3, "print(0)")], d, cf_rating=r)
        for d in range(30)
        for r in ((0, 1900) if d >= 7 else (0,))
    ]
    pq.write_table(pa.Table.from_pylist(rows, SCHEMA), raw / "data/train-00000-of-00001.parquet")
    prepare_codecontests(raw, tmp_path / "out", progress=False)
    train = tmp_path / "out/train.jsonl"
    recs = list(read_records(train))
    got = {(r.metadata["cc_difficulty"], r.metadata["cf_rating"]): r.difficulty for r in recs}
    assert got[(0, 0)] == got[(6, 0)] == 5  # unknown / external: medium
    assert [got[(d, 0)] for d in range(1, 6)] == [2, 5, 8, 10, 11]  # EASY .. HARDEST
    assert [got[(d, 0)] for d in (7, 8, 9, 13, 14, 29)] == [2, 3, 5, 10, 11, 11]  # A B C G H V
    assert got[(7, 1900)] == got[(29, 1900)] == 5  # a rating decides: 1 + round(1100 / 270)
    assert curriculum_difficulty(0, 800) == 1 and curriculum_difficulty(0, 3500) == 11
    bins = {"low": [1, 3], "medium": [4, 7], "high": [8, 11]}  # conf/stage/verifiable.yaml
    schedule = [{"epoch_range": [0.0, 1.0], "difficulty_weights": {"low": 0.3, "medium": 0.4,
                                                                   "high": 0.3}}]  # fmt: skip
    index = Index.for_jsonl(train)
    args = dict(
        n_samples=40, correct_ratio=0.5, balance_correct=True, curriculum_learning=True,
        difficulty_bins=bins, curriculum_schedule=schedule, index=index, n_epochs=1,
    )  # fmt: skip
    sampler = RecordSampler(**args)
    assert len(set(sampler.epoch_ids(0).tolist())) > 0
    # the raw scale (what an older prepare wrote) leaves records outside every bin: exit 2
    raw_rows = index.rows.copy()
    raw_rows["difficulty"] = [r.metadata["cc_difficulty"] for r in recs]
    raw_index = Index(raw_rows, index.problems, index.file_size)
    with pytest.raises(UserError, match="allow_unbinned") as err:
        RecordSampler(**{**args, "index": raw_index})
    assert "outside every data_sampling.difficulty_bins" in str(err.value)
    assert "0: 2" in str(err.value)  # difficulty 0: 2 records (correct + incorrect)
    with caplog.at_level(logging.WARNING):
        RecordSampler(**{**args, "index": raw_index, "allow_unbinned": True})
    assert "never sampled" in caplog.text
