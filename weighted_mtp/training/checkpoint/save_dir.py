"""The checkpoints of one ``checkpoint.save_dir``: the periodic ones, what
``resume=auto`` tries and the newest valid one, and retention (``save_total_limit``)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from weighted_mtp.errors import UserError, fix
from weighted_mtp.training.checkpoint.files import CONFIG, CheckpointError
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


# fields a re-run may change and still be the same run (where it resumes from, tracking)
_SAME_RUN_IGNORES = ("checkpoint.resume", "checkpoint.allow_config_change", "mlflow.")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``field: old -> new`` for each field that differs (resume and tracking fields aside)."""
    a, b = _flat(old), _flat(new)
    keys = sorted(set(a) | set(b))
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in keys
        if a.get(k) != b.get(k) and not k.startswith(_SAME_RUN_IGNORES)
    ]


def refuse_overwrite(save_dir: Path, config: dict[str, Any], resume: str) -> str | None:
    """A fresh run (``checkpoint.resume`` empty) must not overwrite the checkpoints another
    run left in ``save_dir``: raise :class:`UserError` with the fixes when their config
    differs from ``config`` (resolved, absolute paths). A re-run of the same config is the
    same run: returns a warning to print and goes on."""
    if resume:
        return None  # resuming (auto or a path) continues a run
    found = candidates(save_dir)
    if not found:
        return None
    newest = found[0]
    try:
        old = yaml.safe_load((newest / CONFIG).read_text(encoding="utf-8"))
        changes = config_changes(old if isinstance(old, dict) else {}, config)
    except (OSError, yaml.YAMLError) as exc:
        changes = [f"(its {CONFIG} cannot be read: {exc})"]
    names = ", ".join(p.name for p in found)
    if not changes:
        return (
            f"warning: {save_dir} holds the checkpoints of a run with this same config "
            f"({names}); this run starts fresh and replaces them"
        )
    name = config.get("experiment", {}).get("name") or "run"
    shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
    save_key = "checkpoint.save_dir"
    own_dir = name in str(save_dir)
    new_name = (
        f"pick a new name, {fix(f'experiment.name={name}-2')} (its checkpoints go to their own "
        f"dir), "
        if own_dir
        else f"save elsewhere, {fix(f'{save_key}=<new dir>')}, "
    )
    raise UserError(
        f"{save_key} = {str(save_dir)!r} already holds the checkpoints of another run ({names}) "
        f"whose config differs: {shown}. A fresh run would overwrite them. Fix: {new_name}"
        f"or continue that run with {fix('checkpoint.resume=auto')} (it must keep the data "
        f"plan; see checkpoint.allow_config_change), or move {save_dir} away first"
    )
