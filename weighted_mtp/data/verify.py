"""Run stdin/stdout Python programs against tests, many per sandboxed process, in parallel.

Each worker is one sandboxed run (``sandbox.runner.run_program``: bubblewrap by default,
the same isolation as evaluation) of HARNESS, which compiles each program once and ``exec``s
it per test input with ``sys.stdin`` / ``sys.stdout`` redirected to strings and a per-test
time limit (SIGALRM). Used to verify the labels of dataset programs (synthetic).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from weighted_mtp.data.records import outputs_match
from weighted_mtp.sandbox.limits import Limits
from weighted_mtp.sandbox.runner import run_program

HARNESS = r"""
import io, json, signal, sys
payload = json.load(sys.stdin)
limit = payload["limit_s"]
def _alarm(*_):
    raise TimeoutError
signal.signal(signal.SIGALRM, _alarm)
jobs = payload["jobs"]
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


def _run_chunk(
    jobs: list[tuple[str, list[str]]], limit_s: float, isolation: str
) -> list[list[str | None]]:
    n_inputs = sum(len(i) for _, i in jobs)
    size = 64 << 20  # the harness prints every output of the chunk as one JSON document
    limits = Limits(
        timeout_s=60 + limit_s * n_inputs, max_output_bytes=size, max_file_bytes=size,
        isolation=isolation,
    )  # fmt: skip
    res = run_program(HARNESS, json.dumps({"limit_s": limit_s, "jobs": jobs}), limits)
    if res.status != "ok" or res.truncated:
        raise RuntimeError(f"verification harness failed ({res.status}): {res.stderr[-2000:]}")
    return json.loads(res.stdout)


def run_programs(
    jobs: Sequence[tuple[str, Sequence[str]]],
    workers: int | None = None,
    limit_s: float = 0.5,
    isolation: str = "bwrap",
) -> list[list[str | None]]:
    """For each ``(source, inputs)`` the stdout per input (None: error or timeout).

    ``isolation``: ``bwrap`` or ``none`` (see ``sandbox.isolation``); raises
    IsolationUnavailable when bwrap cannot run here."""
    jobs = [(src, list(inputs)) for src, inputs in jobs]
    if not jobs:
        return []
    workers = max(1, workers or os.cpu_count() or 1)
    n_chunks = min(len(jobs), workers * 2)
    chunks = [jobs[i::n_chunks] for i in range(n_chunks)]
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(lambda c: _run_chunk(c, limit_s, isolation), chunks))
    results: list[list[str | None]] = [[] for _ in jobs]
    for i, chunk_result in enumerate(done):
        for j, outs in enumerate(chunk_result):
            results[i + j * n_chunks] = outs
    return results


def passes(outputs: Sequence[str | None], expected: Sequence[str]) -> list[bool]:
    """Per test: did the program run and print the expected output?"""
    return [o is not None and outputs_match(o, e) for o, e in zip(outputs, expected, strict=True)]
