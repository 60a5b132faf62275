"""Run untrusted generated Python programs in a constrained child process.

Each program runs in a fresh ``python -s -B`` process (an ``-I`` equivalent: user site off,
environment rebuilt from scratch, script directory dropped from ``sys.path``; plain ``-I``
would ignore the ``PYTHONHASHSEED`` we set for reproducibility) with:

* a new session / process group; on exit or timeout the whole group and every process left in
  the session is SIGKILLed (while the leader is still an unreaped zombie, so ids cannot be
  reused), so background children and fork bombs do not outlive the run;
* a wall-clock timeout and RLIMIT_CPU / RLIMIT_AS / RLIMIT_FSIZE / RLIMIT_NOFILE / RLIMIT_CORE;
* a fresh temporary working directory (also HOME and TMPDIR), removed afterwards;
* an environment built from scratch (minimal PATH, LANG, PYTHONHASHSEED...), so no AWS_*,
  MLFLOW_*, tokens or other secrets of the evaluator are inherited;
* stdin from the test input, stdout/stderr written to files and read back up to a size cap;
* in-process guards installed before the user code (``Limits.guards``): process creation
  (fork, exec*, spawn*, system, posix_spawn, subprocess, multiprocessing, pty), ctypes,
  leaving the group (setsid/setpgid), signalling other processes, changing rlimits,
  file mutation (open for writing, remove, rename, chmod, rmtree...) and chdir outside the
  work dir, and reading other processes' /proc entries. A guard hit prints
  ``sandbox: blocked ...`` and ends the program at once (status ``"blocked"``);
* optionally (``Limits.run_as``, when the evaluator is root) an unprivileged uid, which makes
  file permissions and RLIMIT_NPROC (counted per uid, ignored for root) real kernel limits.

What it does NOT protect against: this is defence in depth for evaluating model outputs, not a
security boundary like a container, VM or seccomp filter. The guards are Python-level and can
be bypassed by determined code (e.g. recovering the original functions from closures, C
extensions); without ``run_as`` the child has the evaluator's uid, so it can read files that
uid can read and RLIMIT_NPROC is not enforced for root. There is no network isolation, no
disk quota (only a per-file size cap), and a process that escapes via setsid from native code
is not tracked. Run the evaluator itself in a container for real isolation.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
STATUSES = ("ok", "error", "timeout", "memory", "blocked", "killed")
VIOLATION_EXIT = 97  # exit code of a program stopped by a guard
MEMORY_EXIT = 98  # exit code of a program that raised MemoryError

# Executed in the child before the user code (in its own namespace; VIOLATION_EXIT is injected).
GUARD_SOURCE = r"""
import _io, _posixsubprocess, builtins, io, os, posix, resource, shutil, signal, sys
_write, _exit, _readlink, _fspath = os.write, os._exit, os.readlink, os.fspath
_realpath, _join, _abspath = os.path.realpath, os.path.join, os.path.abspath
_work = _realpath(os.getcwd())
_pid = str(os.getpid())
_devices = ("/dev/null", "/dev/stdout", "/dev/stderr")
_wflags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def _deny(what):
    _write(2, ("sandbox: blocked " + what + "\n").encode())
    _exit(VIOLATION_EXIT)

def _resolve(path, dir_fd=None):
    path = _fspath(path)
    if isinstance(path, bytes):
        path = path.decode("utf-8", "surrogateescape")
    if dir_fd is not None and not path.startswith("/"):
        path = _join(_readlink("/proc/self/fd/%d" % dir_fd), path)
    return path, _realpath(path)

def _check(what, path, write, dir_fd=None):
    if isinstance(path, int):
        return
    raw, real = _resolve(path, dir_fd)
    parts = real.split("/")
    if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != _pid:
        _deny(what + " of another process: " + real)
    inside = real == _work or real.startswith(_work + "/")
    if write and not inside and _abspath(raw) not in _devices:
        _deny(what + " outside the work dir: " + real)

def _set(name, fn, mods=(os, posix)):
    for mod in mods:
        if hasattr(mod, name):
            setattr(mod, name, fn)

