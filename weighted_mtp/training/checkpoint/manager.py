"""The Checkpointer: writes, selects and restores the training state of one run.

Save: every rank writes its files into ``.{name}.tmp/`` (replicated: rank 0 writes all;
fsdp: every rank its own shards, in parallel, nothing gathered) and hashes them; rank 0
then writes ``state.json``, ``config.yaml``, ``rng.safetensors`` and, last, the manifest,
and renames the directory into place. ``checkpoint_best`` is a hard-linked copy of the
checkpoint that reached the best ``val/loss``, swapped in atomically; on resume it is
re-linked if a kill cut that step (it always matches the recorded best).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from weighted_mtp import distributed as dist
from weighted_mtp.errors import TrainingDiverged
from weighted_mtp.models import lora
from weighted_mtp.training.checkpoint import compat
from weighted_mtp.training.checkpoint.files import (
    CheckpointError,
    clean_stale,
    file_entry,
    finish,
    link_dir,
    temp_dir,
)
from weighted_mtp.training.checkpoint.reader import Checkpoint, absolute_paths, relative_paths
from weighted_mtp.training.checkpoint.rng import rng_state, set_rng_state
from weighted_mtp.training.checkpoint.save_dir import latest_valid, prune
from weighted_mtp.training.checkpoint.tensors import decode, dtype_kind, encode, write_part

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores the whole training state of one run.

    Holds the objects a checkpoint is made of; ``periodic`` / ``final`` apply the
    ``checkpoint`` section's rules (interval checkpoints, best, final, retention).
    """

    def __init__(self, cfg, task, modules, optimizer, scheduler, scaler, sampler, parallel) -> None:
        self.cfg, self.task, self.modules = cfg, task, modules
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.sampler, self.info = sampler, parallel.info
        self.c = cfg.checkpoint
        self.save_dir = Path(self.c.save_dir)
        self.best, self.best_step, self.step = math.inf, -1, 0
        self.container = nn.ModuleDict(modules)
        # LoRA: only the (replicated) adapters of the policy are saved, in peft's format
        policy = modules.get("policy")
        self.adapted = policy is not None and lora.is_adapted(policy)
        frozen_base = StateDictOptions(ignore_frozen_params=True, strict=False)
        self.options = frozen_base if self.adapted else None
        # a trained FSDP-sharded policy: every rank writes its own shards
        self.sharded = parallel.sharded and "policy" in modules and not self.adapted
        self.config = absolute_paths(OmegaConf.to_container(cfg, resolve=True))
        self._plan: dict[str, Any] | None = None

    # --- writing -------------------------------------------------------------------
    def plan(self) -> dict[str, Any]:
        if self._plan is None:
            from weighted_mtp.data.index import content_sha256

            sha = content_sha256(self.cfg.dataset.train)
            self._plan = compat.plan_of(self.config, self.info.world_size, sha)
        return self._plan

    def meta(self, val: dict[str, float], path: Path, optim_skel: Any, rng_skel: Any) -> dict:
        task = self.task
        return {
            "stage": self.cfg.experiment.stage,
            "step": self.step,
            "epoch": self.sampler.epoch,
            "world_size": self.info.world_size,
            "sharded": self.sharded,
            "value_head_config": None if task.value_head is None else task.value_head.config(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "best_val_loss": None if math.isinf(self.best) else self.best,
            "best_step": self.best_step,
            "val": val,
            "provenance": task.provenance,
            "plan": self.plan(),
            "relative_paths": relative_paths(self.config, path),
            "optimizer": optim_skel,
            "rng": rng_skel,
        }

    def save(self, stem: str, val: dict[str, float]) -> Path:
        """Write checkpoint ``stem`` (collective: every rank calls it).

        A validation metric that is NaN or infinite (the same on every rank) stops the run
        with :class:`TrainingDiverged` before anything is written."""
        info, path = self.info, self.save_dir / stem
        bad = {k: v for k, v in val.items() if isinstance(v, float) and not math.isfinite(v)}
        if bad:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
            raise TrainingDiverged(
                f"validation {shown} at step {self.step}: the model diverged, its weights are "
                "broken, or the validation set gave no scored tokens; so "
                f"{stem} is not written and the checkpoints in {self.save_dir} are unchanged"
            )
        tmp = temp_dir(path)
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.plan()
        dist.barrier(info)
        msd, osd = get_state_dict(self.container, self.optimizer, options=self.options)
        opt_tensors: dict[str, torch.Tensor] = {}
        optim_skel = encode(osd, opt_tensors)
        rank, world = info.rank, info.world_size
        if self.adapted:
            adapter = {k.removeprefix(POLICY): msd.pop(k) for k in list(msd) if _is_adapter(k)}
            if info.is_main:
                lora.write(tmp, self.modules["policy"].peft_config[lora.ADAPTER], adapter)
        mine = [
            write_part(tmp, "weights", msd, rank, world, self.sharded),
            write_part(tmp, "optimizer", opt_tensors, rank, world, self.sharded),
        ]
        if self.sharded:  # every rank hashes its own shards, in parallel
            hashes = {n: file_entry(tmp / n) for n in mine if n}
            (tmp / f".hash-{rank}.json").write_text(json.dumps(hashes))
        dist.barrier(info)
        if info.is_main:
            rng_tensors: dict[str, torch.Tensor] = {}
            rng_skel = encode(rng_state(), rng_tensors)
            write_part(tmp, "rng", rng_tensors, 0, 1, False)
            known = {}
            for h in tmp.glob(".hash-*.json"):
                known |= json.loads(h.read_text())
                h.unlink()
            finish(tmp, path, self.meta(val, path, optim_skel, rng_skel), self.config, known)
        dist.barrier(info)
        return path

    def _link_best(self, src: Path) -> None:
        link_dir(src, self.save_dir / "checkpoint_best")

    def _track_best(self, val: dict[str, float]) -> bool:
        improved = val["val/loss"] < self.best
        if improved:
            self.best, self.best_step = val["val/loss"], self.step
        return improved

    def periodic(self, step: int, val: dict[str, float]) -> None:
        """Interval checkpoint: write it, link it as best if improved, prune old ones."""
        self.step = step
        improved = self._track_best(val)
        path = self.save(f"checkpoint_step{step}", val)
        if self.info.is_main:
            if self.c.save_best and improved:
                self._link_best(path)
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
                self._link_best(final)
        elif self.c.save_best and improved:
            self.save("checkpoint_best", val)
        return final

    # --- resuming ------------------------------------------------------------------
    def resume(self) -> int:
        """Remove stale temp files; restore from ``checkpoint.resume`` (``auto``: the
        newest valid checkpoint in save_dir). Returns the step to continue from."""
        if self.info.is_main:
            clean_stale(self.save_dir)
        dist.barrier(self.info)
        resume = self.c.resume
        if not resume:
            return 0
        if resume == "auto":
            ck, skipped = latest_valid(self.save_dir)
            if skipped and self.info.is_main:
                for s in skipped:
                    print(f"warning: checkpoint.resume=auto skips {s}", file=sys.stderr)
            if ck is None:
                if skipped:
                    raise CheckpointError(
                        f"checkpoint.resume=auto: no valid checkpoint in {self.save_dir} "
                        f"({len(skipped)} invalid, see above); remove them or start fresh "
                        'with checkpoint.resume=""'
                    )
                return 0
            if skipped and self.info.is_main:
                print(f"warning: resuming from {ck.path} instead", file=sys.stderr, flush=True)
        else:
            ck = Checkpoint(resume)
            ck.manifest.verify_all()
        self._restore(ck)
        if self.info.is_main:
            self._reconcile_best()
        dist.barrier(self.info)
        log.info("resumed from %s at step %d", ck.path, self.step)
        return self.step

    def _check(self, ck: Checkpoint) -> list[str]:
        stage = self.cfg.experiment.stage
        if ck.stage != stage:
            raise CheckpointError(
                f"{ck.path} is a {ck.stage} checkpoint; this run is stage {stage}: resume a "
                f"{stage} checkpoint (its checkpoint.save_dir) or start fresh"
            )
        allowed = list(self.c.allow_config_change)
        return compat.check_plan(ck.meta["plan"], self.plan(), allowed, str(ck.path))

    def _restore(self, ck: Checkpoint) -> None:
        changed = self._check(ck)
        if changed and self.info.is_main:
            print(
                f"warning: resuming {ck.path} with changed {', '.join(changed)} "
                "(checkpoint.allow_config_change)",
                file=sys.stderr,
                flush=True,
            )
        msd, osd = get_state_dict(self.container, self.optimizer, options=self.options)
        run_lora = self.modules["policy"].peft_config[lora.ADAPTER] if self.adapted else None
        adapter = compat.check_adapter(ck.adapter(), run_lora, ck.path)
        weights = ck.part("weights")
        saved = set(weights) | {POLICY + k for k in adapter}
        extra = sorted(saved - set(msd))
        missing = sorted(set(msd) - saved)
        if extra or missing:
            raise CheckpointError(
                f"{ck.path}: its modules do not match this run's (another model or stage, or "
                f"models.policy.lora): missing {missing[:5]}, unexpected {extra[:5]}"
            )
        msd = {
            k: _into(adapter[k.removeprefix(POLICY)], t, k, ck.path)
            if _is_adapter(k)
            else weights.into(k, t)
            for k, t in msd.items()
        }
        targets: dict[str, torch.Tensor] = {}
        encode(osd, targets)
        optim = ck.part("optimizer")
        saved_osd = _decode_optim(ck.meta["optimizer"], optim, targets, ck.path)
        set_state_dict(
            self.container,
            self.optimizer,
            model_state_dict=msd,
            optim_state_dict=saved_osd,
            options=self.options,
        )
        meta = ck.meta
        self.scheduler.load_state_dict(meta["scheduler"])
        self.scaler.load_state_dict(meta["scaler"])
        sampler_state = dict(meta["sampler"])
        if changed:  # explicitly allowed: continue at the same position, new plan
            sampler_state["fingerprint"] = self.sampler.state_dict()["fingerprint"]
        self.sampler.load_state_dict(sampler_state)
        set_rng_state(ck.rng())
        self.step = int(meta["step"])
        best = meta["best_val_loss"]
        self.best = math.inf if best is None else best
        self.best_step = int(meta.get("best_step", -1))

    def _reconcile_best(self) -> None:
        """Make ``checkpoint_best`` the recorded best again if a kill cut its update."""
        if not self.c.save_best or self.best_step < 0:
            return
        best = self.save_dir / "checkpoint_best"
        try:
            if Checkpoint(best).step == self.best_step:
                return
        except CheckpointError:
            pass
        for src in (
            self.save_dir / f"checkpoint_step{self.best_step}",
            self.save_dir / "checkpoint_final",
        ):
            try:
                if Checkpoint(src).step == self.best_step:
                    self._link_best(src)
                    log.warning("checkpoint_best re-linked to %s (the recorded best)", src)
                    return
            except CheckpointError:
                continue
        log.warning("checkpoint_best does not match the recorded best step %d", self.best_step)


POLICY = "policy."


def _is_adapter(key: str) -> bool:
    return key.startswith(POLICY) and lora.is_adapter_key(key)


def _into(src: torch.Tensor, target: torch.Tensor, key: str, where: Path) -> torch.Tensor:
    if dtype_kind(src.dtype) != dtype_kind(target.dtype):
        raise CheckpointError(
            f"{where}: adapter tensor {key} is {src.dtype}, this run {target.dtype}; the "
            "file's metadata was changed: use another checkpoint"
        )
    if tuple(src.shape) != tuple(target.shape):
        raise CheckpointError(
            f"{where}: adapter tensor {key} has shape {tuple(src.shape)}, this run "
            f"{tuple(target.shape)} (another model shape)"
        )
    return src


def _decode_optim(skel: Any, optim, targets: dict[str, torch.Tensor], where: Path) -> Any:
    def tensor(key: str) -> torch.Tensor:
        if key not in targets:
            raise CheckpointError(f"{where}: optimizer state {key} has no parameter in this run")
        return optim.into(key, targets[key])

    return decode(skel, tensor)
