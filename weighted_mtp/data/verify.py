"""Run stdin/stdout Python programs against tests, one fresh process per program, in parallel.

The programs of a chunk share one sandbox (``sandbox.runner.run_program``: bubblewrap by
default, the same isolation as evaluation) but never an interpreter. The sandbox runs
HARNESS, a small parent that never executes program code. It makes itself non-dumpable
(``PR_SET_DUMPABLE`` 0: its children cannot ptrace it nor open its ``/proc/<pid>/mem`` or
``/proc/<pid>/fd``; this holds under bwrap, where the sandbox has no capabilities, not under
``none`` as root), reads one job (``source``, its inputs) at a time from its stdin as a
length-prefixed frame (no read-ahead: later jobs are not in its memory), and forks one child
per program. The child starts a new session, gets fresh descriptors only (stdin and stderr
``/dev/null``, fd 1 a pipe to the parent that carries its own per-input outputs; every other
descriptor is closed, so neither the job stream nor the results channel is reachable),
lowers RLIMIT_CPU, compiles the program, installs the sandbox guard (``guard.py``) and runs
it once per input as a fresh ``__main__`` with ``sys.stdin`` / ``sys.stdout`` redirected to
strings and a SIGALRM limit of ``limit_s``, as before. An input's output is None when the
run raised (``SystemExit`` included), timed out, or printed more than ``MAX_RUN_OUTPUT``
characters. The parent enforces the limit itself: when the child reports no next output
within ``limit_s + GRACE_S`` (alarm ignored, blocked or swallowed), it SIGKILLs the child,
and that input and the program's remaining ones get None. A program can thus only change
its own outputs (its inputs share its process). After each program the parent kills what
it left behind (under bwrap every process of the sandbox's PID namespace but its init and
the parent; under ``none`` the child's process group) and empties the work directory, so
no file or process reaches the next program. Only the parent writes the results channel
(its stdout): one JSON line per job, written when the job is done.

When the harness itself dies (a program killed or stopped it), the host keeps the results
already written, counts the job that was running as failed, and runs the rest of the chunk
in a fresh sandbox (at most ``MAX_RESTARTS`` times per chunk, then RuntimeError).

Residual: a child starts as a copy of the parent's memory, which holds its own job and may
hold freed (not live) remnants of earlier jobs of its chunk (sources and inputs; never
expected outputs or verdicts, which stay on the host). Under ``isolation="none"`` there is
no OS boundary: a program running as the evaluator's user (root: with every capability) can
reach the harness. Used to verify the labels of dataset programs (synthetic).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from weighted_mtp.data.records import outputs_match
from weighted_mtp.sandbox.limits import Limits
from weighted_mtp.sandbox.runner import GUARD_SOURCE, VIOLATION_EXIT, run_program

MAX_RUN_OUTPUT = 1 << 20  # characters printed by one run; more fails the run
GRACE_S = 0.25  # beyond limit_s per input before the parent kills a silent program
MAX_RESTARTS = 8  # harness deaths tolerated per chunk (each fails the job it was running)
log = logging.getLogger(__name__)

FRAME_DIGITS = 10  # a job frame: its length as 10 ASCII digits, then that many JSON bytes

HARNESS = r"""
import _frozen_importlib_external, _posixsubprocess, io, json, os, resource, select, signal
import sys, time

try:  # PR_SET_DUMPABLE = 0: children cannot ptrace us or open our /proc entries
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    del ctypes
except Exception:
    pass

DIGITS = %d

def _read_exact(n):
    data = b""
    while len(data) < n:
        part = os.read(0, n - len(data))
        if not part:
            raise EOFError
        data += part
    return data

def _frame():
    size = _read_exact(DIGITS)
    return json.loads(_read_exact(int(size)))

def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]

def _wipe(path="."):
    for name in os.listdir(path):
        p = os.path.join(path, name)
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                _wipe(p)
                os.rmdir(p)
            else:
                os.unlink(p)
        except OSError:
            pass

def _sweep(child):
    try:
        os.killpg(child, signal.SIGKILL)
    except OSError:
        pass
    if not SWEEP:
        return
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in (1, me):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass

def _child(source, inputs, out_w):
    # one process per program: its inputs run here in turn, each as a fresh __main__
    try:
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(null, 2)
        os.closerange(3, MAXFD)
        resource.setrlimit(resource.RLIMIT_CPU, (CPU, CPU))
        sys.stdin = sys.__stdin__ = open(0, closefd=False)
        sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)
        sys.stderr = sys.__stderr__ = open(2, "w", closefd=False)
        real_in, real_out, write = sys.stdin, sys.stdout, os.write
        def _alarm(*_):
            raise TimeoutError
        signal.signal(signal.SIGALRM, _alarm)
        try:
            code = compile(source, "<solution>", "exec")
        except BaseException:
            code = None
        if GUARD is not None:
            env = {"__name__": "sandbox_guard"}
            exec(GUARD, env)
            env["install"](VIOLATION)
            del env
        for text in inputs:
            out = None
            if code is not None:
                buf = io.StringIO()
                sys.stdin, sys.stdout = io.StringIO(text), buf
                try:
                    signal.setitimer(signal.ITIMER_REAL, LIMIT)
                    exec(code, {"__name__": "__main__"})
                    out = buf.getvalue()
                except BaseException:
                    pass
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    sys.stdin, sys.stdout = real_in, real_out
            if out is not None and len(out) > CAP:
                out = None
            data = (json.dumps(out) + "\n").encode()
            while data:
                data = data[write(1, data):]
    except BaseException:
        pass
    os._exit(0)

