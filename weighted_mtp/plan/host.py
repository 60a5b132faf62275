"""Host RAM per node while the models are loaded.

The loaders memory-map the checkpoints and copy each rank's rows straight to its GPU
(:mod:`weighted_mtp.models.reader`: ``assign_weights`` for a replica, ``load_weights``
for FSDP shards), so what a node holds is the page cache of the mapped files, once,
whatever the number of ranks: the policy checkpoint in its file dtype, plus rho1's
reference (its weights in ``models.reference.dtype``).
"""

from __future__ import annotations

import math

import torch

from weighted_mtp.models.mtp import ModelArgs
from weighted_mtp.plan.simulate import ShapeReader


def host_ram_per_node(args: ModelArgs, checkpoint_dtype: torch.dtype, reference: int = 0) -> int:
    """Bytes of page cache one node needs: the policy file (+ ``reference`` bytes)."""
    reader = ShapeReader(args, checkpoint_dtype)
    itemsize = torch.empty((), dtype=checkpoint_dtype, device="meta").element_size()
    return sum(math.prod(shape) for shape, _ in reader.shapes.values()) * itemsize + reference
