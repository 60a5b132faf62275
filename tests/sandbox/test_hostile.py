"""The hostile-program corpus (programs/*.py) against the default sandbox (bubblewrap).

Each program attacks the evaluator the way generated code could: kill it, read its
environment or root's files, write outside its work dir, leave processes running, reach
a TCP listener on 127.0.0.1, exhaust memory / disk / descriptors / threads / inodes, hold
memory RLIMIT_AS does not count (memfd, SysV IPC), flood stdout or stderr, ignore SIGTERM,
reach the session keyring, ptrace the namespace's init, lock or watch the shared /usr, fake
a verdict on stderr. The programs use the known bypasses of the Python-level guard (its saved
originals, a fresh ``posix`` / ``_posixsubprocess`` / ``ctypes``, C extensions), so what
stops them is the OS layer. For every program, run in this (the evaluator's) process:

* the evaluator survives and gets a verdict in ``STATUSES``;
* nothing appears outside the work dir (a world-writable dir of the caller, /tmp, /dev/shm);
* no secret of the caller's environment (or its files) appears in the program's output;
* no process of the program is alive when ``run_program`` returns (process table scan
  for the program's marker);
* no connection (TCP or UDP) arrives at the program's listener.

Fork tests are exactly bounded; nothing here is an unbounded fork bomb.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import REPO
from weighted_mtp.sandbox.limits import Limits
from weighted_mtp.sandbox.runner import ExecResult, run_many, run_program

#: every verdict the sandbox gives (sandbox.runner._status)
STATUSES = ("ok", "error", "timeout", "memory", "blocked", "killed")

PROGRAMS = {p.stem: p for p in sorted((Path(__file__).parent / "programs").glob("*.py"))}
SECRET = "wmtp-secret-" + uuid.uuid4().hex
FILE_SECRET = "wmtp-file-secret-" + uuid.uuid4().hex
LIMITS = Limits(timeout_s=5.0, memory_mb=256)

# The verdict each program must get (any other is a failure of containment or of the test).
EXPECTED_STATUS = {
    "kill_parent_direct": {"blocked"},
    "write_open": {"blocked"},
    "fill_memory": {"memory"},
    "cpu_spin": {"timeout"},
    "ignore_sigterm": {"timeout"},
    "flood_stdout": {"error"},  # EFBIG at RLIMIT_FSIZE (Python ignores SIGXFSZ)
    "flood_stderr": {"ok"},  # a stderr pipe: cut to its tail, not a failure
    "fake_memory_error": {"error"},  # the verdict comes from the exit code, not stderr
    "keyring_access": {"ok"},
    "ptrace_init": {"ok"},
    "watch_shared_files": {"ok"},
    "hold_memory": {"ok"},
    "fill_inodes": {"ok"},
}


@dataclass
class Outcome:
    result: ExecResult
    survivors: list[str]  # cmdlines of live processes carrying the marker
    outside: list[str]  # files found outside the work dir
    connections: int  # TCP connections + UDP datagrams that reached the listener
    marker: str


def marked_processes(marker: str) -> list[str]:
    """Command lines of live (non-zombie) processes whose cmdline contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, UnicodeDecodeError):
            continue
        if marker in cmdline and state not in "ZX":
            found.append(cmdline)
    return found


def files_with(marker: str, dirs: list[Path]) -> list[str]:
    return [str(p) for d in dirs if d.is_dir() for p in d.iterdir() if marker in p.name]


