"""Sandboxed execution: verdicts, limits, guards, process cleanup, secrets, concurrency and
the isolation layer (bwrap / none). The hostile-program corpus is tests/sandbox/."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from weighted_mtp.data.records import humaneval_program, normalize_output, outputs_match
from weighted_mtp.errors import UserError
from weighted_mtp.evaluation.checks import check_function, check_stdio
from weighted_mtp.sandbox import isolation
from weighted_mtp.sandbox.bwrap import BwrapIsolation
from weighted_mtp.sandbox.isolation import IsolationUnavailable
from weighted_mtp.sandbox.limits import Limits
from weighted_mtp.sandbox.runner import run_many, run_program

FAST = Limits(timeout_s=5.0, memory_mb=512)
UNISOLATED = Limits(timeout_s=5.0, memory_mb=512, isolation="none")


def live_in_session_or_group(sid: int) -> list[int]:
    """Independent /proc scan: live processes whose pgid or sid is ``sid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[0] not in "ZX" and sid in (int(stat[2]), int(stat[3])):
            found.append(int(entry))
    return found


def test_correct_program_passes_and_output_is_whitespace_normalised() -> None:
    src = "a, b = map(int, input().split())\nprint(a + b, ' ')\nprint()\n"
    tests = [{"input": "1 2\n", "output": "3"}, {"input": "10 -4", "output": "6\n\n\n"}]
    res = check_stdio(src, tests, FAST)
    assert res.passed and res.n_passed == 2 and res.n_tests == 2 and res.first_failure is None
    assert normalize_output("a  \r\nb\t\n\n") == "a\nb"
    assert normalize_output("  a") == "  a"  # leading whitespace is significant
    # only \n separates lines, for evaluation as for label verification (one rule)
    assert not outputs_match("1\r2", "1\n2") and not outputs_match("1\x0c2", "1\n2")
    assert outputs_match("1\x0c\r\n2\r\n", "1\n2")
    assert not check_stdio("print('1\\r2')", [{"input": "", "output": "1\n2"}], FAST).passed


def test_wrong_program_fails_and_stops_at_first_failure() -> None:
    src = "import time\nn = int(input())\nif n == 3: time.sleep(30)\nprint(n * 2)\n"
    tests = [
        {"input": "1", "output": "2"},
        {"input": "2", "output": "5"},  # wrong: program prints 4
        {"input": "3", "output": "6"},  # would hang until the timeout if it were run
    ]
    start = time.monotonic()
    res = check_stdio(src, tests, Limits(timeout_s=10.0))
    assert time.monotonic() - start < 5.0
    assert not res.passed and res.n_passed == 1 and res.n_tests == 3
    fail = res.first_failure
    assert fail is not None and fail.index == 1 and fail.status == "ok"
    assert (fail.input, fail.expected, fail.got.strip()) == ("2", "5", "4")
    crash = check_stdio("raise ValueError('boom')", [{"input": "", "output": ""}], FAST)
    assert crash.first_failure is not None and crash.first_failure.status == "error"
    assert "ValueError: boom" in crash.first_failure.stderr
    with pytest.raises(ValueError):
        check_stdio(src, [], FAST)


def test_check_function_humaneval_style() -> None:
    prompt = "def add(a, b):\n"
    test = (
        "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
    )
    assert check_function(prompt + "    return a + b\n", test, "add", FAST).passed
    res = check_function(prompt + "    return a - b\n", test, "add", FAST)
    assert not res.passed and res.first_failure is not None
    assert res.first_failure.status == "error" and "AssertionError" in res.first_failure.stderr
    # as one plain script (records.check_program), an early exit 0 would pass
    exits = prompt + "    raise SystemExit(0)\n"
    assert run_program(humaneval_program("", exits, test, "add"), "", FAST).status == "ok"
    res = check_function(exits, test, "add", FAST)
    assert res.first_failure is not None and res.first_failure.status == "early_exit"


