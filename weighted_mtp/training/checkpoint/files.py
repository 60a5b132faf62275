"""Files of a checkpoint directory: atomic writes, the manifest, swaps, stale temp files.

A checkpoint directory is complete when its ``manifest.json`` exists: the manifest lists
every other file with its size and sha256, and it is written last (temp file, fsync,
rename) into a temporary directory that is then renamed into place. Readers verify each
file against the manifest before they use it (:class:`Manifest`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
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
    """Write ``obj`` as strict JSON (a NaN or infinite number is a CheckpointError)."""
    try:
        text = json.dumps(obj, indent=1, allow_nan=False)
    except ValueError as exc:  # NaN/inf: invalid JSON, never written
        raise CheckpointError(
            f"{path}: not written, a value is not a finite number ({exc})"
        ) from None
    atomic_write_bytes(path, (text + "\n").encode())


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
    """The manifest of one checkpoint directory; ``path(name)`` verifies before use.

    Confinement: every name it lists is a plain file name of the directory (no separator,
    not ``.``/``..``, not hidden), and a file is read only when it is a regular file
    opened without following a symlink, so nothing outside the directory is ever read
    (hard links, as ``checkpoint_best`` uses, are regular files of the directory)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        mf = directory / MANIFEST
        if not mf.is_file() and not mf.is_symlink():
            raise CheckpointError(
                f"{mf}: missing, so {directory} is incomplete (a write was cut) or not a "
                "weighted_mtp checkpoint; use another checkpoint (checkpoint.resume=auto "
                "picks the newest valid one)"
            )
        raw = read_confined(mf, MAX_MANIFEST_BYTES)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{mf}: not a valid checkpoint manifest ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise CheckpointError(
                f"{mf}: not a valid checkpoint manifest (field 'files' must be an object "
                "mapping file names to {size, sha256})"
            )
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{mf}: not a weighted_mtp checkpoint manifest")
        version = data.get("version")
        if version != VERSION:
            raise CheckpointError(
                f"{mf}: checkpoint format version {version}, this weighted_mtp reads "
                f"version {VERSION}"
            )
        self.files: dict[str, dict[str, Any]] = {
            name: _checked_entry(mf, name, entry) for name, entry in data["files"].items()
        }
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
            if not p.is_file() and not p.is_symlink():
                raise CheckpointError(
                    f"{p}: missing (listed in {MANIFEST}); the copy is incomplete"
                )
            size, digest = hash_confined(p, want["size"])
            if size != want["size"] or digest != want["sha256"]:
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
        return hashlib.sha256(read_confined(self.dir / MANIFEST, MAX_MANIFEST_BYTES)).hexdigest()


MAX_MANIFEST_BYTES = 16 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def plain_name(name: object) -> bool:
    """A file name of the checkpoint directory itself: no separator, not ``.``/``..``,
    not hidden (hidden names are temp files, never listed), no NUL."""
    return (
        isinstance(name, str)
        and bool(name)
        and not name.startswith(".")
        and not any(c in name for c in ("/", "\\", "\0"))
        and os.path.basename(name) == name
    )


def _checked_entry(mf: Path, name: str, entry: object) -> dict[str, Any]:
    """A manifest entry ``files[name]`` after checking its name and fields."""
    if not plain_name(name):
        raise CheckpointError(
            f"{mf}: files[{name!r}] is not a plain file name of the checkpoint directory "
            "(a path separator, '..', an absolute or hidden name); a checkpoint only lists "
            "its own files: this manifest was edited or crafted, use another checkpoint"
        )
    if not isinstance(entry, dict):
        raise CheckpointError(
            f"{mf}: files[{name!r}] must be an object {{size, sha256}}, got "
            f"{type(entry).__name__}; use another checkpoint"
        )
    size, sha = entry.get("size"), entry.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise CheckpointError(
            f"{mf}: files[{name!r}].size must be a byte count (an integer >= 0), got "
            f"{size!r}; use another checkpoint"
        )
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise CheckpointError(
            f"{mf}: files[{name!r}].sha256 must be 64 lowercase hex digits, got {sha!r}; "
            "use another checkpoint"
        )
    return {"size": size, "sha256": sha}


def _open_confined(path: Path) -> int:
    """A read-only descriptor of the regular file ``path``, its last component not
    followed if it is a symlink (refused)."""
    try:
        fd = os.open(
            path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        )
    except OSError as exc:
        why = "a symlink, which a checkpoint never holds" if path.is_symlink() else exc.strerror
        raise CheckpointError(
            f"{path}: not read ({why}); a checkpoint's files are plain files of its "
            "directory: copy the real file there or use another checkpoint"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: not a regular file; use another checkpoint")
    return fd


def read_confined(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (no symlink followed), at most ``limit``."""
    fd = _open_confined(path)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise CheckpointError(f"{path}: larger than {limit} bytes, not a checkpoint file")
    return data


def hash_confined(path: Path, expect_size: int) -> tuple[int, str | None]:
    """(size, sha256) of the regular file ``path`` (no symlink followed); the sha256 is
    None, and nothing read, when the size is not ``expect_size``."""
    fd = _open_confined(path)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != expect_size:
            return size, None
        h = hashlib.sha256()
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return size, h.hexdigest()


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
