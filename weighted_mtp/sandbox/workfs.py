"""The sandbox's ``/work``: a tmpfs bounded in bytes *and* in inodes, when the host allows it.

bubblewrap's ``--tmpfs`` takes a size (``--size``) but no inode limit, and the kernel's
default (half the RAM's pages) lets one program create millions of empty files, each
costing ~1 KiB of unswappable kernel memory that no rlimit counts. When the evaluator may
mount (root with CAP_SYS_ADMIN, the usual case for a dedicated evaluation host or
container), every run gets its own host tmpfs ``size=...,nr_inodes=...`` owned by the
sandbox uid, bound into the sandbox as ``/work`` and lazily unmounted when the run ends
(left-overs of a killed evaluator are unmounted by the next one, see ``sweep``). Otherwise
bwrap's own ``--size`` tmpfs is used and inodes are bounded only by the timeout (docs/evaluation.md:
Security model).
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

PREFIX = "wmtp-work-"
_MNT_DETACH = 2


@functools.cache
def _libc() -> Any:
    """libc through ctypes (imported here: only a root evaluator needs it), or None."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _traversable(path: str) -> bool:
    """Every directory down to ``path`` (included) can be crossed by any uid."""
    try:
        return all(os.stat(d).st_mode & stat.S_IXOTH for d in (path, *Path(path).parents))
    except OSError:
        return False


def mount_work(size_bytes: int, inodes: int, uid: int) -> str | None:
    """A fresh host dir with a tmpfs of ``size_bytes``/``inodes`` owned by ``uid`` mounted
    on it (reachable by ``uid``), or None when this process cannot mount."""
    if os.geteuid() != 0 or not _traversable(tempfile.gettempdir()):
        return None
    libc = _libc()
    if libc is None:
        return None
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    os.chmod(path, 0o711)  # bwrap (as ``uid``) must traverse it; the tmpfs root is 0700
    opts = f"size={size_bytes},nr_inodes={inodes},mode=0700,uid={uid},gid={uid}"
    flags = 0x2 | 0x4  # MS_NOSUID | MS_NODEV
    if libc.mount(b"tmpfs", path.encode(), b"tmpfs", flags, opts.encode()) != 0:
        os.rmdir(path)
        return None
    return path


def unmount_work(path: str) -> None:
    """Detach the tmpfs at ``path`` (its pages are freed once no one uses it) and remove
    the mount point."""
    libc = _libc()
    if libc is not None:
        libc.umount2(path.encode(), _MNT_DETACH)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def sweep() -> None:
    """Unmount the work dirs left mounted by evaluators that died mid-run."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            points = [line.split()[4] for line in f]
    except OSError:
        return
    tmp = tempfile.gettempdir()
    for point in points:
        name = os.path.basename(point)
        if os.path.dirname(point) != tmp or not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            unmount_work(point)
