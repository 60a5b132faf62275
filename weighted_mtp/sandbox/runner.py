"""Run untrusted generated Python programs, each in a fresh sandboxed process.

Every run is one ``python -s -B`` process (an ``-I`` equivalent: user site off, environment
rebuilt from scratch, script directory dropped from ``sys.path``; plain ``-I`` would ignore
the ``PYTHONHASHSEED`` we set for reproducibility), in layers, outermost first:

1. OS-level isolation (``Limits.isolation``, see ``isolation.py``): ``bwrap`` (default) runs
   it in new PID/network/mount/IPC/UTS/user namespaces, on a minimal read-only root with one
   private size-capped ``/work``, as an unprivileged uid; ``none`` is the explicit opt-out.
2. rlimits set before the program starts: RLIMIT_CPU / AS / FSIZE / NOFILE / CORE, and
   RLIMIT_NPROC (per sandbox under bwrap);
3. a wall-clock timeout; at the end, whatever happened, every process of the program is
   killed (the PID namespace under bwrap; the process group and session otherwise);
4. the Python-level guard (``guard.py``, ``Limits.guards``), which turns the common escape
   attempts into a clear ``blocked`` verdict.

stdin comes from the test input, stdout goes to a host file read back up to a cap (RLIMIT_FSIZE
bounds it), stderr to a pipe of which only the last ``max_output_bytes`` are kept (a flood
there does not fail a correct program); the program's source arrives on an inherited file
descriptor. The verdict comes from the exit code or signal and the timer, never from text.

Report channel (``run_program(..., report=True)``): a verdict that must not rest on the exit
status alone. The runner draws a random token per run and hands it to the bootstrap on an
inherited descriptor (its host file already unlinked), which reads it and closes it before the
program is compiled; the program's globals get ``__report__(message)``, which writes
``"<token> <message>\n"`` to a second inherited descriptor (a host file). ``ExecResult.report``
is the message when the channel holds exactly that one line with the right token, else None:
nothing the program prints, no exit status and no line without the token counts, so a
program that ends early (any exit, any signal) leaves no report. The token stays in the
program's memory (``__report__``'s defaults): the trusted part of a program pops
``__report__`` before running untrusted code, which then cannot write a report by accident
but can still recover the token on purpose (frames, ``gc``, ``/proc/self/mem``).
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from weighted_mtp.sandbox.isolation import get_isolation
from weighted_mtp.sandbox.limits import Limits

T = TypeVar("T")
VIOLATION_EXIT = 97  # exit code of a program stopped by a guard
MEMORY_EXIT = 98  # exit code of a program that raised MemoryError
GUARD_SOURCE = (Path(__file__).parent / "guard.py").read_text(encoding="utf-8")


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one run.

    ``status``: ``ok`` (exit 0), ``error`` (other exit code), ``timeout`` (wall or CPU limit),
    ``memory`` (MemoryError under RLIMIT_AS), ``blocked`` (a guard stopped it), ``killed``
    (ended by another signal, e.g. SIGKILL/SIGSEGV/abort); it comes from the kernel's exit
    information (exit code or signal, the timer) only, never from what the program printed.
    ``stdout``: at most ``Limits.max_output_bytes`` (``truncated`` when it wrote more);
    ``stderr``: the *last* ``max_output_bytes`` of what it wrote (``stderr_truncated`` when
    more was cut off the front: a stderr flood neither fails nor slows a run by itself).
    ``report``: the message of the report channel (module docstring), None when not asked
    for or not validly written.
    """

    status: str
    stdout: str
    stderr: str
    returncode: int
    wall_time: float
    truncated: bool = False
    report: str | None = None
    stderr_truncated: bool = False


