"""Host RAM per node while the policy is loaded, from the loading code on fake tensors.

The checkpoint is memory-mapped: its pages sit in the node's page cache once, whatever
the number of ranks. On top of that each rank holds what the loader materialises on the
host: :func:`~weighted_mtp.models.formats.model_from_state_dict` (a copy when the
configured dtype differs from the file's) and, under ``fsdp`` (which loads onto the CPU
and shards afterwards), the float32 master copy of a trained policy. Under ``ddp`` the
loader moves the weights straight to the GPU, so nothing but the mapping stays on the host.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from weighted_mtp.models.formats import model_from_state_dict, resolve_dtype
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
from weighted_mtp.plan.fake import fake_world
from weighted_mtp.plan.tracker import PlainTracker, peak


def host_ram_per_node(cfg: DictConfig, args: ModelArgs, machine) -> int:  # noqa: ANN001
    """Bytes of host RAM one node needs at load (page cache + every local rank's copies)."""
    with fake_world(0, 1):
        with torch.device("meta"):
            shapes = MTPTransformer(args).state_dict()
        file_dtype = resolve_dtype(machine.checkpoint_dtype)
        mapped = {k: torch.empty(v.shape, dtype=file_dtype) for k, v in shapes.items()}
        checkpoint = sum(t.numel() * t.element_size() for t in mapped.values())
        per_rank = 0
        if cfg.runtime.distributed == "fsdp" and machine.gpus > 1:
            tracker = PlainTracker(args.vocab_size)
            tracker.track_external(*mapped.values())
            with tracker:
                model = model_from_state_dict(mapped, args, cfg.models.policy.dtype, "cpu")
                if cfg.experiment.stage != "critic":  # a trained policy: fp32 master weights
                    model.float()
            per_rank = peak(tracker)[0] - checkpoint
    return checkpoint + min(machine.gpus, machine.gpus_per_node) * per_rank
