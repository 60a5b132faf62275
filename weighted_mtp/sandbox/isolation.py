"""Where a sandboxed program runs: ``bwrap`` (OS-level isolation, the default) or ``none``.

``bwrap`` (bubblewrap) starts every program in fresh PID, network, mount, IPC, UTS, cgroup
and user namespaces (``--unshare-all --unshare-user --disable-userns``), with
``--die-with-parent`` and ``--new-session``, in a new root that holds only, read-only,
``/usr`` (with the ``/bin``, ``/lib*`` links) and the interpreter's own prefix when it lives
elsewhere, a private ``/proc`` and ``/dev``, and one writable size-capped tmpfs ``/work``
(cwd, HOME, TMPDIR; as root also inode-capped, ``workfs.py``) that vanishes with the
program. The environment is cleared. A seccomp filter (``seccomp.py``) denies the kernel
keyrings, ptrace and other processes' memory, memory that RLIMIT_AS does not count (memfd,
SysV shm/msg), flock/inotify/dnotify on the shared files, and namespace/mount/bpf/perf/
io_uring calls; the namespace's init, which runs outside that filter, has its ``/proc/1``
hidden under an empty read-only tmpfs. When the
evaluator is root it drops to ``nobody`` (65534) *before* starting bwrap, so the program's
kernel uid is unprivileged: files of root are unreadable, and RLIMIT_NPROC counts only this
sandbox's processes (the limit is per user namespace). When the program's main process
ends, or on a timeout, the namespace's init is killed and the kernel kills everything left
in the PID namespace before ``run_program`` returns.

``none`` is the explicit opt-out: the program runs as the evaluator's user with only the
Python-level guard (``guard.py``), rlimits, a fresh temporary work dir and a cleared
environment. It can read whatever that user can read and reach the network.

The bwrap implementation lives in ``bwrap.py``; what both share, in ``base.py``.
"""

from __future__ import annotations

import os
import sys

from weighted_mtp.errors import UserError
from weighted_mtp.sandbox.base import (
    ISOLATIONS,
    PATH,
    SANDBOX_UID,
    WORK_DIR,
    Isolation,
    IsolationUnavailable,
    Launch,
    program_env,
)
from weighted_mtp.sandbox.bwrap import BwrapIsolation

__all__ = [
    "ISOLATIONS", "PATH", "SANDBOX_UID", "WORK_DIR", "UNISOLATED_WARNING", "Isolation",
    "IsolationUnavailable", "Launch", "NoIsolation", "get_isolation", "program_env",
    "require_isolation",
]  # fmt: skip

UNISOLATED_WARNING = (
    "WARNING: isolation=none: programs run WITHOUT OS-level isolation (no bubblewrap), as "
    "your user, with network access and read access to your files; only Python-level "
    "guards and rlimits apply. Use isolation=bwrap for model-generated or untrusted code."
)


class NoIsolation(Isolation):
    """``isolation=none``: a plain child process with the Python guard and rlimits only."""

    name = "none"

    def default_python(self) -> str:
        return sys.executable

    def launch(
        self, python_argv: list[str], host_dir: str, disk_bytes: int, inodes: int = 4096
    ) -> Launch:
        work = os.path.join(host_dir, "work")
        os.mkdir(work, 0o700)
        return Launch(python_argv, work, program_env(work), None, nproc=False)


_INSTANCES: dict[str, Isolation] = {}  # one per name, made on first use


def get_isolation(name: str) -> Isolation:
    """The isolation called ``name`` (``bwrap`` or ``none``); UserError for anything else."""
    if name not in ISOLATIONS:
        raise UserError(f"isolation={name!r}: choose one of {', '.join(ISOLATIONS)}")
    if name not in _INSTANCES:
        _INSTANCES.setdefault(name, BwrapIsolation() if name == "bwrap" else NoIsolation())
    return _INSTANCES[name]


def require_isolation(name: str) -> Isolation:
    """Check that ``name`` works here before any work starts; ``none`` prints a warning."""
    iso = get_isolation(name)
    iso.ensure()
    if iso.name == "none":
        print(UNISOLATED_WARNING, file=sys.stderr, flush=True)
    return iso
