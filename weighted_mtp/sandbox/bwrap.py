"""``isolation=bwrap``: run a program under bubblewrap (see ``isolation.py`` for the model).

The command line built here: ``--unshare-all --unshare-user --disable-userns``
(new PID/network/mount/IPC/UTS/cgroup/user namespaces, no nested ones),
``--die-with-parent --new-session --clearenv``, ``/usr`` and the interpreter's prefix
read-only, private ``/proc`` (its ``/proc/1``, the init's entry, covered by an empty
read-only tmpfs) and ``/dev``, a tmpfs ``/work`` capped in bytes (and, as root, in inodes:
``workfs.py``), then ``/`` and ``/dev`` remounted read-only, and ``--seccomp`` with the deny
list of ``seccomp.py``. As root we drop to ``nobody`` before exec'ing bwrap.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

from weighted_mtp.sandbox import seccomp, workfs
from weighted_mtp.sandbox.base import (
    PATH,
    SANDBOX_UID,
    WORK_DIR,
    Isolation,
    IsolationUnavailable,
    Launch,
    program_env,
)


def _read_child_pid(fd: int, timeout: float = 30.0) -> int | None:
    """The ``child-pid`` bwrap writes as JSON to its --info-fd (None if it exits first);
    closes ``fd``."""
    data = b""
    with open(fd, "rb", buffering=0) as f:
        while select.select([f], [], [], timeout)[0]:
            chunk = f.read(4096)
            if not chunk:
                return None
            data += chunk
            try:
                return int(json.loads(data)["child-pid"])
            except ValueError:  # incomplete JSON: read on
                continue
            except (KeyError, TypeError):
                return None
    return None


def _seccomp_fd() -> int | None:
    """The read end of a pipe holding the seccomp filter (``bwrap --seccomp`` reads it to
    its end), or None on a machine without a syscall table in ``seccomp.py``."""
    prog = _filter()
    if prog is None:
        return None
    read, write = os.pipe()
    try:
        os.write(write, prog)  # a few hundred bytes: well within the pipe's buffer
    finally:
        os.close(write)
    return read


@functools.cache
def _filter() -> bytes | None:
    return seccomp.program()


def _is_namespace_init(pid: int) -> bool:
    """``pid`` is PID 1 of its own PID namespace (its last NSpid entry is 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return any(ln.startswith("NSpid:") and ln.split()[-1] == "1" for ln in status.splitlines())


@functools.cache
def _options(bwrap: str) -> frozenset[str]:
    """The options this bwrap supports, from ``bwrap --help``."""
    try:
        text = subprocess.run([bwrap, "--help"], capture_output=True, text=True).stdout
    except OSError:
        return frozenset()
    return frozenset(w for w in text.split() if w.startswith("--"))


def _reachable_by_others(path: str) -> bool:
    """Every directory on the way to ``path`` is o+x and ``path`` itself o+rx."""
    p = Path(path)
    try:
        if (p.stat().st_mode & 0o005) != 0o005:
            return False
        return all(d.stat().st_mode & stat.S_IXOTH for d in p.parents)
    except OSError:
        return False


class BwrapIsolation(Isolation):
    """``isolation=bwrap``: bubblewrap namespaces, read-only minimal root, unprivileged uid."""

    name = "bwrap"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checked: dict[str, str | None] = {}  # python -> failure cause (None = works)

    @staticmethod
    def _drop() -> bool:
        return os.geteuid() == 0

    def default_python(self) -> str:
        """The evaluator's base interpreter (never a venv: the project is not mounted);
        when root, one that ``nobody`` can reach (else the system ``/usr/bin/python3``)."""
        base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        if not self._drop() or _reachable_by_others(base):
            return base
        system = os.path.realpath("/usr/bin/python3")
        return system if _reachable_by_others(system) else base

    def _mounts(self, python: str) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        prefix = str(Path(os.path.realpath(python)).parent.parent)
        if prefix != "/" and not (prefix + "/").startswith("/usr/"):
            args += ["--ro-bind", prefix, prefix]
        return args

    def launch(
        self, python_argv: list[str], host_dir: str, disk_bytes: int, inodes: int = 4096
    ) -> Launch:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise IsolationUnavailable(self._advice("bwrap is not installed"))
        options = _options(bwrap)
        argv = [bwrap, "--unshare-all", "--unshare-user"]
        if "--disable-userns" in options:  # bwrap >= 0.8: no nested user namespaces
            argv.append("--disable-userns")
        info_r, info_w = os.pipe()
        argv += ["--info-fd", str(info_w)]
        fds = [info_w]
        argv += ["--die-with-parent", "--new-session", "--clearenv"]
        argv += self._mounts(python_argv[0])
        argv += ["--proc", "/proc", "--dev", "/dev"]
        # The namespace's init (bwrap's pid 1) runs outside the seccomp filter, as the same
        # uid: cover its /proc entry (mem, fds, ...) with an empty read-only tmpfs.
        perms = ["--perms", "0555"] if "--perms" in options else []  # bwrap >= 0.5
        size = ["--size", "4096"] if "--size" in options else []
        argv += [*perms, *size, "--tmpfs", "/proc/1", "--remount-ro", "/proc/1"]
        work_mount = workfs.mount_work(disk_bytes, inodes, SANDBOX_UID) if self._drop() else None
        if work_mount is not None:  # bounded in bytes and inodes
            argv += ["--bind", work_mount, WORK_DIR]
        else:
            if "--size" in options:  # bwrap >= 0.5: cap the work dir's tmpfs
                argv += ["--size", str(disk_bytes)]
            argv += ["--tmpfs", WORK_DIR]
        argv += ["--chdir", WORK_DIR]
        argv += ["--remount-ro", "/dev", "--remount-ro", "/"]  # only /work is writable
        filter_fd = _seccomp_fd()
        if filter_fd is not None:
            argv += ["--seccomp", str(filter_fd)]
            fds.append(filter_fd)
        for key, value in program_env(WORK_DIR).items():
            argv += ["--setenv", key, value]
        argv += ["--", *python_argv]
        # bwrap's own environment is what the namespace's init shows in /proc/1/environ
        env = {"PATH": PATH}
        user = SANDBOX_UID if self._drop() else None
        return Launch(
            argv, "/", env, user, True, pass_fds=tuple(fds), info_fd=info_r, work_mount=work_mount
        )

    def started(self, launch: Launch, proc: subprocess.Popen) -> None:
        """Take a pidfd on the PID namespace's init, whose pid bwrap writes to --info-fd.

        bwrap itself exits as soon as the program's main process does, while the kernel is
        still tearing the namespace down; the init's exit completes only once every process
        of the namespace is gone, so ``stop`` waits on this pidfd."""
        for fd in launch.pass_fds:
            os.close(fd)
        pid = _read_child_pid(launch.info_fd) if launch.info_fd is not None else None
        launch.info_fd = None
        if pid is None:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # already gone, with everything in its namespace
        if _is_namespace_init(pid):  # not a reused pid
            launch.init_pidfd = pidfd
        else:
            os.close(pidfd)

    def stop(self, launch: Launch, proc: subprocess.Popen) -> None:
        # Killing the namespace's init makes the kernel kill every process in the PID
        # namespace; the init's exit completes (its pidfd turns readable) once all are gone.
        pidfd = launch.init_pidfd
        if pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            select.select([pidfd], [], [], 10)
            os.close(pidfd)
            launch.init_pidfd = None
        super().stop(launch, proc)
        self._unmount(launch)

    def abandon(self, launch: Launch) -> None:
        super().abandon(launch)
        self._unmount(launch)

    @staticmethod
    def _unmount(launch: Launch) -> None:
        if launch.work_mount is not None:
            workfs.unmount_work(launch.work_mount)
            launch.work_mount = None

    def exit_status(self, returncode: int) -> int:
        # bwrap exits with 128 + N when the program was killed by signal N
        if returncode > 128 and returncode - 128 < signal.NSIG:
            return -(returncode - 128)
        return returncode

    def ensure(self) -> None:
        python = self.default_python()
        with self._lock:
            if not self._checked:
                workfs.sweep()  # work dirs of evaluators that died mid-run
            if python not in self._checked:
                self._checked[python] = self._self_test(python)
        cause = self._checked[python]
        if cause is not None:
            raise IsolationUnavailable(self._advice(cause))

    def _self_test(self, python: str) -> str | None:
        """None if a trivial program runs isolated with ``python``, else the cause."""
        if shutil.which("bwrap") is None:
            return "bwrap is not installed"
        if self._drop() and not _reachable_by_others(python):
            return f"no interpreter that uid {SANDBOX_UID} can run ({python} is not reachable)"
        probe = (
            "import os, socket\n"
            "print(os.getpid(), [n for _, n in socket.if_nameindex()], os.path.exists('/root'))"
        )
        launch = self.launch([python, "-I", "-c", probe], "/", 1 << 20)
        user = {} if launch.user is None else {"user": launch.user, "group": launch.user}
        try:
            proc = subprocess.run(
                launch.argv, cwd=launch.cwd, env=launch.env, capture_output=True, text=True,
                timeout=30, extra_groups=[] if user else None, pass_fds=launch.pass_fds, **user,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap self-test failed: {exc}"
        finally:
            self.abandon(launch)
        if proc.returncode != 0 or proc.stdout.split(None, 1)[:1] != ["2"]:
            detail = (proc.stderr.strip() or proc.stdout.strip())[-500:]
            return f"bwrap self-test failed (exit {proc.returncode}): {detail}"
        if proc.stdout.strip() != "2 ['lo'] False":
            return f"bwrap self-test: the sandbox is not isolated ({proc.stdout.strip()})"
        return None

    @staticmethod
    def _advice(cause: str) -> str:
        return (
            f"isolation=bwrap: {cause}. Install bubblewrap (Debian/Ubuntu: apt-get install "
            "bubblewrap) and allow unprivileged user namespaces (docs/evaluation.md: Security "
            "model); or "
            "pass --isolation none / set evaluation.isolation=none to run programs without "
            "OS-level isolation (unsafe for untrusted code)"
        )
