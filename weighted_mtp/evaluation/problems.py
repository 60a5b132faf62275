"""The problems of a split with tests, and the verdicts of sampled programs on them.

One problem = one ``metadata.problem_id`` (the processed files hold several solutions per
problem); its tests are stdio pairs or a HumanEval check. Each distinct program of a
problem runs once in the sandbox (:mod:`weighted_mtp.evaluation.checks`; a HumanEval
program in its harness, where only a ``check`` that returned and plain-data return values
can pass).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from weighted_mtp.data.records import (
    ReadStats,
    Record,
    check_parts,
    kind_of_tests,
    read_records,
    tests_of,
)
from weighted_mtp.evaluation.checks import CheckResult, check_function, check_stdio
from weighted_mtp.progress import Progress
from weighted_mtp.sandbox.limits import Limits
from weighted_mtp.sandbox.runner import run_many


@dataclass
class Problem:
    """One problem: the record whose prompt is used, its tests kind and difficulty."""

    record: Record
    kind: str

    @property
    def problem_id(self) -> str:
        return self.record.problem_id


def load_problems(
    path: str | Path,
    limit: int | None = None,
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
) -> tuple[list[Problem], int]:
    """Distinct problems of a split in file order (first record of each problem_id).

    Returns ``(problems with tests, number of problems skipped for having no tests)``.
    Malformed lines raise UserError unless ``skip_invalid`` (then counted in ``stats``).
    """
    seen: dict[str, Problem] = {}
    for rec in read_records(path, skip_invalid, stats):
        pid = rec.problem_id
        kind = kind_of_tests(rec)
        if pid not in seen or (seen[pid].kind == "none" and kind != "none"):
            seen[pid] = Problem(rec, kind)
    problems = [p for p in seen.values() if p.kind != "none"]
    skipped = len(seen) - len(problems)
    return problems[:limit] if limit else problems, skipped


def score_program(problem: Problem, program: str, limits: Limits) -> CheckResult:
    """Run ``program`` against the problem's tests in the sandbox."""
    if problem.kind == "humaneval":
        return check_function(*check_parts(problem.record, program), limits)
    return check_stdio(program, tests_of(problem.record), limits)


def score_all(
    problems: list[Problem],
    programs: list[list[str]],
    limits: Limits,
    concurrency: int,
    scored: dict[tuple[str, str], CheckResult] | None = None,
) -> list[list[CheckResult]]:
    """Score every sample; a program repeated within a problem is executed once.

    ``scored`` (problem id, program) -> result carries results over between evaluations of
    the same data with the same limits (e.g. greedy, then sampled): a program already run
    against the problem's tests is not run again; new results are added to it.
    """
    scored = {} if scored is None else scored
    todo: dict[tuple[str, str], int] = {}
    jobs = []
    for problem, progs in zip(problems, programs, strict=True):
        for prog in progs:
            key = (problem.problem_id, prog)
            if key not in scored and key not in todo:
                todo[key] = len(jobs)
                jobs.append(functools.partial(score_program, problem, prog, limits))
    bar = Progress(len(jobs), "execute", "programs")

    def tick(job):
        def run():
            res = job()
            bar.update(1)
            return res

        return run

    results = run_many([tick(j) for j in jobs], max_workers=concurrency)
    bar.close()
    scored.update((key, results[j]) for key, j in todo.items())
    pairs = zip(problems, programs, strict=True)
    return [[scored[(pr.problem_id, p)] for p in progs] for pr, progs in pairs]
