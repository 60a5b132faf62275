"""Checkpoints: atomic writes, retention, resume.

A checkpoint is one ``torch.save`` file holding the whole training state: trainable
weights (the policy's, unless it is frozen, and the value head on its own with its
config), optimizer, scheduler, grad scaler, step, epoch, RNG states, sampler state, the
resolved config and provenance (critic checkpoint path and hash). Files in ``save_dir``:

- ``checkpoint_step{N}.pt`` periodic (every ``save_checkpoint_every`` epochs; the newest
  ``save_total_limit`` are kept),
- ``checkpoint_best.pt`` lowest validation loss (``save_best``), never deleted,
- ``checkpoint_final.pt`` end of training (``save_final``), never deleted.

Under ``runtime.distributed=fsdp`` (several processes, policy trained) each checkpoint is
instead a *directory* of the same name without ``.pt`` (``checkpoint_step{N}/``,
``checkpoint_best/``, ``checkpoint_final/``) written with torch.distributed.checkpoint:
``.metadata`` + ``__{rank}_0.distcp`` (every rank writes its own shards of weights and
Adam state, in parallel, nothing is gathered) + ``meta.pt`` (everything else above, by
rank 0). Why not one consolidated file: for 7B that is 26 GB fp32 weights + 52 GB Adam
state gathered into rank 0's CPU memory and written by one process at every interval.
``load`` / ``load_policy`` / ``load_value_head`` read such a directory in a single
process (weights only, unsharded); ``resume`` restores it at any world size (with or
without FSDP). ``best`` is a hard-linked copy of the periodic directory.

Writes go to a temporary file (directory) in the same directory, are fsynced and renamed
over the target, so a kill during a save never leaves a checkpoint that looks valid but
is not (a directory that replaces an older one of the same name - best, a re-written
final - is swapped in by two renames).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from weighted_mtp.errors import UserError
from weighted_mtp.models import value_head
from weighted_mtp.models.value_head import ValueHead
from weighted_mtp.training import distributed as dist
from weighted_mtp.training import fsdp

_UMASK = os.umask(0)
os.umask(_UMASK)
log = logging.getLogger(__name__)
PERIODIC = re.compile(r"^checkpoint_step(\d+)(\.pt)?$")
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
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(tmp: Path, dst: Path) -> None:
    """Move a finished directory ``tmp`` to ``dst`` (replacing an older ``dst``)."""
    old = dst.with_name(f".{dst.name}.old")
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)
    shutil.rmtree(old, ignore_errors=True)


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy a checkpoint file atomically (temp file + fsync + rename); a checkpoint
    directory is hard-linked file by file (its files are never modified) and swapped in."""
    if src.is_dir():
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, copy_function=os.link)
        replace_dir(tmp, dst)
        return
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


def load(path: str | Path, with_modules: bool = True) -> dict[str, Any]:
    """Load a checkpoint file or sharded directory (CPU tensors; of a directory only the
    weights, unsharded, no optimizer), with a clear error for a bad file."""
    path = Path(path)
    sharded = fsdp.is_dcp_dir(path)
    if not path.is_file() and not sharded:
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(
            path / fsdp.META if sharded else path, map_location="cpu", weights_only=False
        )
    except Exception as exc:  # truncated / not a torch file
        raise UserError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: not a weighted_mtp checkpoint (format {FORMAT_VERSION})")
    if sharded and with_modules:
        state["modules"] = fsdp.load_modules(path)
    return state


def load_value_head(path: str | Path) -> ValueHead:
    """The value head of a training checkpoint (critic or verifiable), or of a standalone
    ``value_head.safetensors`` file."""
    p = Path(path)
    if (p.is_dir() and not fsdp.is_dcp_dir(p)) or p.suffix == ".safetensors":
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
    found = [
        (int(m.group(1)), p)
        for p in save_dir.iterdir()
        if (m := PERIODIC.match(p.name)) and (p.is_file() or fsdp.is_dcp_dir(p))
    ]
    return [p for _, p in sorted(found)]


def latest(save_dir: Path) -> Path | None:
    """The checkpoint ``resume=auto`` continues from: final if the run ended, else the
    newest periodic one (best is always a copy of a periodic state)."""
    for final in (save_dir / "checkpoint_final.pt", save_dir / "checkpoint_final"):
        if final.is_file() or fsdp.is_dcp_dir(final):
            return final
    periodic = periodic_checkpoints(save_dir)
    return periodic[-1] if periodic else None