def test_report_channel_needs_the_token_and_exactly_one_line() -> None:
    """Only ``__report__`` writes a valid report; a guessed token, a second line or no
    report at all gives ``report=None``; without ``report=True`` there is no channel."""
    send = "r = globals().pop('__report__')\nr('pass')\n"
    assert run_program(send, "", FAST, report=True).report == "pass"
    assert run_program(send + "r('again')\n", "", FAST, report=True).report is None
    forge = (
        "import os\nfor fd in range(3, 20):\n    try:\n"
        "        os.write(fd, b'0' * 32 + b' pass\\n')\n    except OSError:\n        pass\n"
    )
    res = run_program("globals().pop('__report__')\n" + forge, "", FAST, report=True)
    assert res.status == "ok" and res.report is None
    plain = run_program("print('__report__' in globals())", "", FAST)
    assert plain.stdout == "False\n" and plain.report is None


def test_hang_times_out_within_budget() -> None:
    start = time.monotonic()
    res = run_program("print('started', flush=True)\nwhile True:\n    pass\n", "", Limits(1.0))
    assert res.status == "timeout" and time.monotonic() - start < 2.5
    assert 1.0 <= res.wall_time < 2.0 and res.stdout == "started\n"


def test_cpu_limit_stops_busy_loop_before_wall_timeout() -> None:
    res = run_program("while True:\n    pass\n", "", Limits(timeout_s=20.0, cpu_s=1))
    assert res.status == "timeout" and res.wall_time < 10.0


@pytest.mark.parametrize(
    "src",
    ["x = bytearray(10 ** 10)\n", "chunks = []\nwhile True:\n    chunks.append(b'x' * 10**7)\n"],
)
def test_memory_bomb_is_contained(src: str) -> None:
    res = run_program(src, "", Limits(timeout_s=10.0, memory_mb=256))
    assert res.status == "memory"
    assert run_program("print(sum(range(10)))", "", FAST).stdout == "45\n"


@pytest.mark.parametrize(
    "src",
    [
        "import os\nwhile True:\n    os.fork()\n",
        "import os\nos.system(':(){ :|:& };:')\n",
        "import subprocess\nsubprocess.run(['sh', '-c', 'sleep 60 &'])\n",
        "import multiprocessing as mp\nwhile True:\n    mp.Process(target=print).start()\n",
        "import os\nos.posix_spawn('/bin/sleep', ['sleep', '60'], {})\n",
        "import os\nos.execv('/bin/sh', ['sh'])\n",
        "import pty\npty.fork()\n",
        "import os\nos.setsid()\n",
        "import os\nos.kill(os.getppid(), 9)\n",
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n",
    ],
)
def test_process_creation_and_escape_are_blocked(src: str) -> None:
    res = run_program(src, "", FAST)
    assert res.status == "blocked" and "sandbox: blocked" in res.stderr


def test_ctypes_is_unavailable() -> None:
    res = run_program("import ctypes\n", "", FAST)
    assert res.status == "error" and "ctypes" in res.stderr


@pytest.mark.parametrize("hang", [False, True])
def test_leftover_children_are_killed_without_guards_or_bwrap(hang: bool) -> None:
    """isolation=none: the process group and session are killed (bwrap: tests/sandbox)."""
    src = (
        "import os, time\nprint(os.getpid(), flush=True)\n"
        "for i in range(4):\n"
        "    if os.fork() == 0:\n"
        "        if i == 0:\n            os.setpgid(0, 0)  # leave the group, stay in the session\n"
        "        if i == 1 and os.fork():\n            os._exit(0)  # orphaned grandchild\n"
        "        time.sleep(60)\n        os._exit(0)\n"
        f"time.sleep({60 if hang else 0.2})\n"
    )
    res = run_program(src, "", Limits(timeout_s=1.5, guards=False, isolation="none"))
    assert res.status == ("timeout" if hang else "ok")
    assert res.wall_time < 3.0
    assert live_in_session_or_group(int(res.stdout.split()[0])) == []


