"""Run stdin/stdout Python programs against tests, many per subprocess, in parallel.

Each worker is one ``python -c HARNESS`` process that compiles each program once and
``exec``s it per test input with ``sys.stdin`` / ``sys.stdout`` redirected to strings
and a per-test time limit (SIGALRM). Used to verify synthetic labels; programs are our
own generated code, so there is no sandbox beyond the subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from weighted_mtp.data.records import outputs_match

HARNESS = r"""
import io, json, signal, sys
limit = float(sys.argv[1])
def _alarm(*_):
    raise TimeoutError
signal.signal(signal.SIGALRM, _alarm)
jobs = json.load(sys.stdin)
real_in, real_out = sys.stdin, sys.stdout
results = []
for source, inputs in jobs:
    try:
        code = compile(source, "<solution>", "exec")
    except SyntaxError:
        results.append([None] * len(inputs))
        continue
    outs = []
    for text in inputs:
        buf = io.StringIO()
        sys.stdin, sys.stdout = io.StringIO(text), buf
        try:
            signal.setitimer(signal.ITIMER_REAL, limit)
            exec(code, {"__name__": "__main__"})
            ok = True
        except BaseException:
            ok = False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.stdin, sys.stdout = real_in, real_out
        outs.append(buf.getvalue() if ok else None)
    results.append(outs)
json.dump(results, real_out)
"""


def _run_chunk(jobs: list[tuple[str, list[str]]], limit_s: float) -> list[list[str | None]]:
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS, str(limit_s)],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=60 + limit_s * sum(len(i) for _, i in jobs),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"verification harness failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def run_programs(
    jobs: Sequence[tuple[str, Sequence[str]]],
    workers: int | None = None,
    limit_s: float = 0.5,
) -> list[list[str | None]]:
    """For each ``(source, inputs)`` the stdout per input (None: error or timeout)."""
    jobs = [(src, list(inputs)) for src, inputs in jobs]
    if not jobs:
        return []
    workers = max(1, workers or os.cpu_count() or 1)
    n_chunks = min(len(jobs), workers * 2)
    chunks = [jobs[i::n_chunks] for i in range(n_chunks)]
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(lambda c: _run_chunk(c, limit_s), chunks))
    results: list[list[str | None]] = [[] for _ in jobs]
    for i, chunk_result in enumerate(done):
        for j, outs in enumerate(chunk_result):
            results[i + j * n_chunks] = outs
    return results


def passes(outputs: Sequence[str | None], expected: Sequence[str]) -> list[bool]:
    """Per test: did the program run and print the expected output?"""
    return [o is not None and outputs_match(o, e) for o, e in zip(outputs, expected, strict=True)]
