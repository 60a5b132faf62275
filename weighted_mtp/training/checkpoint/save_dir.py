"""The checkpoints of one ``checkpoint.save_dir``: the periodic ones, what
``resume=auto`` tries and the newest valid one, and retention (``save_total_limit``)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from weighted_mtp.training.checkpoint.files import CheckpointError
from weighted_mtp.training.checkpoint.reader import Checkpoint

PERIODIC = re.compile(r"^checkpoint_step(\d+)$")


def periodic_checkpoints(save_dir: Path) -> list[Path]:
    """Periodic checkpoints in ``save_dir``, oldest first."""
    if not save_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in save_dir.iterdir() if (m := PERIODIC.match(p.name))]
    return [p for _, p in sorted(found)]


def candidates(save_dir: Path) -> list[Path]:
    """What ``resume=auto`` tries, newest first: final, periodic, best."""
    found = [save_dir / "checkpoint_final", *reversed(periodic_checkpoints(save_dir))]
    return [p for p in [*found, save_dir / "checkpoint_best"] if p.exists()]


def latest_valid(save_dir: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint whose every file matches its manifest, and why each newer
    one was skipped."""
    skipped = []
    for p in candidates(save_dir):
        try:
            ck = Checkpoint(p)
            ck.manifest.verify_all()
            return ck, skipped
        except CheckpointError as exc:
            skipped.append(f"{p.name}: {exc}")
    return None, skipped


def prune(save_dir: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest periodic checkpoints (best/final untouched)."""
    periodic = periodic_checkpoints(save_dir)
    doomed = periodic[: max(0, len(periodic) - keep)] if keep > 0 else []
    for p in doomed:
        shutil.rmtree(p)
    return doomed