# The child's whole start-up: no import beyond what the guard needs (``json`` and the
# ``re`` it pulls in cost as much as the interpreter's own start), so the configuration
# arrives as plain words: argv[1] = "FD GUARDS VIOLATION_EXIT MEMORY_EXIT TOKEN_FD REPORT_FD"
# (-1 -1 without a report channel), argv[2] = "RLIMIT_X=SOFT,HARD ...", argv[3] = the guard's
# source.
_BOOTSTRAP = """\
import os, resource, sys
_fd, _guards, _violation, _memory, _token_fd, _report_fd = map(int, sys.argv[1].split())
_main = {"__name__": "__main__", "__file__": "solution.py", "__builtins__": __builtins__}
if _report_fd >= 0:
    with os.fdopen(_token_fd, "rb") as _f:
        _token = _f.read()
    def _report(message, _write=os.write, _fd=_report_fd, _token=_token):
        _write(_fd, _token + b" " + message.encode() + b"\\n")
    _main["__report__"] = _report
    del _token, _report
for _item in sys.argv[2].split():
    _name, _, _pair = _item.partition("=")
    resource.setrlimit(getattr(resource, _name), tuple(map(int, _pair.split(","))))
_guard_source = sys.argv[3]
with os.fdopen(_fd, encoding="utf-8", errors="replace") as _f:
    _src = _f.read()
sys.argv = ["solution.py"]
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
try:
    _code = compile(_src, "solution.py", "exec")
    del _src
    if _guards:
        _guard = {"__name__": "sandbox_guard"}
        exec(compile(_guard_source, "<sandbox guard>", "exec"), _guard)
        _guard["install"](_violation)
        del _guard
    del _guard_source
    exec(_code, _main)
except MemoryError:
    os.write(2, b"MemoryError\\n")
    os._exit(_memory)
"""


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` exits without reaping it; False on timeout. A pidfd turns readable
    the moment it exits; without pidfds (old kernels), poll with a growing delay."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            return bool(select.select([pidfd], [], [], timeout)[0])
        finally:
            os.close(pidfd)
    deadline = time.monotonic() + timeout
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)
    return True


def _remove_tree(path: str) -> None:
    """Remove the run directory, restoring permissions the program may have taken away."""
    try:
        shutil.rmtree(path)
    except OSError:
        for root, dirs, _ in os.walk(path):
            for d in dirs:
                p = os.path.join(root, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
        shutil.rmtree(path, ignore_errors=True)


def _status(returncode: int, timed_out: bool) -> str:
    """The verdict from the kernel's exit information alone (exit code or signal, and our
    own timer): nothing the program writes to stderr counts."""
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0:
        return "ok"
    if returncode == MEMORY_EXIT:  # the bootstrap's MemoryError exit (RLIMIT_AS)
        return "memory"
    if returncode == VIOLATION_EXIT:
        return "blocked"
    return "killed" if returncode < 0 else "error"


def _read_capped(path: str, cap: int) -> tuple[str, bool]:
    """(text up to ``cap`` bytes, truncated?)."""
    with open(path, "rb") as f:
        data = f.read(cap + 1)
        size = os.fstat(f.fileno()).st_size
    return data[:cap].decode("utf-8", "replace"), size > cap


class _Tail(threading.Thread):
    """Drains a pipe to its end, keeping only the last ``cap`` bytes: stderr is not a file,
    so RLIMIT_FSIZE does not apply and a flood costs the program nothing but its time."""

    def __init__(self, fd: int, cap: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.cap, self.total = fd, cap, 0
        self.buf = bytearray()

    def run(self) -> None:
        while chunk := os.read(self.fd, 1 << 16):
            self.total += len(chunk)
            self.buf += chunk
            if len(self.buf) > 2 * self.cap:
                del self.buf[: -self.cap]

    def result(self) -> tuple[str, bool]:
        """(the last ``cap`` bytes as text, was anything cut?) once the pipe is closed."""
        self.join(10)
        os.close(self.fd)
        return bytes(self.buf[-self.cap :]).decode("utf-8", "replace"), self.total > self.cap


def _authenticated(data: bytes, token: bytes) -> str | None:
    """The message of a report channel holding exactly one ``"<token> <message>\\n"`` line."""
    head, sep, message = data.partition(b" ")
    if not sep or head != token or not message.endswith(b"\n") or b"\n" in message[:-1]:
        return None
    return message[:-1].decode("ascii", "replace")


def run_program(
    source: str, stdin: str = "", limits: Limits | None = None, report: bool = False
) -> ExecResult:
    """Run ``source`` as ``__main__`` with ``stdin`` in a fresh sandboxed process;
    ``report``: open the report channel (module docstring).

    Raises IsolationUnavailable (a UserError) when ``limits.isolation`` cannot work here.
    """
    limits = limits or Limits()
    iso = get_isolation(limits.isolation)
    iso.ensure()
    python = limits.python or iso.default_python()
    base = tempfile.mkdtemp(prefix="wmtp-sandbox-")
    token = secrets.token_hex(16).encode() if report else b""
    try:
        names = ("stdin", "stdout", "source", "token", "report")
        files = {n: os.path.join(base, n) for n in names}
        with open(files["stdin"], "w", encoding="utf-8") as f:
            f.write(stdin)
        with open(files["source"], "w", encoding="utf-8") as f:
            f.write(source)
        with open(files["token"], "wb") as f:
            f.write(token)
        with (
            open(files["stdin"], "rb") as fin,
            open(files["stdout"], "wb") as fout,
            open(files["source"], "rb") as fsrc,
            open(files["token"], "rb") as ftok,
            open(files["report"], "wb") as frep,
        ):
            os.unlink(files["token"])  # the open descriptor is its only way in
            argv = [python, "-s", "-B", "-c", _BOOTSTRAP]
            launch = iso.launch(argv, base, limits.disk_mb << 20, limits.max_inodes)
            channel = (ftok.fileno(), frep.fileno()) if report else ()
            words = f"{fsrc.fileno()} {int(limits.guards)} {VIOLATION_EXIT} {MEMORY_EXIT} "
            words += " ".join(map(str, channel or (-1, -1)))
            rlimits = " ".join(
                f"{name}={soft},{hard}"
                for name, (soft, hard) in limits.rlimits(launch.nproc).items()
            )
            user: dict[str, object] = {}
            if launch.user is not None:
                user = {"user": launch.user, "group": launch.user, "extra_groups": []}
            err_r, err_w = os.pipe()
            tail = _Tail(err_r, limits.max_output_bytes)
            tail.start()
            start = time.monotonic()
            try:
                proc = subprocess.Popen(
                    [*launch.argv, words, rlimits, GUARD_SOURCE], stdin=fin, stdout=fout,
                    stderr=err_w, cwd=launch.cwd, env=launch.env, close_fds=True,
                    pass_fds=(fsrc.fileno(), *channel, *launch.pass_fds), start_new_session=True,
                    **user,
                )  # fmt: skip
            except BaseException:
                iso.abandon(launch)
                os.close(err_w)
                tail.result()
                raise
            os.close(err_w)  # the program's processes hold the only write ends now
            try:
                iso.started(launch, proc)
                timed_out = not _wait_exit(proc.pid, limits.timeout_s)
            finally:
                iso.stop(launch, proc)
            wall = time.monotonic() - start
            err, err_trunc = tail.result()  # every writer is gone: the pipe is at its end
        out, out_trunc = _read_capped(files["stdout"], limits.max_output_bytes)
        with open(files["report"], "rb") as f:
            message = _authenticated(f.read(4096), token) if report else None
    finally:
        _remove_tree(base)
    returncode = iso.exit_status(proc.returncode)
    status = _status(returncode, timed_out)
    return ExecResult(status, out, err, returncode, wall, out_trunc, message, err_trunc)


def run_many(jobs: Sequence[Callable[[], T]], max_workers: int = 4) -> list[T]:
    """Run zero-argument jobs (e.g. ``functools.partial(run_program, src, stdin, limits)``)
    with at most ``max_workers`` at a time; results come back in input order."""
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(jobs))) as pool:
        return list(pool.map(lambda job: job(), jobs))
