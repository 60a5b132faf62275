"""FSDP2 (``runtime.distributed=fsdp``): the policy sharded over ranks, gradients
reduce-scattered as backward goes.

Units (each its own ``fully_shard``, under a root ``fully_shard(model)`` that owns no
parameters): ``tok_embeddings``, every trunk block, every head block (``layers[-1]`` and
``extra_heads``), ``norm`` and ``output``. Mixed precision: parameters all-gathered in
``runtime.amp_dtype``, gradients reduce-scattered in float32 (SUM: the loss is already
normalised by the global token count) into float32 sharded gradients that accumulate
over micro-batches in each parameter's ``.grad``. Activation checkpointing is the
model's own (``run_block``).

Collectives, per micro-batch, the same on every rank (FSDP requires one order):

- trunk units (embeddings, trunk blocks): all-gathered in forward (resharded after it)
  and again in backward; each unit's gradient is reduce-scattered by FSDP's
  post-backward hook right after its backward;
- head block k: the same, within head pass k of the head-by-head loss
  (:func:`~weighted_mtp.training.losses.mtp_loss` runs every head, with or without
  targets, so every rank makes the same n head passes);
- the shared ``norm`` and ``output``, which each head pass (``norm``) and each logits
  chunk (``output``) runs again: all-gathered at their first use and kept unsharded
  until the micro-batch ends (:func:`micro_batch` reshards them); their gradient sync is
  off, so FSDP accumulates their unsharded gradient over heads and chunks (float32),
  until the loss announces the last backward pass through each
  (:func:`sync_next_backward`), which reduce-scatters it: once per micro-batch. The
  number of chunks per head may differ between ranks: while ``output`` is resident no
  chunk issues a collective, and every head has at least one (possibly empty) chunk, so
  the last backward through ``output`` exists on every rank.

So a step of m micro-batches issues m reduce-scatters per unit, and no rank holds more
than one unit's unsharded gradient at a time, plus ``norm``'s and ``output``'s for the
micro-batch. Why ``norm``/``output`` are resident instead of a full FSDP forward/backward
per head pass and chunk: that would all-gather and reduce-scatter the vocabulary
projection once per chunk (n x chunks times per micro-batch; at 7B a 131M-parameter
matrix, 0.5 GB of float32 gradient per reduce-scatter) and would need the chunk count
padded to the same number on every rank. The cost of residency (7B: dim 4096, vocab
32000): ``output`` + ``norm`` unsharded in bf16 (0.26 GB) and their unsharded float32
gradient (0.52 GB) during the micro-batch.

Validation (:func:`resharded_after`) runs the same passes without backward: every rank
must run the same number of batches (the validator pads), ``norm``/``output`` stay
gathered until validation ends.

HSDP (``runtime.distributed=hsdp``, :func:`build_mesh`): the same units over a 2-D mesh
``(replicate, shard)`` = ``(nodes, ranks per node)``: each unit sharded over the ranks of
its node and replicated across nodes. Per unit and micro-batch a gradient is
reduce-scattered within the node, then its shard all-reduced across nodes (FSDP2 does
both where the above says "reduce-scattered"; SUM, divide factor 1, as above);
all-gathers stay within the node. Rank r sits at ``(r // per_node, r % per_node)``:
the launchers number ranks node by node, so a shard group is one node's ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.experimental import implicit_replication

from weighted_mtp.errors import UserError
from weighted_mtp.models.mtp import MTPTransformer


def trunk_units(model: MTPTransformer) -> list[nn.Module]:
    return [model.tok_embeddings, *model.layers[:-1]]


def shared_units(model: MTPTransformer) -> list[nn.Module]:
    """The units every head pass runs: resident for a micro-batch (``output`` itself when
    a LoRA layer wraps it: peft's ``base_layer``)."""
    return [model.norm, getattr(model.output, "base_layer", model.output)]


def units(model: MTPTransformer) -> list[FSDPModule]:
    return [*trunk_units(model), *model.head_blocks(), *shared_units(model)]  # type: ignore[list-item]


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def is_dtensor(t: torch.Tensor) -> bool:
    """A sharded (FSDP) parameter or gradient."""
    return isinstance(t, DTensor)


def check_nodes(world_size: int, nodes: int) -> None:
    """HSDP's ``nodes``: >= 1 and dividing the world size (UserError otherwise)."""
    if nodes < 1 or world_size % nodes:
        raise UserError(
            f"runtime.nodes={nodes}: runtime.distributed=hsdp needs the {world_size} ranks "
            f"split evenly over >= 1 nodes (world size % nodes == 0). Fix: --override "
            "runtime.nodes=<the number of nodes>, or launch the same number of processes "
            "on every node"
        )


def build_mesh(device: torch.device, world_size: int, nodes: int | None = None) -> DeviceMesh:
    """FSDP's mesh: 1-D over every rank (``nodes`` None: fsdp), or HSDP's 2-D
    ``(replicate, shard)`` = ``(nodes, world_size // nodes)``."""
    if nodes is None:
        return init_device_mesh(device.type, (world_size,))
    check_nodes(world_size, nodes)
    return init_device_mesh(
        device.type, (nodes, world_size // nodes), mesh_dim_names=("replicate", "shard")
    )


def shard(
    model: MTPTransformer,
    device: torch.device,
    world_size: int,
    amp: torch.dtype | None,
    nodes: int | None = None,
) -> None:
    """Apply FSDP2 in place (parameters become DTensor shards on ``device``); ``nodes``
    set: HSDP, sharded within each node and replicated across nodes (:func:`build_mesh`).

    ``model`` may live on the meta device: then its shards stay on the meta device until
    the caller materialises them (``to_empty`` + loading) and calls :func:`lazy_init`;
    otherwise this moves the shards to ``device`` and initialises FSDP.
    """
    if amp == torch.float16:
        mode = "fsdp" if nodes is None else "hsdp"
        raise UserError(
            f"runtime.distributed={mode} does not support runtime.amp_dtype=float16 (the grad "
            "scaler would check only its own shard): use bfloat16"
        )
    mesh = build_mesh(device, world_size, nodes)
    mp = (
        MixedPrecisionPolicy(amp, torch.float32, cast_forward_inputs=False)
        if amp is not None
        else MixedPrecisionPolicy()
    )
    for u in [*trunk_units(model), *model.head_blocks()]:
        fully_shard(u, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
    for u in shared_units(model):
        fully_shard(u, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
        u.set_reshard_after_backward(False)  # type: ignore[operator]
        u.set_requires_gradient_sync(False, recurse=False)  # type: ignore[operator]
    fully_shard(model, mesh=mesh, mp_policy=mp)
    trunk = trunk_units(model)
    for i, u in enumerate(units(model)):
        u.set_gradient_divide_factor(1.0)
        u.set_force_sum_reduction_for_comms(True)
        # backward: trunk block i prefetches block i-1; the others name a resident unit
        # (``norm``), since an empty list would mean FSDP's order-based default prefetch
        prefetch = trunk[i - 1] if 0 < i < len(trunk) else model.norm
        u.set_modules_to_backward_prefetch([prefetch])  # type: ignore[list-item]
    if not any(p.is_meta for p in model.parameters()):
        lazy_init(model, device)


@torch.no_grad()
def lazy_init(model: MTPTransformer, device: torch.device) -> None:
    """Initialise FSDP from the root (one no-grad forward of one token), then reshard.

    The loop never calls ``model.forward``; without this, the first unit to run forward
    would become a root of its own.
    """
    with torch.no_grad():
        model(torch.zeros(1, 1, dtype=torch.long, device=device))
    for u in units(model):
        u.reshard()


@contextlib.contextmanager
def micro_batch(model: MTPTransformer) -> Iterator[None]:
    """One micro-batch's forward/backward: ``norm``/``output`` accumulate their gradient
    unreduced until :func:`sync_next_backward`, and are resharded at the end."""
    for u in shared_units(model):
        u.set_requires_gradient_sync(False, recurse=False)  # type: ignore[operator]
    try:
        yield
    finally:
        for u in shared_units(model):
            u.set_requires_gradient_sync(False, recurse=False)  # type: ignore[operator]
            u.reshard()  # type: ignore[operator]


def sync_next_backward(module: nn.Module) -> None:
    """The next backward pass through ``module`` (a shared unit) reduce-scatters its
    accumulated gradient."""
    if is_sharded(module):
        module.set_requires_gradient_sync(True, recurse=False)  # type: ignore[operator]


@contextlib.contextmanager
def resharded_after(model: MTPTransformer) -> Iterator[None]:
    """Forward-only passes (validation); every unit resharded afterwards."""
    try:
        yield
    finally:
        for u in units(model):
            u.reshard()


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
