"""One program cannot hold more than its memory limit: ``programs/hold_memory.py`` tries
every place RLIMIT_AS does not count (memfd, SysV shared memory and message queues,
/dev/shm, /tmp, /work, pipe and socket buffers), then fills its address space, and reports
what it held at once. Against a 1 GiB limit it must stay under 1.25 GiB."""

from __future__ import annotations

import re
from pathlib import Path

from weighted_mtp.sandbox.limits import Limits
from weighted_mtp.sandbox.runner import run_program

PROGRAM = Path(__file__).parent / "programs" / "hold_memory.py"


def test_one_program_holds_at_most_a_quarter_over_its_limit() -> None:
    source = PROGRAM.read_text().replace("@MARKER@", "wmtp-hold")
    limits = Limits(timeout_s=60.0, memory_mb=1024)
    res = run_program(source, "", limits)
    assert res.status == "ok", (res.status, res.stderr[-2000:])
    held = {k: int(v) for k, v in re.findall(r"^(\S+) held (\d+)$", res.stdout, re.M)}
    for channel in ("memfd", "shm", "msg", "/dev/shm", "/tmp"):
        assert held[channel] == 0, res.stdout
    total = int(re.search(r"held total (\d+)", res.stdout)[1])
    assert total == sum(held.values())
    assert held["anonymous"] > 512 << 20  # it really filled its address space
    assert total <= 1.25 * (1 << 30), res.stdout
