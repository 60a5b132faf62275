"""Per-program cost of the sandbox: bubblewrap isolation vs the unisolated path.

Runs the same programs through ``run_program`` with ``isolation=bwrap`` (the default) and
``isolation=none`` (the old path: a plain child process of the evaluator's interpreter with
the Python guard and rlimits), interleaved so all see the same machine load, and prints
the mean seconds per run and the bwrap/none ratio. ``none*`` is the unisolated path with
bwrap's interpreter (the base Python, not the venv): bwrap/none* is the cost of the
namespaces alone. Also times one stdin/stdout test suite as evaluation runs it
(``check_stdio``, one process per test).

    python benchmarks/sandbox.py [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

from weighted_mtp.evaluation.checks import check_stdio
from weighted_mtp.sandbox.isolation import get_isolation
from weighted_mtp.sandbox.limits import Limits
from weighted_mtp.sandbox.runner import run_program

PROGRAMS = {
    "trivial": ("print(1)\n", ""),
    "stdin sum": ("print(sum(map(int, input().split())))\n", "1 2 3 4 5\n"),
    "imports": ("import collections, heapq, itertools, json, math, re\nprint(2)\n", ""),
}
TESTS = [{"input": f"{i} {i + 1}\n", "output": f"{2 * i + 1}\n"} for i in range(5)]
ADD = "a, b = map(int, input().split())\nprint(a + b)\n"


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=30, help="runs per program and isolation")
    args = p.parse_args(argv)
    base_python = get_isolation("bwrap").default_python()
    limits = {name: Limits(timeout_s=10.0, isolation=name) for name in ("bwrap", "none")}
    limits["none*"] = Limits(timeout_s=10.0, isolation="none", python=base_python)
    for lim in limits.values():  # warm-up: bwrap self-test, page cache
        run_program("pass", "", lim)
    print(f"bwrap interpreter: {base_python}; runs per cell: {args.runs}")
    print(f"{'program':<14}{'none':>9}{'none*':>9}{'bwrap':>9}{'bwrap/none':>12}"
          f"{'bwrap/none*':>13}{'+ms vs none*':>14}")  # fmt: skip
    cases: dict[str, dict[str, Callable[[], object]]] = {}
    for name, (src, stdin) in PROGRAMS.items():
        cases[name] = {iso: partial(run_program, src, stdin, lim) for iso, lim in limits.items()}
    cases["5-test suite"] = {
        iso: partial(check_stdio, ADD, TESTS, lim) for iso, lim in limits.items()
    }
    for name, fns in cases.items():
        times: dict[str, list[float]] = {iso: [] for iso in limits}
        for _ in range(args.runs):  # interleaved: both see the same load
            for iso, fn in fns.items():
                times[iso] += timed(fn, 1)
        m = {iso: statistics.mean(t) for iso, t in times.items()}
        print(
            f"{name:<14}{m['none']:>8.3f}s{m['none*']:>8.3f}s{m['bwrap']:>8.3f}s"
            f"{m['bwrap'] / m['none']:>11.2f}x{m['bwrap'] / m['none*']:>12.2f}x"
            f"{(m['bwrap'] - m['none*']) * 1000:>14.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
