"""Host RAM per node while the models are loaded.

The loaders memory-map the checkpoints and copy each rank's rows straight to its GPU
(:mod:`weighted_mtp.models.reader`: ``assign_weights`` for a replica, ``load_weights``
for FSDP shards), so what a node holds is the page cache of the mapped files, once,
whatever the number of ranks: the policy checkpoint in its file dtype, plus rho1's
reference (Hugging Face safetensors in ``models.reference.dtype``).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from weighted_mtp.models.formats import resolve_dtype
from weighted_mtp.models.mtp import ModelArgs
from weighted_mtp.plan.simulate import ShapeReader


def host_ram_per_node(
    cfg: DictConfig, args: ModelArgs, checkpoint_dtype: str, reference_params: int = 0
) -> int:
    """Bytes of page cache one node needs to load the run's checkpoints."""
    reader = ShapeReader(args, resolve_dtype(checkpoint_dtype))
    itemsize = torch.empty((), dtype=reader.dtype).element_size()
    policy = sum(_numel(shape) for shape, _ in reader.shapes.values()) * itemsize
    ref_item = torch.empty((), dtype=resolve_dtype(cfg.models.reference.dtype)).element_size()
    return policy + reference_params * ref_item


def _numel(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
