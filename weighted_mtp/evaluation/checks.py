"""Verdicts of generated programs against a problem's tests, each run in the sandbox.

A stdin/stdout problem passes when every test's run exits cleanly, its output was not cut and
it matches the expected output (:func:`~weighted_mtp.data.records.outputs_match`, the same
rule as label verification); a function problem's self-checking program passes iff it exits 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from weighted_mtp.data.records import outputs_match
from weighted_mtp.sandbox.limits import Limits
from weighted_mtp.sandbox.runner import run_program


@dataclass(frozen=True)
class Failure:
    """First failing test: index, run status, and (clipped) input/expected/actual output."""

    index: int
    status: str
    input: str
    expected: str
    got: str
    stderr: str


@dataclass(frozen=True)
class CheckResult:
    """Verdict for one program against its tests."""

    passed: bool
    n_passed: int
    n_tests: int
    first_failure: Failure | None = None


def _clip(text: str, n: int = 2000) -> str:
    return text if len(text) <= n else text[:n] + f"... [{len(text) - n} more chars]"


def check_stdio(
    source: str, tests: Sequence[dict[str, str]], limits: Limits | None = None
) -> CheckResult:
    """Run ``source`` on each ``{"input", "output"}`` test; stop at the first failure.

    A test passes when the run status is ``"ok"``, output was not truncated and the
    stdout matches the expected output (:func:`~weighted_mtp.data.records.outputs_match`).
    Raises ValueError on no tests.
    """
    if not tests:
        raise ValueError("check_stdio needs at least one test; an untested program cannot pass")
    for i, test in enumerate(tests):
        res = run_program(source, test["input"], limits)
        expected = test["output"]
        if res.status != "ok" or res.truncated or not outputs_match(res.stdout, expected):
            fail = Failure(
                i, res.status, _clip(test["input"]), _clip(expected), _clip(res.stdout),
                _clip(res.stderr[-4000:]),
            )  # fmt: skip
            return CheckResult(False, i, len(tests), fail)
    return CheckResult(True, len(tests), len(tests))


def check_function(program: str, limits: Limits | None = None) -> CheckResult:
    """Run a self-checking program (:func:`~weighted_mtp.data.records.humaneval_program`);
    passes iff it exits 0."""
    res = run_program(program, "", limits)
    if res.status == "ok":
        return CheckResult(True, 1, 1)
    fail = Failure(0, res.status, "", "", _clip(res.stdout), _clip(res.stderr[-4000:]))
    return CheckResult(False, 0, 1, fail)
