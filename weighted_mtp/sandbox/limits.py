"""Resource limits of one sandboxed run, and the rlimits they become in the child process."""

from __future__ import annotations

import math
from dataclasses import dataclass

from weighted_mtp.sandbox.base import ISOLATIONS


@dataclass(frozen=True)
class Limits:
    """Resource limits and isolation options for one program run."""

    timeout_s: float = 10.0  # wall clock, from spawn to exit
    cpu_s: int | None = None  # RLIMIT_CPU; default ceil(timeout_s) + 1
    memory_mb: int = 1024  # RLIMIT_AS (virtual address space)
    max_output_bytes: int = 1 << 20  # per stream; beyond it output is cut, truncated=True
    max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE (also bounds stdout/stderr files)
    max_open_files: int = 256  # RLIMIT_NOFILE
    max_procs: int = 64  # RLIMIT_NPROC: processes + threads of one run (bwrap only)
    disk_mb: int = 64  # size of the private work dir (bwrap: a tmpfs; none: not enforced)
    max_inodes: int = 4096  # files + dirs in the work dir (bwrap as root: see workfs.py)
    guards: bool = True  # in-process guards; disable only for trusted code or tests
    isolation: str = "bwrap"  # "bwrap" (OS-level) or "none" (see isolation.py)
    python: str | None = None  # interpreter; None = the isolation's default

    def __post_init__(self) -> None:
        names = ("timeout_s", "memory_mb", "max_output_bytes", "max_file_bytes", "max_procs")
        for name in (*names, "max_open_files", "disk_mb", "max_inodes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"Limits.cpu_s must be >= 1 second, got {self.cpu_s!r}")
        if self.isolation not in ISOLATIONS:
            raise ValueError(
                f"Limits.isolation must be one of {ISOLATIONS}, got {self.isolation!r}"
            )

    def rlimits(self, nproc: bool) -> dict[str, tuple[int, int]]:
        """``resource`` name -> (soft, hard), set in the child before the program starts;
        RLIMIT_NPROC only when ``nproc`` (the isolation makes it a real per-run limit)."""
        cpu = self.cpu_s or math.ceil(self.timeout_s) + 1
        mem = self.memory_mb << 20
        out = {
            "RLIMIT_CPU": (cpu, cpu + 1),
            "RLIMIT_AS": (mem, mem),
            "RLIMIT_FSIZE": (self.max_file_bytes, self.max_file_bytes),
            "RLIMIT_NOFILE": (self.max_open_files, self.max_open_files),
            "RLIMIT_CORE": (0, 0),
        }
        if nproc:  # counted per uid (per user namespace under bwrap); ignored for root
            out["RLIMIT_NPROC"] = (self.max_procs, self.max_procs)
        return out
