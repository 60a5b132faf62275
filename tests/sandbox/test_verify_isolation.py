"""Label verification (``data.verify``): one program, one process.

The programs of a chunk share a sandbox but never an interpreter: nothing one program does
(patching builtins, leaving files or processes, reading the harness's frames and memory,
writing forged result lines, killing the harness, ignoring its alarm) changes another
program's outputs. The attackers use the known bypasses of the Python-level guard (a
freshly imported ``posix``), so what stops them is the process boundary.
"""

from __future__ import annotations

import time

import pytest

from weighted_mtp.data import verify
from weighted_mtp.data.verify import run_programs

ISOLATIONS = ["bwrap", "none"]
DOUBLE = ("print(int(input()) * 2)", ["1", "5"])
WRONG = ("print(0)", ["1", "5"])  # a wrong program: its outputs must stay its own
FRESH_POSIX = "import sys\nsys.modules.pop('posix', None)\nimport posix\n"

PROC_ATTACK = (  # the harness's own results channel, appended to through /proc
    "for fd in range(0, 8):\n"
    "    try:\n"
    "        w = posix.open(f'/proc/{posix.getppid()}/fd/{fd}', posix.O_WRONLY | posix.O_APPEND)\n"
    "        posix.write(w, fake)\n"
    "    except OSError:\n"
    "        pass\n"
)


def _chunk(attacker: str, iso: str, limit_s: float = 0.5, n_inputs: int = 2) -> list:
    """One chunk: victims before and after the attacker (all in one sandbox)."""
    jobs = [DOUBLE, WRONG, (attacker, ["1"] * n_inputs), DOUBLE, WRONG]
    return verify._run_chunk([(s, list(i)) for s, i in jobs], limit_s, iso)


def _victims_intact(out: list) -> None:
    assert out[0] == out[3] == ["2\n", "10\n"]
    assert out[1] == out[4] == ["0\n", "0\n"]


@pytest.mark.parametrize("iso", ISOLATIONS)
def test_patched_print_does_not_reach_the_next_program(iso: str) -> None:
    attacker = "import builtins\nbuiltins.print = lambda *a, **k: None\nprint('x')\n"
    out = _chunk(attacker, iso)
    assert out[2] == ["", ""]  # its own runs print nothing
    _victims_intact(out)
    # through run_programs too: one worker, two chunks, the attacker first in chunk 0
    jobs = [(attacker, ["1"]), DOUBLE, DOUBLE, DOUBLE]
    assert run_programs(jobs, workers=1, isolation=iso)[2:] == [["2\n", "10\n"]] * 2


@pytest.mark.parametrize("iso", ISOLATIONS)
def test_no_forged_results_from_frames_fds_or_proc(iso: str) -> None:
    attacker = FRESH_POSIX + (
        "import gc, json\n"
        "fake = (json.dumps(['FORGED', 'FORGED']) + '\\n').encode() * 64\n"
        "f = sys._getframe()\n"
        "while f is not None:  # the harness's frames: write through its globals\n"
        "    g = f.f_globals\n"
        "    for name in ('_write_all', 'write'):\n"
        "        if callable(g.get(name)):\n"
        "            try:\n"
        "                g[name](1, fake)\n"
        "            except Exception:\n"
        "                pass\n"
        "    f = f.f_back\n"
        "for fd in range(3, 256):  # every descriptor it might have inherited\n"
        "    try:\n"
        "        posix.write(fd, fake)\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n"
        "    posix.write(1, fake)\n"
        "except OSError:\n"
        "    pass\n"
        "print('done')\n"
    )
    if iso == "bwrap":  # under none the harness runs as the caller: no OS boundary to test
        attacker += PROC_ATTACK
    out = _chunk(attacker, iso)
    _victims_intact(out)
    assert "FORGED" not in str([out[i] for i in (0, 1, 3, 4)])


@pytest.mark.parametrize("iso", ISOLATIONS)
def test_other_jobs_are_not_in_the_programs_memory(iso: str) -> None:
    marker = "print('SECRET_MARKER_42')"
    attacker = (
        "import gc\n"
        "def scan():\n"
        "    m = 'SECRET' + '_MARKER' + '_42'\n"
        "    hits = 0\n"
        "    for o in gc.get_objects():\n"
        "        items = o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()\n"  # noqa: E501
        "        for x in list(items):\n"
        "            if isinstance(x, str) and x is not m and m in x:\n"
        "                hits += 1\n"
        "    return hits\n"
        "print(scan())\n"
    )
    jobs = [(attacker, [""]), (marker, [""]), (attacker, [""])]
    out = verify._run_chunk(jobs, 0.5, iso)
    assert out == [["0\n"], ["SECRET_MARKER_42\n"], ["0\n"]]


@pytest.mark.parametrize("iso", ISOLATIONS)
def test_ignored_alarm_costs_only_its_own_timeout(iso: str) -> None:
    ignore = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    swallow = "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass\n"  # noqa: E501
    for attacker in (ignore, swallow):
        start = time.monotonic()
        out = _chunk(attacker, iso, limit_s=0.3, n_inputs=3)
        assert time.monotonic() - start < 8  # one timeout (~0.55 s), not the chunk's 60 s
        assert out[2] == [None, None, None]
        _victims_intact(out)


@pytest.mark.parametrize("iso", ISOLATIONS)
def test_files_left_behind_do_not_reach_the_next_program(iso: str) -> None:
    writer = "open('answer.txt', 'w').write('FROM-ANOTHER-PROGRAM')\nprint('wrote')\n"
    reader = (
        "import os\n"
        "print(open('answer.txt').read() if os.path.exists('answer.txt') else int(input()) * 2)\n"
    )
    out = verify._run_chunk([(writer, ["1"]), (reader, ["1", "5"])], 0.5, iso)
    assert out == [["wrote\n"], ["2\n", "10\n"]]


def test_killing_the_harness_fails_only_the_killer() -> None:
    attacker = FRESH_POSIX + "import signal\nposix.kill(posix.getppid(), signal.SIGKILL)\n"
    out = _chunk(attacker, "bwrap")
    assert out[2] == [None, None]
    _victims_intact(out)


def test_exits_and_floods_fail_only_their_own_runs() -> None:
    jobs = [
        ("import sys\nprint(1)\nsys.exit(0)", ["", ""]),  # SystemExit: a failure, as ever
        ("print('x' * (2 << 20))", [""]),  # more than MAX_RUN_OUTPUT
        ("import os\nos.closerange(0, 256)\nprint(int(input()) * 2)", ["3"]),  # its own channel
        ("print(int(input()) * 2)", ["1", "5"]),
        ("def f(:", ["1"]),
    ]
    out = verify._run_chunk(jobs, 0.5, "bwrap")
    assert out == [[None, None], [None], [None], ["2\n", "10\n"], [None]]


def test_the_harness_is_not_reachable_through_proc() -> None:
    probe = FRESH_POSIX + (
        "pp = posix.getppid()\n"
        "opened = []\n"
        "for name in ('fd/0', 'fd/1', 'mem', 'environ'):\n"
        "    try:\n"
        "        posix.open(f'/proc/{pp}/{name}', posix.O_RDONLY)\n"
        "        opened.append(name)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(opened)\n"
    )
    assert verify._run_chunk([(probe, [""])], 0.5, "bwrap") == [["[]\n"]]