def run_one(name: str, scratch: Path) -> Outcome:
    """Run one corpus program with its own marker, outside dir and listener; check at once."""
    marker = f"wmtp-hostile-{name}-{uuid.uuid4().hex[:8]}"
    outside = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    outside.chmod(0o777)  # world-writable: only the sandbox stands between it and the program
    (outside / "secret.txt").write_text(FILE_SECRET)
    (outside / "secret.txt").chmod(0o644)
    tcp = socket.create_server(("127.0.0.1", 0))
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    source = PROGRAMS[name].read_text()
    for key, value in {
        "@OUTSIDE@": str(outside),
        "@PORT@": str(port),
        "@MARKER@": marker,
        "@EVALUATOR_PID@": str(os.getpid()),
        "@REPO@": str(REPO),
    }.items():
        source = source.replace(key, value)
    try:
        result = run_program(source, "", LIMITS)
        survivors = marked_processes(marker)  # immediately: nothing may outlive the run
        connections = 0
        for sock in (tcp, udp):
            sock.setblocking(False)
        try:
            conn, _ = tcp.accept()
            conn.close()
            connections += 1
        except BlockingIOError:
            pass
        try:
            udp.recv(1024)
            connections += 1
        except BlockingIOError:
            pass
    finally:
        tcp.close()
        udp.close()
    shared = [Path("/tmp"), Path("/dev/shm"), Path("/var/tmp"), Path("/"), Path("/usr")]
    outside_files = [str(p) for p in outside.iterdir() if p.name != "secret.txt"]
    return Outcome(
        result, survivors, outside_files + files_with(marker, shared), connections, marker
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every corpus program, four at a time, with a secret in the evaluator's environment."""
    scratch = Path(tempfile.mkdtemp(prefix="wmtp-hostile-", dir="/tmp"))
    scratch.chmod(0o777)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WMTP_TEST_SECRET", SECRET)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        results = run_many([partial(run_one, name, scratch) for name in PROGRAMS], max_workers=4)
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return dict(zip(PROGRAMS, results, strict=True))


def test_corpus_is_large_enough() -> None:
    assert len(PROGRAMS) >= 25


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_hostile_program_is_contained(outcomes: dict[str, Outcome], name: str) -> None:
    out = outcomes[name]
    res = out.result
    assert res.status in STATUSES  # the evaluator is alive and got a verdict
    if name in EXPECTED_STATUS:
        assert res.status in EXPECTED_STATUS[name], (res.status, res.stderr[-2000:])
    text = res.stdout + res.stderr
    assert SECRET not in text and FILE_SECRET not in text
    assert "root:" not in text  # /etc/shadow, /etc/passwd
    assert out.outside == []
    assert out.survivors == []
    assert out.connections == 0
    assert res.wall_time < LIMITS.timeout_s + 2.0


def _out(outcomes: dict[str, Outcome], name: str) -> str:
    return outcomes[name].result.stdout


def test_attacks_fail_for_the_right_reason(outcomes: dict[str, Outcome]) -> None:
    """Not just "nothing happened": the OS layer refused each bypass of the guard."""
    # signals: the evaluator is not even visible; pid 1 (the namespace's init) ignores them
    assert "refused " + str(os.getpid()) in _out(outcomes, "kill_parent_fresh_posix")
    assert "refused " + str(os.getpid()) in _out(outcomes, "kill_parent_guard_closure")
    # reads: not mounted at all
    for path in ("/etc/shadow refused", "/etc/passwd refused"):
        assert path in _out(outcomes, "read_etc_shadow")
    assert _out(outcomes, "read_root_home").count("No such file") >= 4
    caller = _out(outcomes, "read_caller_files")
    assert caller.count("No such file") >= 6 and "# weighted_mtp" not in caller
    # writes: read-only or absent outside /work
    assert "wrote" not in _out(outcomes, "write_fresh_posix")
    assert _out(outcomes, "write_sqlite").count("refused") == 2
    assert "bound '\\x00" in _out(outcomes, "write_af_unix")  # own network namespace only
    # network: loopback of an empty namespace, nothing else
    net = _out(outcomes, "network_interfaces")
    assert "[(1, 'lo')]" in net and "connected out" not in net
    assert "connected" not in _out(outcomes, "tcp_connect")
    # no privilege gain: nested user namespaces and mounts are refused
    for op in ("unshare user -1", "mount -1", "chroot -1"):
        assert op in _out(outcomes, "nested_namespace"), _out(outcomes, "nested_namespace")
    # resources: bounded by the limits, not by the machine
    forked = re.search(r"forked (\d+) failed (\d+)", _out(outcomes, "fork_bounded"))
    assert forked and int(forked[1]) < LIMITS.max_procs and int(forked[2]) > 0
    threads = re.search(r"started (\d+)", _out(outcomes, "fill_threads"))
    assert threads and int(threads[1]) < LIMITS.max_procs
    fds = re.search(r"opened (\d+)", _out(outcomes, "fill_descriptors"))
    assert fds and int(fds[1]) <= LIMITS.max_open_files
    disk = re.search(r"written (\d+) /work", _out(outcomes, "fill_disk"))
    assert disk and int(disk[1]) <= LIMITS.disk_mb << 20
    flood = outcomes["flood_stdout"].result
    assert flood.truncated and len(flood.stdout) == LIMITS.max_output_bytes
    err_flood = outcomes["flood_stderr"].result
    assert err_flood.stdout == "answer 42\n" and not err_flood.truncated
    assert err_flood.stderr_truncated and len(err_flood.stderr) == LIMITS.max_output_bytes


def test_seccomp_denies_keyrings_tracing_and_watching(outcomes: dict[str, Outcome]) -> None:
    """The calls the seccomp filter denies fail with EPERM; the init's /proc is covered."""
    keys = _out(outcomes, "keyring_access")
    for call in ("keyctl", "keyctl_read", "add_key", "request_key"):
        assert f"{call} refused EPERM" in keys, keys
    assert "ALLOWED" not in keys and "proc_keys 0 lines" in keys
    trace = _out(outcomes, "ptrace_init")
    assert "ATTACHED" not in trace and "OPENED" not in trace and "READ" not in trace, trace
    assert trace.count("ptrace") == 4 and trace.count("refused 1") == 5  # EPERM
    assert trace.count("refused 2") == 3  # /proc/1 is an empty tmpfs: no such file
    watch = _out(outcomes, "watch_shared_files")
    for what in ("flock refused 1", "inotify_init1 refused 1", "dnotify refused 1"):
        assert what in watch, watch


def test_memory_outside_rlimit_as_is_bounded(outcomes: dict[str, Outcome]) -> None:
    """memfd, SysV shm / msg, /dev/shm, /tmp: nothing held; /work: its size."""
    held = dict(re.findall(r"^(\S+) held (\d+)$", _out(outcomes, "hold_memory"), re.M))
    assert all(held[k] == "0" for k in ("memfd", "shm", "msg", "/dev/shm", "/tmp")), held
    assert int(held["/work"]) <= LIMITS.disk_mb << 20
    assert int(held["anonymous"]) <= LIMITS.memory_mb << 20


def test_work_dir_inodes_are_bounded(outcomes: dict[str, Outcome]) -> None:
    """As root the work dir is a host tmpfs with nr_inodes=max_inodes (workfs.py);
    otherwise bwrap's tmpfs bounds only bytes, and the count is bounded by the timeout."""
    created = int(re.search(r"created (\d+)", _out(outcomes, "fill_inodes"))[1])
    if os.geteuid() == 0:
        assert created < LIMITS.max_inodes and "No space left" in _out(outcomes, "fill_inodes")
    else:
        assert created <= 300000


def test_evaluator_killed_mid_run_leaves_nothing(tmp_path: Path) -> None:
    """SIGKILL the evaluator while its program runs: --die-with-parent + the PID namespace
    take every process of the program with it."""
    import signal
    import subprocess
    import sys
    import time

    marker = f"wmtp-hostile-orphan-{uuid.uuid4().hex[:8]}"
    program = (
        "import sys\nsys.modules.pop('posix', None)\nimport posix, time\n"
        "if posix.fork() == 0:\n"
        f"    posix.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', "
        f"{marker!r}])\n"
        "time.sleep(60)\n"
    )
    driver = (
        "from weighted_mtp.sandbox.limits import Limits\n"
        "from weighted_mtp.sandbox.runner import run_program\n"
        f"run_program({program!r}, '', Limits(timeout_s=60))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not marked_processes(marker):
            assert time.monotonic() < deadline and proc.poll() is None, "program never started"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 5
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked_processes(marker) == []