def test_program_runs_as_an_unprivileged_kernel_uid() -> None:
    """Seen from the host, the program's processes belong to nobody (65534) when the
    evaluator is root, so root's 0600 files are unreadable even if one were mounted."""
    marker = f"wmtp-uid-probe-{os.getpid()}-{time.monotonic_ns()}"
    src = (
        "import os, sys\n"
        "os.execv(sys.executable, "
        f"[sys.executable, '-c', 'import time; time.sleep(30)', {marker!r}])"
    )
    found: list[str] = []

    def probe() -> None:
        deadline = time.monotonic() + 20
        while not found and time.monotonic() < deadline:
            for entry in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                        found.append(Path(f"/proc/{entry}/status").read_text())
                except OSError:
                    continue
            time.sleep(0.02)

    watcher = threading.Thread(target=probe)
    watcher.start()
    res = run_program(src, "", Limits(timeout_s=3.0, guards=False))
    watcher.join()
    assert res.status == "timeout" and found
    uids = next(ln.split()[1:] for ln in found[0].splitlines() if ln.startswith("Uid:"))
    want = str(isolation.SANDBOX_UID if os.geteuid() == 0 else os.geteuid())
    assert uids == [want] * 4


def test_files_of_root_stay_unreadable_inside() -> None:
    """Even a root-owned 0600 file bind-mounted into the sandbox cannot be read: a root
    evaluator drops to nobody *before* bwrap (bwrap's own ``--uid`` would map to root)."""
    iso = BwrapIsolation()
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        os.chmod(d, 0o755)
        secret = Path(d) / "secret"
        secret.write_text("owner-only")
        secret.chmod(0o600)
        src = "print(open('/secret').read())"
        launch = iso.launch([iso.default_python(), "-I", "-c", src], "/", 1 << 20)
        cut = launch.argv.index("--remount-ro")  # mount the file in, just for this test
        argv = [*launch.argv[:cut], "--ro-bind", str(secret), "/secret", *launch.argv[cut:]]
        user = {}
        if launch.user is not None:
            user = {"user": launch.user, "group": launch.user, "extra_groups": []}
        try:
            proc = subprocess.run(
                argv, env=launch.env, cwd=launch.cwd, capture_output=True, text=True,
                pass_fds=launch.pass_fds, timeout=30, **user,
            )  # fmt: skip
        finally:
            iso.abandon(launch)
    if os.geteuid() == 0:
        assert "PermissionError" in proc.stderr and "owner-only" not in proc.stdout
    else:  # not root: the program runs as you (README: Security model)
        assert proc.stdout == "owner-only\n"


def test_bwrap_missing_or_broken_is_a_clear_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(isolation._INSTANCES, "bwrap", BwrapIsolation())
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    with pytest.raises(IsolationUnavailable, match="bwrap is not installed.*--isolation none"):
        run_program("print(1)", "", FAST)
    bin_dir = Path(tempfile.mkdtemp(dir="/tmp"))  # reachable by the sandbox uid
    bin_dir.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    fake = bin_dir / "bwrap"  # a bwrap that cannot create namespaces
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setitem(isolation._INSTANCES, "bwrap", BwrapIsolation())
    try:
        with pytest.raises(UserError, match="self-test failed.*No permissions to create new"):
            isolation.require_isolation("bwrap")
    finally:
        shutil.rmtree(bin_dir)
    # the explicit opt-out still runs, and says so
    assert run_program("print(1)", "", UNISOLATED).stdout == "1\n"
    with pytest.raises(UserError, match="isolation='docker'"):
        isolation.get_isolation("docker")


def test_opt_out_prints_a_warning_every_time(capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):
        assert isolation.require_isolation("none").name == "none"
    assert capsys.readouterr().err.count("WARNING: isolation=none") == 2
    isolation.require_isolation("bwrap")
    assert "WARNING" not in capsys.readouterr().err