def _blocker(what):
    return lambda *a, **k: _deny(what)

def _path_guard(name, argnames):
    orig = getattr(os, name)
    def guarded(*args, **kw):
        for i, arg in enumerate(argnames):
            if arg is None:
                continue
            value = args[i] if i < len(args) else kw.get(arg)
            if value is not None:
                _check("os." + name, value, True, kw.get(arg + "_dir_fd", kw.get("dir_fd")))
        return orig(*args, **kw)
    return guarded

def _is_write(mode):
    return any(ch in str(mode) for ch in "wax+")

_orig_open = builtins.open
def _open(file, mode="r", *args, **kw):
    _check("open", file, _is_write(mode))
    return _orig_open(file, mode, *args, **kw)

_orig_os_open = os.open
def _os_open(path, flags, mode=0o777, *, dir_fd=None):
    _check("os.open", path, bool(flags & _wflags), dir_fd)
    return _orig_os_open(path, flags, mode, dir_fd=dir_fd)

class _FileIO(_io.FileIO):
    def __init__(self, file, mode="r", *args, **kw):
        _check("FileIO", file, _is_write(mode))
        super().__init__(file, mode, *args, **kw)

_orig_kill = os.kill
def _kill(pid, sig):
    if str(pid) != _pid:
        _deny("os.kill of another process")
    return _orig_kill(pid, sig)

_orig_rmtree = shutil.rmtree
def _rmtree(path, *args, **kw):
    _check("shutil.rmtree", path, True)
    return _orig_rmtree(path, *args, **kw)

for _name in ("fork forkpty system popen posix_spawn posix_spawnp setsid setpgid setpgrp "
              "killpg pidfd_open chroot execv execve execl execle execlp execlpe execvp "
              "execvpe spawnl spawnle spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe").split():
    _set(_name, _blocker("os." + _name))
for _name, _args in [("remove", ["path"]), ("unlink", ["path"]), ("rmdir", ["path"]),
                     ("mkdir", ["path"]), ("chdir", ["path"]), ("chmod", ["path"]),
                     ("chown", ["path"]), ("lchown", ["path"]), ("truncate", ["path"]),
                     ("utime", ["path"]), ("mkfifo", ["path"]), ("mknod", ["path"]),
                     ("setxattr", ["path"]), ("removexattr", ["path"]),
                     ("rename", ["src", "dst"]), ("replace", ["src", "dst"]),
                     ("link", ["src", "dst"]), ("symlink", [None, "dst"])]:
    if hasattr(os, _name):
        _set(_name, _path_guard(_name, _args))
_set("fchdir", _blocker("os.fchdir"))
_set("open", _os_open)
_set("kill", _kill)
_set("open", _open, (builtins, io, _io))
_set("FileIO", _FileIO, (io, _io))
_set("rmtree", _rmtree, (shutil,))
_set("fork_exec", _blocker("subprocess"), (_posixsubprocess,))
_set("setrlimit", _blocker("resource.setrlimit"), (resource,))
_set("prlimit", _blocker("resource.prlimit"), (resource,))
_set("pidfd_send_signal", _blocker("signal.pidfd_send_signal"), (signal,))
sys.modules["ctypes"] = sys.modules["_ctypes"] = None
"""


@dataclass(frozen=True)
class Limits:
    """Resource limits and isolation options for one program run."""

    timeout_s: float = 10.0  # wall clock, from spawn to exit
    cpu_s: int | None = None  # RLIMIT_CPU; default ceil(timeout_s) + 1
    memory_mb: int = 1024  # RLIMIT_AS (virtual address space)
    max_output_bytes: int = 1 << 20  # per stream; beyond it output is cut, truncated=True
    max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE (also bounds stdout/stderr files)
    max_open_files: int = 256  # RLIMIT_NOFILE
    max_procs: int = 64  # RLIMIT_NPROC of the run_as uid (shared by concurrent runs)
    guards: bool = True  # in-process guards; disable only for trusted code or tests
    run_as: int | None = None  # uid (and gid) to run as; only used when the evaluator is root
    python: str = sys.executable  # interpreter; must be executable by run_as if set

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "max_output_bytes", "max_file_bytes", "max_procs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"Limits.cpu_s must be >= 1 second, got {self.cpu_s!r}")


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one run.

    ``status``: ``ok`` (exit 0), ``error`` (other exit code), ``timeout`` (wall or CPU limit),
    ``memory`` (MemoryError under RLIMIT_AS), ``blocked`` (a guard stopped it), ``killed``
    (ended by another signal, e.g. SIGKILL/SIGSEGV/abort).
    """

    status: str
    stdout: str
    stderr: str
    returncode: int
    wall_time: float
    truncated: bool = False


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


