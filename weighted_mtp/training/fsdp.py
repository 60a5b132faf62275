"""FSDP2 (``runtime.distributed=fsdp``): sharded policy, one gradient reduction per step.

Units (each its own ``fully_shard``, under a root ``fully_shard(model)`` that owns no
parameters): ``tok_embeddings``, every trunk block, every head block (``layers[-1]`` and
``extra_heads``), ``norm`` and ``output``. Mixed precision: parameters all-gathered in
``runtime.amp_dtype``, gradients reduced in float32 (sharded master weights keep the
loaded dtype); activation checkpointing is the model's own (``run_block``).

Collectives must be issued in the same order on every rank, but the head-by-head MTP loss
calls the head side (head blocks, ``norm``, ``output``) a data-dependent number of times
(chunks of valid tokens; heads without targets are skipped). So:

- trunk units (embeddings + trunk blocks) are all-gathered in forward and in backward,
  once per micro-batch each: the same sequence on every rank;
- head units are all-gathered once at the start of the step (``begin_step``), stay
  unsharded through every forward/backward of the step and are resharded after the
  reduction (their backward prefetch only names other head units, i.e. never gathers);
- gradient sync is off for every backward pass (``set_requires_gradient_sync(False)``):
  FSDP keeps each unit's unsharded gradient, accumulated across heads, chunks and
  micro-batches (in float32 under mixed precision);
- ``reduce_gradients`` turns sync on and runs FSDP's own end-of-backward routine
  (the root's post-backward callback), which calls ``post_backward`` once for every unit:
  one reduce-scatter per unit per optimizer step, SUM (divide factor 1, the loss is
  already normalised by the global token count), zeros for units without gradients on a
  rank so all ranks take part.

Cost of the single reduction: an unsharded float32 gradient of the whole policy per rank
during the step (28 GB for 7B). Validation (``full_weights``) keeps every unit unsharded
(13 GB for 7B in bf16) so that ranks with different numbers of validation batches issue
no collectives at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.experimental import implicit_replication

from weighted_mtp.errors import UserError
from weighted_mtp.models.mtp import MTPTransformer


def trunk_units(model: MTPTransformer) -> list[nn.Module]:
    return [model.tok_embeddings, *model.layers[:-1]]


def head_units(model: MTPTransformer) -> list[nn.Module]:
    return [*model.head_blocks(), model.norm, model.output]


def units(model: MTPTransformer) -> list[FSDPModule]:
    return [*trunk_units(model), *head_units(model)]  # type: ignore[list-item]


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def shard(
    model: MTPTransformer, device: torch.device, world_size: int, amp: torch.dtype | None
) -> None:
    """Apply FSDP2 in place (parameters become DTensor shards on ``device``)."""
    if amp == torch.float16:
        raise UserError(
            "runtime.distributed=fsdp does not support runtime.amp_dtype=float16 (the grad "
            "scaler would check only its own shard): use bfloat16"
        )
    mesh = init_device_mesh(device.type, (world_size,))
    mp = (
        MixedPrecisionPolicy(amp, torch.float32, cast_forward_inputs=False)
        if amp is not None
        else MixedPrecisionPolicy()
    )
    for u in trunk_units(model):
        fully_shard(u, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
    for u in head_units(model):
        fully_shard(u, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    root: FSDPModule = model  # type: ignore[assignment]
    trunk, heads = trunk_units(model), head_units(model)
    for i, u in enumerate(trunk[1:], start=1):  # backward: block i prefetches block i-1
        u.set_modules_to_backward_prefetch([trunk[i - 1]])  # type: ignore[union-attr]
    for u in heads:  # a resident head unit: prefetching it never issues an all-gather
        u.set_modules_to_backward_prefetch([heads[0] if u is not heads[0] else heads[-1]])  # type: ignore[union-attr]
        u.set_reshard_after_backward(False)  # type: ignore[union-attr]
    for u in units(model):
        u.set_gradient_divide_factor(1.0)
        u.set_force_sum_reduction_for_comms(True)
        u.set_reduce_scatter_unused_params(True)
    root.set_requires_gradient_sync(False)
    root.set_is_last_backward(False)
    # lazy init from the root: the loop never calls model.forward, and the first unit to
    # run forward would otherwise become a root of its own
    with torch.no_grad():
        model(torch.zeros(1, 1, dtype=torch.long, device=device))
    _reshard(model)


def _reshard(model: MTPTransformer) -> None:
    for u in units(model):
        u.reshard()


def begin_step(model: MTPTransformer) -> None:
    """All-gather the head units, in the same order on every rank, for the whole step."""
    for u in head_units(model):
        u.unshard()  # type: ignore[operator]


def reduce_gradients(model: MTPTransformer) -> None:
    """Reduce-scatter every unit's accumulated gradient once; reshard the head units."""
    root: FSDPModule = model  # type: ignore[assignment]
    root.set_requires_gradient_sync(True)
    root.set_is_last_backward(True)
    try:
        # FSDP's end-of-backward routine: post_backward() for every parameter group
        root._get_fsdp_state()._root_post_backward_final_callback()
    finally:
        root.set_requires_gradient_sync(False)
        root.set_is_last_backward(False)
    for u in head_units(model):
        u.reshard()  # type: ignore[operator]


@contextlib.contextmanager
def full_weights(model: MTPTransformer) -> Iterator[None]:
    """Every unit unsharded (forward passes issue no collectives), e.g. for validation."""
    for u in units(model):
        u.set_reshard_after_forward(False, recurse=False)
        u.unshard()
    try:
        yield
    finally:
        for u in trunk_units(model):
            u.set_reshard_after_forward(True, recurse=False)  # type: ignore[operator]
        _reshard(model)


def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded (DTensor) and replicated gradients together."""
    params = list(params)
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    norms = []
    if sharded:
        n = torch.nn.utils.get_total_norm(sharded)
        norms.append(n.full_tensor() if isinstance(n, DTensor) else n)
    if plain:
        norms.append(torch.nn.utils.get_total_norm(plain).to(norms[0].device if norms else None))
    if not norms:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(norms))
    with implicit_replication():
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total