def test_file_system_outside_work_dir_is_protected(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    sentinel = tmp_path / "keep.txt"
    sentinel.write_text("precious")
    attacks = [
        f"open({str(target)!r}, 'w').write('x')",
        f"import pathlib; pathlib.Path({str(target)!r}).write_text('x')",
        f"import os; os.close(os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY))",
        f"import os; os.symlink({str(target)!r}, 'link'); open('link', 'w').write('x')",
        f"import io; io.FileIO({str(target)!r}, 'w')",
        f"import os; os.remove({str(sentinel)!r})",
        f"import os; os.rename({str(sentinel)!r}, 'stolen.txt')",
        f"import shutil; shutil.rmtree({str(tmp_path)!r})",
        f"import os; os.chmod({str(sentinel)!r}, 0)",
        "import os; os.chdir('/')",
    ]
    for src in attacks:
        res = run_program(src, "", FAST)
        assert res.status == "blocked", (src, res)
    assert not target.exists() and sentinel.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("limits", [FAST, UNISOLATED], ids=["bwrap", "none"])
def test_work_dir_is_usable_private_and_removed(limits: Limits) -> None:
    src = (
        "import os, shutil, tempfile\nprint(os.getcwd())\n"
        "os.makedirs('a/b')\nopen('a/b/f.txt', 'w').write('hi')\n"
        "with tempfile.NamedTemporaryFile() as f:\n    f.write(b'x')\n"
        "shutil.rmtree('a')\nos.mkdir('locked')\nos.chmod('locked', 0)\n"
        "print(os.path.exists('a'), open('/dev/null', 'w').write('x'))\n"
    )
    before = set(Path(tempfile.gettempdir()).glob("wmtp-sandbox-*"))
    res = run_program(src, "", limits)
    assert res.status == "ok", res.stderr
    cwd, rest = res.stdout.split("\n", 1)
    assert rest == "False 1\n"
    if limits.isolation == "bwrap":
        assert cwd == isolation.WORK_DIR  # a tmpfs inside the sandbox
    else:
        assert "wmtp-sandbox-" in cwd and not os.path.exists(cwd)
    assert set(Path(tempfile.gettempdir()).glob("wmtp-sandbox-*")) <= before


@pytest.mark.parametrize("limits", [FAST, UNISOLATED], ids=["bwrap", "none"])
def test_environment_secrets_are_not_visible(
    monkeypatch: pytest.MonkeyPatch, limits: Limits
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-aws-123")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "sekrit-mlflow-456")
    src = "import os\nfor k, v in sorted(os.environ.items()):\n    print(k, v)\n"
    res = run_program(src, "", limits)
    assert res.status == "ok" and "sekrit" not in res.stdout
    assert "AWS_" not in res.stdout and "MLFLOW" not in res.stdout and "PATH " in res.stdout
    src = "import os\nprint(open(f'/proc/{os.getppid()}/environ').read())\n"
    res = run_program(src, "", limits)
    assert res.status == "blocked" and "sekrit" not in res.stdout + res.stderr


@pytest.mark.parametrize("limits", [FAST, UNISOLATED], ids=["bwrap", "none"])
def test_self_kill_and_exit_do_not_affect_evaluator(limits: Limits) -> None:
    res = run_program("import os\nos.kill(os.getpid(), 9)\n", "", limits)
    assert res.status == "killed" and res.returncode == -9
    res = run_program("import os\nos.abort()\n", "", limits)
    assert res.status == "killed" and res.returncode == -6
    res = run_program("import os\nos._exit(5)\n", "", limits)
    assert res.status == "error" and res.returncode == 5
    assert run_program("print(input())", "still fine", limits).stdout == "still fine\n"


def test_output_is_capped() -> None:
    res = run_program("print('x' * 10**6)", "", Limits(max_output_bytes=1000))
    assert res.status == "ok" and res.truncated and len(res.stdout) == 1000
    fail = check_stdio("print('x' * 10**6)", [{"input": "", "output": "x" * 1000}], Limits(2.0))
    assert not fail.passed


def test_run_many_respects_bound_and_keeps_order() -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def job(i: int) -> str:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        try:
            return run_program(f"import time\ntime.sleep(0.3)\nprint({i})\n", "", FAST).stdout
        finally:
            with lock:
                state["now"] -= 1

    start = time.monotonic()
    out = run_many([partial(job, i) for i in range(6)], max_workers=2)
    assert out == [f"{i}\n" for i in range(6)]
    assert state["max"] == 2
    assert time.monotonic() - start >= 0.9  # 3 waves of 0.3 s
    checks = run_many(
        [partial(check_stdio, "print(input())", [{"input": s, "output": s}]) for s in "ab"]
    )
    assert [c.passed for c in checks] == [True, True]
    with pytest.raises(ValueError):
        run_many([], max_workers=0)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        Limits(timeout_s=0)
    with pytest.raises(ValueError):
        Limits(memory_mb=-1)
    with pytest.raises(ValueError):
        Limits(cpu_s=0)
    with pytest.raises(ValueError, match="isolation"):
        Limits(isolation="chroot")


@pytest.mark.parametrize("iso", ["bwrap", "none"])
def test_label_verification_runs_programs_in_the_sandbox(iso: str) -> None:
    from weighted_mtp.data.verify import run_programs

    jobs = [
        ("print(int(input()) * 2)", ["1", "5"]),
        ("import os\nprint(os.getcwd())", [""]),
        ("print(open('/etc/passwd').read()[:5])", [""]),
        ("while True:\n    pass", [""]),
    ]
    out = run_programs(jobs, workers=2, limit_s=0.3, isolation=iso)
    assert out[0] == ["2\n", "10\n"] and out[3] == [None]
    if iso == "bwrap":
        assert out[1] == [isolation.WORK_DIR + "\n"] and out[2] == [None]  # no /etc inside
    else:
        assert out[1] != [isolation.WORK_DIR + "\n"] and out[2] == ["root:\n"]


def test_prepare_synthetic_uses_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from weighted_mtp.__main__ import main

    argv = ["prepare", "synthetic", "--out", str(tmp_path / "syn"), "--n-records", "12"]
    assert main([*argv, "--isolation", "none"]) == 0
    assert "WARNING: isolation=none" in capsys.readouterr().err
    labels = (tmp_path / "syn" / "train.jsonl").read_text()
    assert main(argv) == 0  # bwrap: the same verified labels
    assert (tmp_path / "syn" / "train.jsonl").read_text() == labels
    monkeypatch.setitem(isolation._INSTANCES, "bwrap", BwrapIsolation())
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert main([*argv, "--out", str(tmp_path / "other")]) == 2
    assert "bwrap is not installed" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_stderr_flood_does_not_fail_a_correct_program() -> None:
    """stderr is a pipe cut to its last ``max_output_bytes``: beyond RLIMIT_FSIZE, no EFBIG."""
    src = "import sys\nfor _ in range(20):\n    sys.stderr.write('e' * (1 << 20))\nprint(input())\n"
    res = check_stdio(src, [{"input": "7", "output": "7"}], Limits(timeout_s=20.0))
    assert res.passed
    run = run_program(src + "sys.stderr.write('END')\n", "7", Limits(timeout_s=20.0))
    assert run.status == "ok" and not run.truncated and run.stderr_truncated
    assert len(run.stderr) == Limits().max_output_bytes and run.stderr.endswith("eEND")


@pytest.mark.parametrize("limits", [FAST, UNISOLATED])
def test_status_comes_from_the_exit_not_from_stderr(limits: Limits) -> None:
    res = run_program("import sys\nsys.stderr.write('MemoryError\\n')\nsys.exit(1)", "", limits)
    assert res.status == "error" and res.returncode == 1 and "MemoryError" in res.stderr
    res = run_program("import sys\nsys.stderr.write('MemoryError\\n')\n", "", limits)
    assert res.status == "ok"
    res = run_program("x = 'a' * (1 << 40)\n", "", limits)  # a real one still is
    assert res.status == "memory"


def test_bwrap_and_isolation_do_not_import_each_other() -> None:
    """The shared piece lives in sandbox/base.py: no cycle between bwrap and isolation."""
    import ast

    def imports(module: str) -> set[str]:
        path = Path(isolation.__file__).with_name(f"{module}.py")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        return found

    assert "weighted_mtp.sandbox.isolation" not in imports("bwrap")
    assert "weighted_mtp.sandbox.base" in imports("bwrap")
    assert not any(m.startswith("weighted_mtp.sandbox.isolation") for m in imports("base"))
    assert not any(m.startswith("weighted_mtp.sandbox.bwrap") for m in imports("base"))


def _run_bpf(prog: bytes, nr: int, arch: int, arg1: int = 0) -> int:
    """A classic-BPF interpreter for the few instructions seccomp.program() emits."""
    import struct

    data = struct.pack("=iIQ6Q", nr, arch, 0, 0, arg1, 0, 0, 0, 0)
    insns = [struct.unpack("=HBBI", prog[i : i + 8]) for i in range(0, len(prog), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code in (0x15, 0x35):
            hit = acc == k if code == 0x15 else acc >= k
            pc += jt if hit else jf
        elif code == 0x06:
            return k
        pc += 1


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_filter_denies_the_list_and_allows_the_rest(machine: str) -> None:
    from weighted_mtp.sandbox import seccomp

    prog = seccomp.program(machine)
    assert prog is not None and seccomp.program("sparc") is None
    arch, numbers = seccomp.TABLES[machine]
    deny, allow = seccomp.RET_ERRNO | 1, seccomp.RET_ALLOW
    denied = {numbers[n] for n in seccomp.DENIED if n in numbers}
    assert {"keyctl", "add_key", "request_key", "ptrace", "memfd_create", "shmget"} <= set(
        n for n in seccomp.DENIED if n in numbers
    )
    for nr in range(460):
        want = deny if nr in denied else allow
        assert _run_bpf(prog, nr, arch) == want, (machine, nr)
    assert _run_bpf(prog, numbers["fcntl"], arch, seccomp.F_NOTIFY) == deny
    assert _run_bpf(prog, numbers["fcntl"], arch, 2) == allow  # F_SETFD
    assert _run_bpf(prog, 39, 0x40000003) == deny  # i386 int 0x80 from a 64-bit process
    if machine == "x86_64":
        assert _run_bpf(prog, seccomp.X32_SYSCALL_BIT | 39, arch) == deny


def test_work_mounts_of_a_dead_evaluator_are_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root each run's /work is a host tmpfs (size + nr_inodes); one left mounted by an
    evaluator that died is unmounted by the next; a live evaluator's is left alone."""
    from weighted_mtp.sandbox import workfs

    live = workfs.mount_work(1 << 20, 64, isolation.SANDBOX_UID)
    if live is None:
        pytest.skip("this evaluator cannot mount (not root): bwrap's --size tmpfs is used")
    dead = subprocess.Popen(["true"])
    dead.wait()
    monkeypatch.setattr(os, "getpid", lambda: dead.pid)
    orphan = workfs.mount_work(1 << 20, 64, isolation.SANDBOX_UID)
    monkeypatch.undo()
    assert orphan is not None
    try:
        mounts = Path("/proc/self/mountinfo").read_text()
        assert f" {orphan} " in mounts and "nr_inodes=64" in mounts
        workfs.sweep()
        mounts = Path("/proc/self/mountinfo").read_text()
        assert f" {orphan} " not in mounts and not os.path.exists(orphan)
        assert f" {live} " in mounts
    finally:
        workfs.unmount_work(live)
        workfs.unmount_work(orphan)
    assert f" {live} " not in Path("/proc/self/mountinfo").read_text()