_BOOTSTRAP = """\
import json, os, resource, sys
_cfg = json.loads(sys.argv[1])
for _name, (_soft, _hard) in _cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, _name), (_soft, _hard))
with os.fdopen(_cfg["fd"], encoding="utf-8", errors="replace") as _f:
    _src = _f.read()
sys.argv = ["solution.py"]
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
import linecache
linecache.cache["solution.py"] = (len(_src), None, _src.splitlines(True), "solution.py")
_code = compile(_src, "solution.py", "exec")
if _cfg["guards"]:
    exec(_cfg["guard_source"], {"VIOLATION_EXIT": _cfg["violation_exit"]})
try:
    exec(_code, {"__name__": "__main__", "__file__": "solution.py", "__builtins__": __builtins__})
except MemoryError:
    os.write(2, b"MemoryError\\n")
    os._exit(_cfg["memory_exit"])
"""


def _env(work: str) -> dict[str, str]:
    """Minimal environment built from scratch (nothing is copied from the evaluator)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env.update(HOME=work, TMPDIR=work, PYTHONHASHSEED="0", PYTHONIOENCODING="utf-8")
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _rlimits(limits: Limits, nproc: bool) -> dict[str, tuple[int, int]]:
    cpu = limits.cpu_s or math.ceil(limits.timeout_s) + 1
    mem = limits.memory_mb << 20
    out = {
        "RLIMIT_CPU": (cpu, cpu + 1),
        "RLIMIT_AS": (mem, mem),
        "RLIMIT_FSIZE": (limits.max_file_bytes, limits.max_file_bytes),
        "RLIMIT_NOFILE": (limits.max_open_files, limits.max_open_files),
        "RLIMIT_CORE": (0, 0),
    }
    if nproc:  # per-uid count: only meaningful for a dedicated uid
        out["RLIMIT_NPROC"] = (limits.max_procs, limits.max_procs)
    return out


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` exits without reaping it; False on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)
    return True


def session_members(sid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose session id is ``sid``, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in "ZX" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def _kill_session(leader: int) -> None:
    """SIGKILL the leader's process group and everything still in its session."""
    for _ in range(20):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, signal.SIGKILL)
        others = [p for p in session_members(leader) if p != leader]
        if not others:
            return
        for pid in others:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


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


def _status(returncode: int, timed_out: bool, stderr_tail: bytes) -> str:
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0:
        return "ok"
    if returncode == MEMORY_EXIT or b"MemoryError" in stderr_tail:
        return "memory"
    if returncode == VIOLATION_EXIT:
        return "blocked"
    return "killed" if returncode < 0 else "error"


def _read_capped(path: str, cap: int) -> tuple[str, bool, bytes]:
    """(text up to ``cap`` bytes, truncated?, last 4 KiB of the raw bytes read)."""
    with open(path, "rb") as f:
        data = f.read(cap + 1)
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - 4096))
        tail = f.read()
    return data[:cap].decode("utf-8", "replace"), size > cap, tail