def _run(source, inputs):
    # the outputs of one program on its inputs, from a child process of its own
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(source, inputs, out_w)
    os.close(out_w)
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    cap = (8 * CAP + 64) * len(inputs)
    data, n_lines, eof = b"", 0, False
    deadline = time.monotonic() + LIMIT + GRACE  # per input: progress moves it on
    while n_lines < len(inputs) and not eof and len(data) <= cap:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        watch = [out_r] + ([pidfd] if pidfd is not None else [])
        ready = select.select(watch, [], [], remaining)[0]
        if out_r in ready:
            part = os.read(out_r, 1 << 16)
            eof = not part
            data += part
            if part.count(b"\n"):
                n_lines = data.count(b"\n")
                deadline = time.monotonic() + LIMIT + GRACE
        elif pidfd is not None and pidfd in ready:
            # exited: what it wrote is in the pipe unless a leftover holds it open
            while select.select([out_r], [], [], 0)[0]:
                part = os.read(out_r, 1 << 16)
                if not part:
                    break
                data += part
                if len(data) > cap:
                    break
            break
    _sweep(pid)
    os.waitpid(pid, 0)
    if pidfd is not None:
        os.close(pidfd)
    os.close(out_r)
    _wipe()
    outs = []
    for line in data.split(b"\n")[: len(inputs)]:
        try:
            out = json.loads(line)
        except ValueError:
            break
        outs.append(out if isinstance(out, str) else None)
    return outs + [None] * (len(inputs) - len(outs))

_header = _frame()
LIMIT, CAP, SWEEP = _header["limit_s"], _header["cap"], _header["sweep"]
CPU, VIOLATION, GRACE = int(LIMIT * _header["n_max"]) + 1, _header["violation"], _header["grace"]
GUARD = compile(_header["guard"], "<sandbox guard>", "exec") if _header["guard"] else None
MAXFD = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
del _header
for _ in range(_frame()):
    _source, _inputs = _frame()
    _outs = _run(_source, _inputs)
    _write_all(1, (json.dumps(_outs) + "\n").encode())
    del _source, _inputs, _outs
"""


def _frame(obj: object) -> bytes:
    data = json.dumps(obj).encode()
    return b"%0*d" % (FRAME_DIGITS, len(data)) + data


def _harness_stdin(jobs: list[tuple[str, list[str]]], limit_s: float, isolation: str) -> str:
    header = {
        "limit_s": limit_s, "cap": MAX_RUN_OUTPUT, "sweep": isolation == "bwrap",
        "guard": GUARD_SOURCE, "violation": VIOLATION_EXIT,
        "grace": GRACE_S,
        "n_max": max((len(i) for _, i in jobs), default=1),
    }  # fmt: skip
    parts = [_frame(header), _frame(len(jobs)), *(_frame(job) for job in jobs)]
    return b"".join(parts).decode()


def _complete_lines(stdout: str, jobs: list[tuple[str, list[str]]]) -> list[list[str | None]]:
    """The job results of the harness's stdout, up to the first incomplete or bad line."""
    done: list[list[str | None]] = []
    for line, (_, inputs) in zip(stdout.split("\n")[:-1], jobs, strict=False):
        try:
            outs = json.loads(line)
        except ValueError:
            break
        if not isinstance(outs, list) or len(outs) != len(inputs):
            break
        if not all(o is None or isinstance(o, str) for o in outs):
            break
        done.append(outs)
    return done


def _run_chunk(
    jobs: list[tuple[str, list[str]]], limit_s: float, isolation: str
) -> list[list[str | None]]:
    results: list[list[str | None]] = []
    restarts = 0
    while len(results) < len(jobs):
        rest = jobs[len(results) :]
        n_inputs = sum(len(i) for _, i in rest)
        size = 64 << 20  # the results of the chunk, one JSON line per job
        limits = Limits(
            timeout_s=60 + (limit_s + GRACE_S) * n_inputs, max_output_bytes=size,
            max_file_bytes=size, isolation=isolation, guards=False,
        )  # fmt: skip
        res = run_program(HARNESS % FRAME_DIGITS, _harness_stdin(rest, limit_s, isolation), limits)
        done = _complete_lines(res.stdout, rest)
        results += done
        if len(done) == len(rest):
            break
        restarts += 1  # the harness died while running rest[len(done)]: that job fails
        if restarts > MAX_RESTARTS:
            raise RuntimeError(
                f"verification harness failed {restarts} times ({res.status}): {res.stderr[-2000:]}"
            )
        log.warning(
            "label verification: the harness died (%s) while running a program; that "
            "program fails, the %d after it run in a fresh sandbox",
            res.status, len(rest) - len(done) - 1,
        )  # fmt: skip
        results.append([None] * len(rest[len(done)][1]))
    return results


def run_programs(
    jobs: Sequence[tuple[str, Sequence[str]]],
    workers: int | None = None,
    limit_s: float = 0.5,
    isolation: str = "bwrap",
) -> list[list[str | None]]:
    """For each ``(source, inputs)`` the stdout per input (None: error, timeout, or more
    than ``MAX_RUN_OUTPUT`` characters); every program is its own process (module
    docstring).

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