def prune(save_dir: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest periodic checkpoints (best/final untouched)."""
    periodic = periodic_checkpoints(save_dir)
    doomed = periodic[: max(0, len(periodic) - keep)] if keep > 0 else []
    for p in doomed:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
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


def file_sha256(path: str | Path) -> str:
    """sha256 of a file; of a sharded checkpoint directory: of its ``meta.pt`` (step,
    config, RNG states: unique per checkpoint)."""
    if fsdp.is_dcp_dir(Path(path)):
        path = Path(path) / fsdp.META
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Checkpointer:
    """Saves and restores the whole training state of one run (rank 0 writes).

    Holds the objects a checkpoint is made of; ``periodic`` / ``final`` apply the
    ``checkpoint`` section's rules (interval files, best, final, retention).
    """

    def __init__(self, cfg, task, modules, optimizer, scheduler, scaler, sampler, parallel) -> None:
        self.cfg, self.task, self.modules = cfg, task, modules
        self.optimizer, self.scheduler, self.scaler, self.sampler = (
            optimizer,
            scheduler,
            scaler,
            sampler,
        )
        self.info = parallel.info
        self.c = cfg.checkpoint
        self.save_dir = Path(self.c.save_dir)
        self.best = math.inf
        self.step = 0
        # a trained FSDP-sharded policy: checkpoints are DCP directories ("checkpoint_final/")
        self.sharded = parallel.sharded and "policy" in modules
        self.ext = "" if self.sharded else ".pt"

    def state(self, val: dict[str, float]) -> dict[str, Any]:
        """The whole state (``modules`` and ``optimizer`` omitted when sharded)."""
        task, full = self.task, {}
        if not self.sharded:
            full["modules"] = {k: m.state_dict() for k, m in self.modules.items()}
            full["optimizer"] = self.optimizer.state_dict()
        return full | {
            "format": FORMAT_VERSION,
            "stage": self.cfg.experiment.stage,
            "step": self.step,
            "epoch": self.sampler.epoch,
            "value_head_config": None if task.value_head is None else task.value_head.config(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "best_val_loss": self.best,
            "val": val,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "provenance": task.provenance,
        }

    def save(self, stem: str, val: dict[str, float]) -> Path:
        path = self.save_dir / f"{stem}{self.ext}"
        if not self.sharded:
            if self.info.is_main:
                atomic_save(self.state(val), path)
            return path
        tmp = path.with_name(f".{path.name}.tmp")  # the same name on every rank
        if self.info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier(self.info)
        fsdp.save_dcp(tmp, self.modules, self.optimizer)
        if self.info.is_main:
            atomic_save(self.state(val), tmp / fsdp.META)  # last: marks it complete
            replace_dir(tmp, path)
        dist.barrier(self.info)
        return path

    def resume(self) -> int:
        """Restore from ``checkpoint.resume`` (``auto``: the latest in save_dir); the step."""
        resume = self.c.resume
        path = None if not resume else latest(self.save_dir) if resume == "auto" else Path(resume)
        if path is None:
            return 0
        if fsdp.is_dcp_dir(path):
            state = load(path, with_modules=False)
            fsdp.load_dcp(path, self.modules, self.optimizer)
        elif self.sharded:
            raise UserError(f"{path}: a single-file checkpoint cannot resume an fsdp run")
        else:
            state = load(path)
            for name, module in self.modules.items():
                module.load_state_dict(state["modules"][name])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.step, self.best = state["step"], state["best_val_loss"]
        log.info("resumed from %s at step %d", path, self.step)
        return self.step

    def _track_best(self, val: dict[str, float]) -> bool:
        improved = val["val/loss"] < self.best
        self.best = min(self.best, val["val/loss"])
        return improved

    def periodic(self, step: int, val: dict[str, float]) -> None:
        """Interval checkpoint: write it, copy it to best if improved, prune old ones."""
        self.step = step
        improved = self._track_best(val)
        path = self.save(f"checkpoint_step{step}", val)
        if self.info.is_main:
            if self.c.save_best and improved:
                atomic_copy(path, self.save_dir / f"checkpoint_best{self.ext}")
            if self.c.save_total_limit > 0:
                prune(self.save_dir, self.c.save_total_limit)

    def final(self, step: int, val: dict[str, float]) -> Path | None:
        """End of training: final (if save_final) and best (if improved and save_best)."""
        self.step = step
        improved = self._track_best(val)
        final = None
        if self.c.save_final:
            final = self.save("checkpoint_final", val)
            if self.c.save_best and improved and self.info.is_main:
                atomic_copy(final, self.save_dir / f"checkpoint_best{self.ext}")
        elif self.c.save_best and improved:
            self.save("checkpoint_best", val)
        return final


def load_policy(path: str | Path, device: str | torch.device = "cpu"):
    """The policy of a training checkpoint, with its tokenizer: (model, tokenizer).

    The base model comes from the checkpoint's ``models.policy`` config; a checkpoint
    that trained the policy (baseline, verifiable, rho1) overrides its weights. A Meta
    directory or safetensors checkpoint is loaded as it is.
    """
    from weighted_mtp.models.formats import load_model
    from weighted_mtp.models.tokenizer import load_tokenizer, policy_tokenizer_path

    p = Path(path)
    if p.is_dir() and not fsdp.is_dcp_dir(p):
        tok_dir = p / "tokenizer" if (p / "tokenizer").exists() else p
        return load_model(p, device=device), load_tokenizer(tok_dir)
    state = load(p)
    policy = state["config"]["models"]["policy"]
    model = load_model(policy["path"], policy["dtype"], device)
    if "policy" in state["modules"]:
        model.load_state_dict(state["modules"]["policy"])
    tok_path = policy_tokenizer_path(policy["path"], policy["tokenizer_path"])
    return model, load_tokenizer(tok_path)
