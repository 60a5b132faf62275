"""Verdicts of generated programs against a problem's tests, each run in the sandbox.

A stdin/stdout problem passes when every test's run exits cleanly, its output was not cut and
it matches the expected output (:func:`~weighted_mtp.data.records.outputs_match`, the same
rule as label verification).

A function problem (HumanEval, any ``check(candidate)`` test) runs in :func:`_harness`, whose
source is the sandboxed program. It passes only when ``check`` *returned* and the harness then
wrote ``pass`` on the runner's report channel (``sandbox.runner``: one line carrying a random
per-run token the candidate's code never receives) and exited 0; the exit status alone
proves nothing. The harness takes ``__report__`` out of its globals, then runs the solution
(prompt + completion) in a namespace of its own and the test code in a copy of it whose
builtins were saved before the solution ran (a solution that shadows or patches ``abs`` does
not change the test's). ``check`` gets the entry point wrapped, and the prompt's other
functions too: every value they return reaches the test as a fresh copy of plain data
(``int``, ``float``, ``complex``, ``str``, ``bytes``, ``bool``, ``None`` and exact ``list``,
``tuple``, ``dict``, ``set``, ``frozenset`` of them, nested at most 100 deep; subclasses are
not plain). Before ``check`` and after every call the harness clears trace and profile hooks,
``gc`` callbacks, Python signal handlers and interval timers. Statuses besides the runner's:
``early_exit`` (SystemExit/KeyboardInterrupt/GeneratorExit raised by the candidate, or a
process that ended without a report: ``sys.exit``, ``os._exit``, ``atexit``, a hook),
``non_plain_return``, ``interference`` (a thread still running after a call, a
``sys.monitoring`` tool left registered).

Residual risk: the candidate runs in the test's interpreter. Code written to attack the
harness can read the token or the test's state from memory (``sys._getframe``, ``gc``,
``/proc/self/mem``) and forge a pass, as can a finaliser (``__del__``, weakref callback) that
runs during ``check``. What cannot pass is a program that merely ends early, returns
something other than plain data, or shadows the test's builtins.
"""

from __future__ import annotations

import functools
import inspect
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


# The harness's own statuses (a failed ``check`` is the runner's ``error``).
HARNESS_STATUSES = ("early_exit", "non_plain_return", "interference")


def _harness(solution: str, test: str, entry_point: str) -> None:  # noqa: C901
    """The sandboxed program of a function check (module docstring); never run here."""
    import builtins
    import gc
    import os
    import signal
    import sys
    import traceback
    import types

    report = globals().pop("__report__")
    exit_now, settrace, setprofile = os._exit, sys.settrace, sys.setprofile
    frames, gc_callbacks = sys._current_frames, gc.callbacks
    monitoring = getattr(sys, "monitoring", None)
    getsignal, setsignal, setitimer = signal.getsignal, signal.signal, signal.setitimer
    keep = (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler, None)
    sigs = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
    timers = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)
    scalars = (int, float, complex, str, bytes, bool, type(None))
    containers = (list, tuple, set, frozenset)
    pristine, streams = dict(builtins.__dict__), (sys.stdout, sys.stderr)
    verdict = []  # the first failure the wrapper saw: no test code can clear it

    class NonPlainReturn(BaseException):  # not an Exception: ``except Exception`` misses it
        pass

    def end(status: str) -> None:
        for stream in streams:  # the real ones, saved before the solution ran
            try:  # noqa: SIM105
                stream.flush()
            except BaseException:  # noqa: BLE001, S110
                pass
        report(status)
        exit_now(0 if status == "pass" else 1)

    def reset() -> None:
        settrace(None)
        setprofile(None)
        gc_callbacks.clear()
        for sig in sigs:
            if getsignal(sig) not in keep:
                setsignal(sig, signal.SIG_DFL)
        for timer in timers:
            setitimer(timer, 0)
        if len(frames()) > 1 or (monitoring and any(map(monitoring.get_tool, range(6)))):
            verdict.append("interference")

    def plain(value, depth=0):
        kind = type(value)
        if kind in scalars:
            return value
        if depth < 100 and kind in containers:
            return kind(plain(v, depth + 1) for v in value)
        if depth < 100 and kind is dict:
            return {plain(k, depth + 1): plain(v, depth + 1) for k, v in value.items()}
        why = "nested deeper than 100" if depth >= 100 else f"a {kind.__qualname__}"
        raise NonPlainReturn(f"the candidate returned {why}: only plain data reaches the test")

    def wrap(fn):
        def candidate(*args, **kwargs):
            try:
                result = fn(*args, **kwargs)
            except Exception:
                raise
            except BaseException:
                verdict.append("early_exit")
                raise
            finally:
                reset()
            try:
                return plain(result)
            except NonPlainReturn:
                verdict.append("non_plain_return")
                raise

        return candidate

    namespace = {"__name__": "__main__", "__file__": "solution.py", "__builtins__": builtins}
    try:
        exec(compile(solution, "solution.py", "exec"), namespace)
        reset()
        glob = {k: v for k, v in namespace.items() if k not in pristine}
        for name, value in glob.items():
            if type(value) is types.FunctionType:
                glob[name] = wrap(value)
        glob.update(__name__="__main__", __builtins__=pristine)
        exec(compile(test, "test.py", "exec"), glob)
        check, candidate = glob["check"], wrap(namespace[entry_point])
        reset()
        if not verdict:
            check(candidate)
            reset()
    except MemoryError:
        raise
    except (SystemExit, KeyboardInterrupt, GeneratorExit):
        verdict.append("early_exit")
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        verdict.append("error")
    end(verdict[0] if verdict else "pass")


@functools.cache
def _harness_source() -> str:
    return inspect.getsource(_harness)


def function_program(solution: str, test: str, entry_point: str) -> str:
    """The sandboxed program that checks ``solution`` with ``test``'s ``check(entry_point)``."""
    return f"{_harness_source()}\n_harness({solution!r}, {test!r}, {entry_point!r})\n"


def check_function(
    solution: str, test: str, entry_point: str, limits: Limits | None = None
) -> CheckResult:
    """Check ``solution`` (prompt + completion) with the test code's ``check(entry_point)``
    in the harness (module docstring): passes only on the harness's authenticated ``pass``
    and exit 0. The failure's status is the harness's report (``error`` for a failed check,
    or one of ``HARNESS_STATUSES``); without a report, ``early_exit`` for a process that
    ended by itself, else the runner's status (``timeout``, ``memory``, ``blocked``...)."""
    res = run_program(function_program(solution, test, entry_point), "", limits, report=True)
    if res.report == "pass" and res.status == "ok":
        return CheckResult(True, 1, 1)
    if res.report is not None and res.report != "pass":
        status = res.report
    else:
        status = "early_exit" if res.status in ("ok", "error") else res.status
    fail = Failure(0, status, "", "", _clip(res.stdout), _clip(res.stderr[-4000:]))
    return CheckResult(False, 0, 1, fail)
