"""Where a sandboxed program runs: ``bwrap`` (OS-level isolation, the default) or ``none``.

``bwrap`` (bubblewrap) starts every program in fresh PID, network, mount, IPC, UTS, cgroup
and user namespaces (``--unshare-all --unshare-user --disable-userns``), with
``--die-with-parent`` and ``--new-session``, in a new root that holds only, read-only,
``/usr`` (with the ``/bin``, ``/lib*`` links) and the interpreter's own prefix when it lives
elsewhere, a private ``/proc`` and ``/dev``, and one writable size-capped tmpfs ``/work``
(cwd, HOME, TMPDIR) that vanishes with the program. The environment is cleared. When the
evaluator is root it drops to ``nobody`` (65534) *before* starting bwrap, so the program's
kernel uid is unprivileged: files of root are unreadable, and RLIMIT_NPROC counts only this
sandbox's processes (the limit is per user namespace). When the program's main process
ends, or on a timeout, the namespace's init is killed and the kernel kills everything left
in the PID namespace before ``run_program`` returns.

``none`` is the explicit opt-out: the program runs as the evaluator's user with only the
Python-level guard (``guard.py``), rlimits, a fresh temporary work dir and a cleared
environment. It can read whatever that user can read and reach the network.

The bwrap implementation lives in ``bwrap.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from weighted_mtp.errors import UserError

ISOLATIONS = ("bwrap", "none")
SANDBOX_UID = 65534  # nobody / nogroup
WORK_DIR = "/work"  # the private writable dir inside bwrap
PATH = "/usr/local/bin:/usr/bin:/bin"
UNISOLATED_WARNING = (
    "WARNING: isolation=none: programs run WITHOUT OS-level isolation (no bubblewrap), as "
    "your user, with network access and read access to your files; only Python-level "
    "guards and rlimits apply. Use isolation=bwrap for model-generated or untrusted code."
)


class IsolationUnavailable(UserError):
    """bwrap was asked for but cannot run here (missing, or its self-test failed)."""


@dataclass
class Launch:
    """How to start one program (argv, cwd, environment, uid to drop to), and what the
    isolation needs to find and end it later."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    user: int | None  # uid and gid to switch to before exec (only when we are root)
    nproc: bool  # RLIMIT_NPROC is a real limit for this run
    pass_fds: tuple[int, ...] = ()  # descriptors the launcher itself needs
    info_fd: int | None = None  # bwrap: read end of --info-fd (the namespace init's pid)
    init_pidfd: int | None = None  # bwrap: pidfd of the PID namespace's init


def program_env(work: str) -> dict[str, str]:
    """The program's environment, built from scratch (nothing of the evaluator's)."""
    env = {"PATH": PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": work, "TMPDIR": work}
    env.update(PYTHONHASHSEED="0", PYTHONIOENCODING="utf-8", PYTHONDONTWRITEBYTECODE="1")
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


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


def kill_session(leader: int) -> None:
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


class Isolation(ABC):
    """One way of running a sandboxed program; see the module docstring."""

    name: str

    @abstractmethod
    def default_python(self) -> str:
        """The interpreter programs run with when ``Limits.python`` is not set."""

    @abstractmethod
    def launch(self, python_argv: list[str], host_dir: str, disk_bytes: int) -> Launch:
        """How to run ``[python, *args]``; ``host_dir`` is a private temporary host dir."""

    def ensure(self) -> None:  # noqa: B027  (nothing to check by default)
        """Raise IsolationUnavailable when this isolation cannot work here."""

    def started(self, launch: Launch, proc: subprocess.Popen) -> None:  # noqa: B027
        """Called right after ``proc`` was spawned from ``launch``."""

    def abandon(self, launch: Launch) -> None:
        """Release what ``launch`` holds when the program could not be started."""
        for fd in (*launch.pass_fds, launch.info_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def stop(self, launch: Launch, proc: subprocess.Popen) -> None:
        """Kill whatever is left of ``proc`` (exited but not yet reaped, or still running)
        and reap it; returns once no process of the program is left."""
        kill_session(proc.pid)  # leader not yet reaped: its ids cannot be reused
        proc.wait()

    def exit_status(self, returncode: int) -> int:
        """The program's status in Popen's convention (negative = killed by that signal)."""
        return returncode


class NoIsolation(Isolation):
    """``isolation=none``: a plain child process with the Python guard and rlimits only."""

    name = "none"

    def default_python(self) -> str:
        return sys.executable

    def launch(self, python_argv: list[str], host_dir: str, disk_bytes: int) -> Launch:
        work = os.path.join(host_dir, "work")
        os.mkdir(work, 0o700)
        return Launch(python_argv, work, program_env(work), None, nproc=False)


_INSTANCES: dict[str, Isolation] = {}  # one per name, made on first use


def get_isolation(name: str) -> Isolation:
    """The isolation called ``name`` (``bwrap`` or ``none``); UserError for anything else."""
    if name not in ISOLATIONS:
        raise UserError(f"isolation={name!r}: choose one of {', '.join(ISOLATIONS)}")
    if name not in _INSTANCES:
        from weighted_mtp.sandbox.bwrap import BwrapIsolation

        _INSTANCES.setdefault(name, BwrapIsolation() if name == "bwrap" else NoIsolation())
    return _INSTANCES[name]


def require_isolation(name: str) -> Isolation:
    """Check that ``name`` works here before any work starts; ``none`` prints a warning."""
    iso = get_isolation(name)
    iso.ensure()
    if iso.name == "none":
        print(UNISOLATED_WARNING, file=sys.stderr, flush=True)
    return iso
