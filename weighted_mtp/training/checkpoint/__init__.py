"""Checkpoints: safetensors + JSON/YAML directories with a sha256 manifest; no pickle.

One checkpoint is a directory in ``checkpoint.save_dir``:

- ``checkpoint_step{N}/`` every ``save_checkpoint_every`` epochs (the newest
  ``save_total_limit`` are kept), ``checkpoint_best/`` (lowest validation loss, hard links
  of the checkpoint that reached it), ``checkpoint_final/`` (end of training);
- files: ``weights.safetensors`` (trainable modules), ``optimizer.safetensors`` (AdamW
  state tensors), ``rng.safetensors`` (torch / numpy / CUDA RNG states),
  ``state.json`` (step, epoch, stage, scheduler, grad scaler, sampler position, best,
  provenance, the data plan, the optimizer's param groups), ``config.yaml`` (the resolved
  config, paths absolute) and ``manifest.json`` (size + sha256 of every other file,
  written last). Under fsdp, ``weights`` and ``optimizer`` are one file per rank
  (``weights-00000-of-00004.safetensors``, ...): each rank writes its own shards.

See :mod:`.files` (atomic writes, manifest), :mod:`.tensors` (state <-> safetensors),
:mod:`.reader` (verified reads), :mod:`.manager` (the Checkpointer), :mod:`.save_dir`
(which checkpoints a save_dir holds, retention), :mod:`.rng`, :mod:`.compat` (resume
safety), :mod:`.migrate` (old pickle ``.pt`` -> this format).
"""

from weighted_mtp.training.checkpoint.files import CheckpointError, Manifest
from weighted_mtp.training.checkpoint.manager import Checkpointer
from weighted_mtp.training.checkpoint.reader import (
    Checkpoint,
    file_sha256,
    is_checkpoint,
    load,
    load_policy,
    load_value_head,
)
from weighted_mtp.training.checkpoint.rng import rng_state, set_rng_state
from weighted_mtp.training.checkpoint.save_dir import latest_valid, periodic_checkpoints, prune

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Checkpointer",
    "Manifest",
    "file_sha256",
    "is_checkpoint",
    "latest_valid",
    "load",
    "load_policy",
    "load_value_head",
    "periodic_checkpoints",
    "prune",
    "rng_state",
    "set_rng_state",
]
