"""Synthetic task set (determinism, verified labels, disjoint splits) and HumanEval."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from weighted_mtp.data import prepare
from weighted_mtp.data.humaneval import humaneval_records
from weighted_mtp.data.index import Index
from weighted_mtp.data.records import check_program, outputs_match, read_records, tests_of
from weighted_mtp.data.synthetic import (
    bug_offset,
    generate,
    mutants,
    pretrain_corpus,
    split_targets,
    write_synthetic,
)
from weighted_mtp.data.verify import passes, run_programs


@pytest.fixture(scope="module")
def splits() -> dict:
    return generate(600, seed=5)


def test_deterministic_for_a_seed(splits: dict) -> None:
    again = generate(600, seed=5)
    for name in splits:
        assert [r.to_json() for r in splits[name]] == [r.to_json() for r in again[name]]
    other = generate(600, seed=6)
    assert [r.to_json() for r in other["train"]] != [r.to_json() for r in splits["train"]]


def test_split_sizes_disjoint_problems_and_difficulty_spread(splits: dict) -> None:
    assert {k: len(v) for k, v in splits.items()} == split_targets(600)
    assert split_targets(600) == {"train": 500, "valid": 50, "test": 50}
    problems = {k: {r.problem_id for r in v} for k, v in splits.items()}
    assert not problems["train"] & problems["valid"]
    assert not problems["train"] & problems["test"]
    assert not problems["valid"] & problems["test"]
    train = splits["train"]
    assert {r.difficulty for r in train} == set(range(1, 12))
    n_correct = sum(r.is_correct for r in train)
    assert 0.25 * len(train) < n_correct < 0.6 * len(train)
    bugs = Counter(r.metadata["bug"] for r in train if not r.is_correct)
    assert {"off_by_one", "wrong_operator", "wrong_format", "missing_edge_case"} <= set(bugs)
    assert len({r.task_id for rs in splits.values() for r in rs}) == 600


def test_incorrect_records_say_where_the_bug_starts(splits: dict) -> None:
    """metadata.bug_offset: output[:offset] starts a correct program of the problem, and
    the next character departs from (or runs past) every one that shares that prefix."""
    recs = [r for rs in splits.values() for r in rs]
    solutions: dict[str, list[str]] = {}
    for r in recs:
        if r.is_correct:
            solutions.setdefault(r.problem_id, []).append(r.output)
            assert "bug_offset" not in r.metadata
    bad = [r for r in recs if not r.is_correct]
    assert bad
    for r in bad:
        off, out = r.metadata["bug_offset"], r.output
        assert isinstance(off, int) and 0 <= off <= len(out), r.task_id
        sharing = [s for s in solutions[r.problem_id] if s.startswith(out[:off])]
        assert sharing, r.task_id
        for s in sharing:
            assert off == len(out) or off == len(s) or s[off] != out[off], r.task_id
    assert bug_offset("abcX", ["abcd", "ab"]) == 3
    assert bug_offset("ab", ["abc"]) == 2 and bug_offset("abc", ["ab"]) == 2
    assert bug_offset("x", ["y", ""]) == 0


def test_records_are_short_with_self_contained_statements(splits: dict) -> None:
    for r in splits["train"][:100]:
        assert 2 <= r.output.count("\n") <= 11 and len(r.instruction) < 260
        assert len(tests_of(r)) >= 5 and r.input == ""  # N_EXAMPLES = 0: no examples shown


def run(source: str, stdin: str) -> str | None:
    proc = subprocess.run(
        [sys.executable, "-c", source], input=stdin, capture_output=True, text=True, timeout=10
    )
    return proc.stdout if proc.returncode == 0 else None


def test_labels_hold_when_re_executed_independently(splits: dict) -> None:
    recs = splits["valid"]
    sample = [r for r in recs if r.is_correct][:4] + [r for r in recs if not r.is_correct][:4]
    for r in sample:
        ok = [
            (out := run(r.output, t["input"])) is not None and outputs_match(out, t["output"])
            for t in tests_of(r)
        ]
        assert all(ok) if r.is_correct else not all(ok), r.task_id


def test_mutants_are_single_site_and_compile() -> None:
    src = "n = int(input())\nif n > 3:\n    print(n + 1)\n"
    got = dict((p, k) for k, p in mutants(src))
    assert got["n = int(input())\nif n >= 3:\n    print(n + 1)\n"] == "wrong_comparison"
    assert got["n = int(input())\nif n > 3:\n    print(n - 1)\n"] == "wrong_operator"
    assert all(p.count("\n") == 3 for p in got)


def test_write_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = write_synthetic(tmp_path / "a", n_records=120, seed=1)
    assert sorted(paths) == ["test", "train", "valid"]
    assert len(Index.for_jsonl(paths["train"])) == 100
    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    args = parser.parse_args(["synthetic", "--out", str(tmp_path / "b"), "--n-records", "120",
                              "--seed", "1"])  # fmt: skip
    assert prepare.run(args) == 0
    assert "train: 100 records" in capsys.readouterr().out
    assert (tmp_path / "b/train.jsonl").read_bytes() == paths["train"].read_bytes()
    args = parser.parse_args(["humaneval", "--out", str(tmp_path / "he")])
    assert prepare.run(args) == 0
    assert len(list(read_records(tmp_path / "he/test.jsonl"))) == 164
    assert "humaneval: 164 problems ->" in capsys.readouterr().out


def test_humaneval_has_164_problems_with_tests() -> None:
    recs = list(humaneval_records())
    assert len(recs) == 164 and len({r.task_id for r in recs}) == 164
    assert all(r.is_correct and "def check" in r.metadata["humaneval"]["test"] for r in recs)
    for r in recs[:2]:
        assert run(check_program(r, r.output), "") is not None
        assert run(check_program(r, "    return None\n"), "") is None


def test_pretrain_corpus_is_disjoint_correct_and_runs(splits: dict) -> None:
    used = {r.problem_id for recs in splits.values() for r in recs}
    corpus = pretrain_corpus(60, seed=0, exclude=used)
    ids = {r.problem_id for r in corpus}
    assert len(ids) == 60 and not ids & used  # no split's problem is pretrained on
    assert all(r.is_correct and r.metadata["split"] == "pretrain" for r in corpus)
    assert pretrain_corpus(60, seed=0, exclude=used) == corpus  # deterministic
    sample = corpus[:20]
    jobs = [(r.output, [t["input"] for t in r.metadata["tests"]]) for r in sample]
    for r, o in zip(sample, run_programs(jobs), strict=True):  # the programs pass their tests
        assert all(passes(o, [t["output"] for t in r.metadata["tests"]]))


def test_splits_stay_balanced_and_the_corpus_covers_every_family():
    """The splits' draws (~1000 problems) take 1/20 from each family; setup's pretraining
    corpus (PRETRAIN_PROBLEMS more, none of them) runs the smaller families' parameter
    spaces out (constants of at most two digits) and draws the rest from the larger ones."""
    from random import Random

    from weighted_mtp.data.synthetic import _make_problems
    from weighted_mtp.data.synthetic_tasks_lists import FAMILIES
    from weighted_mtp.setup_assets import PRETRAIN_PROBLEMS

    rng, seen = Random(0), set()
    splits = _make_problems(rng, 1000, seen)
    assert set(Counter(p.family for p in splits).values()) == {1000 // len(FAMILIES)}
    corpus = _make_problems(rng, PRETRAIN_PROBLEMS, seen)
    counts = Counter(p.family for p in corpus)
    assert len(corpus) == PRETRAIN_PROBLEMS and len(counts) == len(FAMILIES)
    assert min(counts.values()) >= 100
    assert len({p.problem_id for p in splits + corpus}) == 1000 + PRETRAIN_PROBLEMS