def run_program(source: str, stdin: str = "", limits: Limits | None = None) -> ExecResult:
    """Run ``source`` as ``__main__`` with ``stdin`` in a fresh sandboxed process."""
    limits = limits or Limits()
    drop = limits.run_as is not None and os.geteuid() == 0
    base = tempfile.mkdtemp(prefix="wmtp-sandbox-")
    try:
        work = os.path.join(base, "work")
        os.mkdir(work, 0o700)
        os.chmod(base, 0o711)
        user: dict[str, object] = {}
        if drop:
            os.chown(work, limits.run_as, limits.run_as)
            user = {"user": limits.run_as, "group": limits.run_as, "extra_groups": []}
        files = {n: os.path.join(base, n) for n in ("stdin", "stdout", "stderr", "source")}
        with open(files["stdin"], "w", encoding="utf-8") as f:
            f.write(stdin)
        with open(files["source"], "w", encoding="utf-8") as f:
            f.write(source)
        with (
            open(files["stdin"], "rb") as fin,
            open(files["stdout"], "wb") as fout,
            open(files["stderr"], "wb") as ferr,
            open(files["source"], "rb") as fsrc,
        ):
            cfg = {
                "fd": fsrc.fileno(),
                "rlimits": _rlimits(limits, nproc=drop),
                "guards": limits.guards,
                "guard_source": GUARD_SOURCE,
                "violation_exit": VIOLATION_EXIT,
                "memory_exit": MEMORY_EXIT,
            }
            cmd = [limits.python, "-s", "-B", "-c", _BOOTSTRAP, json.dumps(cfg)]
            start = time.monotonic()
            proc = subprocess.Popen(
                cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=work, env=_env(work),
                close_fds=True, pass_fds=(fsrc.fileno(),), start_new_session=True,
                **user,
            )  # fmt: skip
            try:
                timed_out = not _wait_exit(proc.pid, limits.timeout_s)
            finally:
                _kill_session(proc.pid)  # leader not yet reaped: its ids cannot be reused
                proc.wait()
            wall = time.monotonic() - start
        cap = limits.max_output_bytes
        out, out_trunc, _ = _read_capped(files["stdout"], cap)
        err, err_trunc, err_tail = _read_capped(files["stderr"], cap)
    finally:
        _remove_tree(base)
    status = _status(proc.returncode, timed_out, err_tail)
    return ExecResult(status, out, err, proc.returncode, wall, out_trunc or err_trunc)


def normalize_output(text: str) -> str:
    """Strip trailing whitespace on every line and trailing blank lines."""
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")


def _clip(text: str, n: int = 2000) -> str:
    return text if len(text) <= n else text[:n] + f"... [{len(text) - n} more chars]"


def check_stdio(
    source: str, tests: Sequence[dict[str, str]], limits: Limits | None = None
) -> CheckResult:
    """Run ``source`` on each ``{"input", "output"}`` test; stop at the first failure.

    A test passes when the run status is ``"ok"``, output was not truncated and the
    whitespace-normalised stdout equals the expected output. Raises ValueError on no tests.
    """
    if not tests:
        raise ValueError("check_stdio needs at least one test; an untested program cannot pass")
    for i, test in enumerate(tests):
        res = run_program(source, test["input"], limits)
        expected = test["output"]
        if (
            res.status != "ok"
            or res.truncated
            or normalize_output(res.stdout) != normalize_output(expected)
        ):
            fail = Failure(
                i, res.status, _clip(test["input"]), _clip(expected), _clip(res.stdout),
                _clip(res.stderr[-4000:]),
            )  # fmt: skip
            return CheckResult(False, i, len(tests), fail)
    return CheckResult(True, len(tests), len(tests))


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """HumanEval-style program: solution, test code (defining ``check``), ``check(entry)``."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def check_function(program: str, limits: Limits | None = None) -> CheckResult:
    """Run a self-checking program (see ``humaneval_program``); passes iff it exits 0."""
    res = run_program(program, "", limits)
    if res.status == "ok":
        return CheckResult(True, 1, 1)
    fail = Failure(0, res.status, "", "", _clip(res.stdout), _clip(res.stderr[-4000:]))
    return CheckResult(False, 0, 1, fail)


def run_many(jobs: Sequence[Callable[[], T]], max_workers: int = 4) -> list[T]:
    """Run zero-argument jobs (e.g. ``functools.partial(check_stdio, src, tests, limits)``)
    with at most ``max_workers`` at a time; results come back in input order."""
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(jobs))) as pool:
        return list(pool.map(lambda job: job(), jobs))
