"""Files of a checkpoint directory: atomic writes, the manifest, swaps, stale temp files.

A checkpoint directory is complete when its ``manifest.json`` exists: the manifest lists
every other file with its size and sha256, and it is written last (temp file, fsync,
rename) into a temporary directory that is then renamed into place. Readers verify each
file against the manifest before they use it (:class:`Manifest`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from weighted_mtp.data.index import sha256_file
from weighted_mtp.errors import UserError
from weighted_mtp.fileio import atomic_write_bytes, fsync_dir

log = logging.getLogger(__name__)
MANIFEST, STATE, CONFIG = "manifest.json", "state.json", "config.yaml"
FORMAT = "weighted_mtp.checkpoint"
VERSION = 2


class CheckpointError(UserError):
    """A checkpoint that is incomplete, corrupted, of another format or of another run."""


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_manifest(directory: Path, known: dict[str, dict[str, Any]] | None = None) -> None:
    """Write ``manifest.json`` (size + sha256 of every other file) last, atomically.

    ``known``: entries already computed (and fsynced) by the processes that wrote them;
    the other files are fsynced and hashed here."""
    files = {}
    for name in sorted(_payload(directory)):
        files[name] = (known or {}).get(name) or file_entry(directory / name)
    write_json(directory / MANIFEST, {"format": FORMAT, "version": VERSION, "files": files})


def file_entry(path: Path) -> dict[str, Any]:
    """fsync ``path`` and return its manifest entry (size, sha256)."""
    fsync_file(path)
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _payload(directory: Path) -> list[str]:
    return [
        p.name
        for p in directory.iterdir()
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    ]


class Manifest:
    """The manifest of one checkpoint directory; ``path(name)`` verifies before use."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        mf = directory / MANIFEST
        if not mf.is_file():
            raise CheckpointError(
                f"{mf}: missing, so {directory} is incomplete (a write was cut) or not a "
                "weighted_mtp checkpoint; use another checkpoint (checkpoint.resume=auto "
                "picks the newest valid one)"
            )
        try:
            data = json.loads(mf.read_text(encoding="utf-8"))
            self.files: dict[str, dict[str, Any]] = dict(data["files"])
            ok = data.get("format") == FORMAT
            version = data.get("version")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{mf}: not a valid checkpoint manifest ({exc})") from None
        if not ok:
            raise CheckpointError(f"{mf}: not a weighted_mtp checkpoint manifest")
        if version != VERSION:
            raise CheckpointError(
                f"{mf}: checkpoint format version {version}, this weighted_mtp reads "
                f"version {VERSION}"
            )
        self._verified: set[str] = set()

    def names(self, prefix: str = "", suffix: str = "") -> list[str]:
        return sorted(n for n in self.files if n.startswith(prefix) and n.endswith(suffix))

    def path(self, name: str) -> Path:
        """``dir/name`` after checking it exists with the recorded size and sha256."""
        if name not in self.files:
            raise CheckpointError(
                f"{self.dir / name}: not in {self.dir / MANIFEST}; the checkpoint lacks it "
                "(written by another version, or an incomplete copy)"
            )
        p = self.dir / name
        if name not in self._verified:
            want = self.files[name]
            if not p.is_file():
                raise CheckpointError(
                    f"{p}: missing (listed in {MANIFEST}); the copy is incomplete"
                )
            size = p.stat().st_size
            if size != want["size"] or sha256_file(p) != want["sha256"]:
                raise CheckpointError(
                    f"{p}: corrupted (its {'size' if size != want['size'] else 'sha256'} does "
                    f"not match {MANIFEST}); restore it from a copy or use another checkpoint"
                )
            self._verified.add(name)
        return p

    def verify_all(self) -> None:
        for name in self.files:
            self.path(name)

    def digest(self) -> str:
        """sha256 of the manifest: one identity for the whole checkpoint."""
        return sha256_file(self.dir / MANIFEST)


def replace_dir(tmp: Path, dst: Path) -> None:
    """Move the finished directory ``tmp`` to ``dst``, replacing an older ``dst`` with two
    renames (``dst`` -> ``.dst.old``, ``tmp`` -> ``dst``); :func:`clean_stale` undoes a
    swap cut between the two."""
    old = dst.with_name(f".{dst.name}.old")
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)
    shutil.rmtree(old, ignore_errors=True)


def temp_dir(dst: Path) -> Path:
    """Where checkpoint ``dst`` is written before :func:`finish` moves it into place
    (the same name on every rank)."""
    return dst.with_name(f".{dst.name}.tmp")


def finish(
    tmp: Path,
    dst: Path,
    state: dict[str, Any],
    config: dict[str, Any],
    known: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Complete the checkpoint written into ``tmp``: ``state.json`` (with the format
    header), ``config.yaml``, then the manifest (last: it marks the directory complete;
    ``known`` as for :func:`write_manifest`), and move it to ``dst``."""
    write_json(tmp / STATE, {"format": FORMAT, "version": VERSION} | state)
    (tmp / CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    write_manifest(tmp, known=known)
    replace_dir(tmp, dst)


def link_dir(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of the checkpoint ``src`` by hard links (its files are never
    modified), swapped in atomically: ``dst`` is the old or the new one, never a mix."""
    tmp = temp_dir(dst)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=os.link)
    replace_dir(tmp, dst)


def clean_stale(save_dir: Path) -> list[str]:
    """Remove what killed writes left in ``save_dir``: ``.*.tmp`` files and directories;
    a ``.X.old`` whose ``X`` is missing (a swap cut between its renames) is moved back."""
    if not save_dir.is_dir():
        return []
    removed = []
    for p in sorted(save_dir.iterdir()):
        if not p.name.startswith(".checkpoint_"):
            continue
        if p.name.endswith(".old"):
            target = p.with_name(p.name[1:].removesuffix(".old"))
            if not target.exists() and (p / MANIFEST).is_file():
                os.replace(p, target)
                log.warning("restored %s (a swap was cut)", target)
                continue
        elif ".tmp" not in p.name:
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        removed.append(p.name)
    if removed:
        log.warning("removed %d stale temp file(s) in %s: %s", len(removed), save_dir, removed)
    return removed
