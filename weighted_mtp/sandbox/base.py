"""What both isolations share: the ``Isolation`` interface, ``Launch``, the program's
environment and the session-kill helpers. ``isolation.py`` (the registry and ``none``) and
``bwrap.py`` both import this module, and neither imports the other's internals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from weighted_mtp.errors import UserError

ISOLATIONS = ("bwrap", "none")
SANDBOX_UID = 65534  # nobody / nogroup
WORK_DIR = "/work"  # the private writable dir inside bwrap
PATH = "/usr/local/bin:/usr/bin:/bin"


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
    work_mount: str | None = None  # bwrap as root: host tmpfs bound as /work (unmounted at end)


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
    def launch(
        self, python_argv: list[str], host_dir: str, disk_bytes: int, inodes: int = 4096
    ) -> Launch:
        """How to run ``[python, *args]``; ``host_dir`` is a private temporary host dir;
        the work dir holds at most ``disk_bytes`` and (where enforced) ``inodes`` files."""

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
