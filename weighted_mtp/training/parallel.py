"""Data parallelism as one object the training step calls: ``Replicated``, ``Sharded`` or
``HybridSharded``.

``runtime.distributed`` picks it (:func:`build`): ``ddp`` (and any single process) is
:class:`Replicated` - a full replica per rank, gradients summed over ranks once per
optimizer step; ``fsdp`` with several processes is :class:`Sharded` - the policy sharded
with FSDP2 over every rank (:mod:`weighted_mtp.training.fsdp`); ``hsdp`` is
:class:`HybridSharded` - FSDP2 over a 2-D mesh, sharded within a node and replicated
across ``runtime.nodes`` nodes. All expose the same hooks, called by
:func:`weighted_mtp.training.step.optimizer_step` in this order::

    load(model, reader)                  # once: a meta-device policy, materialised (sharded)
      or prepare(model)                  # (an already materialised one)
    with micro_batch(model):             # per micro-batch of a step: forward/backward
        ... before_last_backward(unit) ...  # from the MTP loss (output, norm)
    reduce_gradients(model, params)      # finish the gradient reduction
    clip_grad_norm_(params, max_norm)
    with validation(model): ...          # validation forward passes
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from weighted_mtp import distributed as dist
from weighted_mtp.models.mtp import MTPTransformer
from weighted_mtp.models.reader import CheckpointReader, assign_weights, load_weights
from weighted_mtp.training import fsdp


class Replicated:
    """A full replica per rank (or a single process); gradients summed once per step."""

    sharded = False

    def __init__(self, info: dist.DistInfo, device: torch.device, amp: torch.dtype | None):
        self.info, self.device, self.amp = info, device, amp

    def load(self, model: MTPTransformer, reader: CheckpointReader) -> None:
        """Materialise ``model`` (built on the meta device) from ``reader``, ready for
        training: here the full weights on ``device``."""
        assign_weights(model, reader, self.device)

    def prepare(self, model: MTPTransformer) -> None:
        """Make an already materialised ``model`` (on ``device``) ready for training."""

    @contextlib.contextmanager
    def micro_batch(self, model: MTPTransformer) -> Iterator[None]:
        """Around the forward/backward of one micro-batch."""
        yield

    def before_last_backward(self, module: nn.Module) -> None:
        """Called by the MTP loss right before the micro-batch's last backward pass
        through a shared head unit (``output``, then ``norm``)."""

    def reduce_gradients(self, model: MTPTransformer, params: list[nn.Parameter]) -> None:
        """After the last micro-batch: every rank holds its gradients of the global batch."""
        dist.sum_gradients([p for p in params if not fsdp.is_dtensor(p)], self.info)

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def validation(self, model: MTPTransformer) -> contextlib.AbstractContextManager:
        """Around validation's forward passes (no gradients)."""
        return contextlib.nullcontext()


class Sharded(Replicated):
    """FSDP2: the policy sharded over ranks, its gradients reduce-scattered during each
    micro-batch's backward (see :mod:`weighted_mtp.training.fsdp`); parameters outside it
    (a value head) are replicated and summed as in :class:`Replicated`."""

    sharded = True
    nodes: int | None = None  # HybridSharded: the replicas (None: one mesh over every rank)

    def load(self, model: MTPTransformer, reader: CheckpointReader) -> None:
        """Shard the meta-device model, then read only this rank's rows of every
        parameter from the memory-mapped checkpoint (no rank holds a full copy)."""
        self.prepare(model)
        model.to_empty(device=self.device)
        load_weights(model, reader)
        fsdp.lazy_init(model, self.device)

    def prepare(self, model: MTPTransformer) -> None:
        fsdp.shard(model, self.device, self.info.world_size, self.amp, self.nodes)

    def micro_batch(self, model: MTPTransformer) -> contextlib.AbstractContextManager:
        return fsdp.micro_batch(model)

    def before_last_backward(self, module: nn.Module) -> None:
        fsdp.sync_next_backward(module)

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        return fsdp.clip_grad_norm_(params, max_norm)

    def validation(self, model: MTPTransformer) -> contextlib.AbstractContextManager:
        return fsdp.resharded_after(model)


class HybridSharded(Sharded):
    """HSDP: :class:`Sharded` over a 2-D mesh ``(replicate, shard)`` = (nodes, ranks per
    node): the policy sharded within a node, replicated across nodes (FSDP2 reduce-scatters
    a gradient within the node, then all-reduces the shard across nodes). ``nodes`` None:
    from the launcher's environment (:func:`weighted_mtp.distributed.node_count`)."""

    def __init__(
        self,
        info: dist.DistInfo,
        device: torch.device,
        amp: torch.dtype | None,
        nodes: int | None = None,
    ):
        super().__init__(info, device, amp)
        self.nodes = dist.node_count(info, nodes)
        fsdp.check_nodes(info.world_size, self.nodes)


#: ``runtime.distributed`` -> its parallelism over several processes (one process: Replicated)
PARALLELISMS: dict[str, type[Replicated]] = {
    "ddp": Replicated,
    "fsdp": Sharded,
    "hsdp": HybridSharded,
}


def build(
    distributed: str,
    info: dist.DistInfo,
    device: torch.device,
    amp: torch.dtype | None,
    nodes: int | None = None,
) -> Replicated:
    """The parallelism for ``runtime.distributed`` (``fsdp``/``hsdp`` shard only with >1
    process); ``nodes`` is ``runtime.nodes`` (hsdp's replicas; None: from the environment)."""
    if not info.enabled:
        return Replicated(info, device, amp)
    if distributed == "hsdp":
        return HybridSharded(info, device, amp, nodes)
    return PARALLELISMS[distributed](info, device, amp)
