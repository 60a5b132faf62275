"""Checkpoints: atomic writes, retention, resume.

A checkpoint is one ``torch.save`` file holding the whole training state: trainable
weights (the policy's, unless it is frozen, and the value head on its own with its
config), optimizer, scheduler, grad scaler, step, epoch, RNG states, sampler state, the
resolved config and provenance (critic checkpoint path and hash). Files in ``save_dir``:

- ``checkpoint_step{N}.pt`` periodic (every ``save_checkpoint_every`` epochs; the newest
  ``save_total_limit`` are kept),
- ``checkpoint_best.pt`` lowest validation loss (``save_best``), never deleted,
- ``checkpoint_final.pt`` end of training (``save_final``), never deleted.

Writes go to a temporary file in the same directory, are fsynced and renamed over the
target, so a kill during a save never leaves a file that looks valid but is not.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weighted_mtp.errors import UserError
from weighted_mtp.models import value_head
from weighted_mtp.models.value_head import ValueHead

_UMASK = os.umask(0)
os.umask(_UMASK)
PERIODIC = re.compile(r"^checkpoint_step(\d+)\.pt$")
FORMAT_VERSION = 1


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` atomically (temp file + fsync + rename + fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; checkpoints are ordinary files
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy a checkpoint file atomically (temp file + fsync + rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 24)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file (CPU tensors), with a clear error for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated / not a torch file
        raise UserError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: not a weighted_mtp checkpoint (format {FORMAT_VERSION})")
    return state


def load_value_head(path: str | Path) -> ValueHead:
    """The value head of a training checkpoint (critic or verifiable), or of a standalone
    ``value_head.safetensors`` file."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".safetensors":
        return value_head.load_value_head(p)
    state = load(p)
    if "value_head" not in state["modules"]:
        raise UserError(
            f"{p} is a {state['stage']} checkpoint without a value head: point "
            "experiment.critic_checkpoint at a critic checkpoint (e.g. checkpoint_best.pt)"
        )
    head = ValueHead(**state["value_head_config"])
    head.load_state_dict(state["modules"]["value_head"])
    return head


def periodic_checkpoints(save_dir: Path) -> list[Path]:
    """Periodic checkpoints in ``save_dir``, oldest first."""
    if not save_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in save_dir.iterdir() if (m := PERIODIC.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(save_dir: Path) -> Path | None:
    """The checkpoint ``resume=auto`` continues from: final if the run ended, else the
    newest periodic one (best is always a copy of a periodic state)."""
    final = save_dir / "checkpoint_final.pt"
    if final.is_file():
        return final
    periodic = periodic_checkpoints(save_dir)
    return periodic[-1] if periodic else None


def prune(save_dir: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest periodic checkpoints (best/final untouched)."""
    periodic = periodic_checkpoints(save_dir)
    doomed = periodic[: max(0, len(periodic) - keep)] if keep > 0 else []
    for p in doomed:
        p.unlink()
    return doomed


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    """sha256 of a file (of its first ``limit`` bytes when given)."""
    h = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20 if remaining is None else min(1 << 20, remaining)):
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return h.hexdigest()
