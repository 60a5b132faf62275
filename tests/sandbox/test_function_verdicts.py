"""Function-call verdicts (HumanEval, any ``check(candidate)`` test) against attacks.

Each file of function_attacks/ is a solution of ``add(a, b)`` that is wrong but tries to
pass anyway: by ending the process early with status 0 (``sys.exit``, ``os._exit``,
``atexit``, ``SystemExit`` in a ``finally``, profile/trace hooks, a timer signal, a
background thread), by returning an object that compares equal to anything, or by patching
the test's builtins. Each must fail with the status in ``EXPECTED``, through
``check_function`` and through evaluation's scoring and summary (pass@1 = 0); the same
attacks pass a verdict that trusts the exit status alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from weighted_mtp.data.records import Record, humaneval_program
from weighted_mtp.evaluation.checks import check_function
from weighted_mtp.sandbox.limits import Limits
from weighted_mtp.sandbox.runner import run_many, run_program

ATTACKS = {
    p.stem: p.read_text() for p in sorted((Path(__file__).parent / "function_attacks").glob("*.py"))
}
LIMITS = Limits(timeout_s=5.0, memory_mb=512)
TEST = """\
def check(candidate):
    assert candidate(2, 3) == 5
    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9
    assert candidate(-1, 1) == 0
    return None
"""
EXPECTED = {
    "exit_in_function": "early_exit",
    "os_exit_at_module_level": "early_exit",
    "systemexit_in_finally": "early_exit",
    "profile_hook_from_call": "early_exit",  # the hook fires as the call returns
    "timer_signal_exit": "early_exit",
    "atexit_os_exit": "error",  # the harness ends with os._exit: the handler never runs
    "profile_hook_exits_on_check": "error",  # cleared before check: the wrong answer fails
    "trace_hook_skips_asserts": "error",  # cleared before check: the asserts run
    "shadow_builtin_abs": "error",  # the test keeps the builtins saved before the solution
    "thread_exit": "interference",
    "always_equal": "non_plain_return",
    "int_subclass": "non_plain_return",
    "nested_impostor": "non_plain_return",
}
GOOD = "def add(a, b):\n    print('adding', a, b)\n    return a + b\n"
NAIVE_FAILS = {"nested_impostor"}  # [x] == 5 is False even for an always-equal x


def _check(source: str):
    return check_function(source, TEST, "add", LIMITS)


@pytest.fixture(scope="module")
def verdicts():
    names = sorted(ATTACKS)
    results = run_many([lambda n=n: _check(ATTACKS[n]) for n in names], max_workers=2)
    return dict(zip(names, results, strict=True))


def test_every_attack_has_an_expected_status() -> None:
    assert sorted(ATTACKS) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_attack_fails_with_its_own_status(verdicts, name: str) -> None:
    res = verdicts[name]
    assert not res.passed and res.first_failure is not None
    assert res.first_failure.status == EXPECTED[name], res.first_failure.stderr[-2000:]


def test_attacks_pass_a_verdict_on_the_exit_status_alone() -> None:
    """The attacks are real: as one plain script, each exits 0."""
    names = sorted(set(ATTACKS) - NAIVE_FAILS)
    jobs = [lambda n=n: run_program(humaneval_program("", ATTACKS[n], TEST, "add"), "", LIMITS)
            for n in names]  # fmt: skip
    statuses = dict(zip(names, (r.status for r in run_many(jobs, max_workers=2)), strict=True))
    assert statuses == dict.fromkeys(names, "ok")


def test_correct_passes_wrong_fails_and_plain_containers_pass() -> None:
    assert _check(GOOD).passed
    wrong = _check("def add(a, b):\n    return a - b\n")
    assert not wrong.passed and wrong.first_failure.status == "error"
    assert "AssertionError" in wrong.first_failure.stderr
    test = (
        "def check(f):\n    assert f(3) == [0, 1, 2]\n    assert f(0) == []\n"
        "    assert f(2, True) == {'r': (0, 1), 's': {0, 1}, 'f': frozenset(), 'n': None}\n"
    )
    solution = (
        "from typing import List\nimport concurrent.futures as cf\n\n"
        "def seq(n, as_dict=False):\n"
        "    with cf.ThreadPoolExecutor(2) as pool:  # threads that end within the call\n"
        "        r = list(pool.map(int, range(n)))\n"
        "    if as_dict:\n"
        "        return {'r': tuple(r), 's': set(r), 'f': frozenset(), 'n': None}\n"
        "    return r\n\n"
        "if __name__ == '__main__':\n    print(seq(2))\n"
    )
    assert check_function(solution, test, "seq", LIMITS).passed
    # the prompt's helper functions are wrapped too (HumanEval/32 calls poly from the test)
    helper = "def poly(x):\n    return [x]\n\ndef one(x):\n    return 1\n"
    res = check_function(helper, "def check(f):\n    assert poly(2) == [2]\n", "one", LIMITS)
    assert res.passed
    impostor = (
        "class A(list):\n    pass\n\ndef poly(x):\n    return A([x])\n\ndef one(x):\n    return 1\n"
    )
    res = check_function(impostor, "def check(f):\n    assert poly(2) == [2]\n", "one", LIMITS)
    assert res.first_failure is not None and res.first_failure.status == "non_plain_return"


def test_attacks_score_zero_in_evaluation() -> None:
    from weighted_mtp.data.curriculum import DEFAULT_DIFFICULTY_BINS
    from weighted_mtp.evaluation import evaluate as ev
    from weighted_mtp.evaluation.problems import Problem, score_all

    rec = Record(
        instruction="Complete the function.",
        input="",
        output=GOOD,
        task_id="attack/add",
        is_correct=True,
        metadata={
            "source": "humaneval",
            "difficulty": 0,
            "problem_id": "attack/add",
            "humaneval": {"prompt": "", "test": TEST, "entry_point": "add"},
        },
    )
    problem = Problem(rec, "humaneval")
    attacks = [ATTACKS[n] for n in sorted(ATTACKS)]
    checks = score_all([problem], [attacks], LIMITS, 2)[0]
    row = ev.problem_row(problem, attacks, checks, [1])
    assert row["c"] == 0 and row["pass@1"] == 0.0
    assert [s["status"] for s in row["samples"]] == [EXPECTED[n] for n in sorted(ATTACKS)]
    summary = ev.summarize([row], [1], DEFAULT_DIFFICULTY_BINS)
    assert summary["pass@1"] == 0.0
    good = score_all([problem], [[GOOD]], LIMITS, 1)[0]
    assert ev.problem_row(problem, [GOOD], good, [1])["pass@1"] == 1.0
