"""torch.distributed for the loop: process-group setup and data-parallel reductions.

Launchers: ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or a Slurm task
(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR/MASTER_PORT from the job's
setup lines, see conf/hydra/launcher/slurm_a100.yaml). Backend: nccl for CUDA tensors
(with gloo for host tensors), gloo on CPU.

Data parallelism (``runtime.distributed=ddp``) keeps a full replica per rank and sums
gradients once per optimizer step, in buckets, after every micro-batch of the step has
run. The loss is normalised by the *global* token count (all ranks, all micro-batches),
so the summed gradient equals the single-process gradient of the same global batch.
(torch's DistributedDataParallel wrapper is not used: the head-by-head MTP loss runs
several backward passes per micro-batch, and DDP's reducer fires per backward pass.)

``runtime.distributed=fsdp`` shards the policy with FSDP2 instead (see
:mod:`weighted_mtp.training.fsdp`: every unit's gradient reduce-scattered once per
micro-batch, during its backward); only parameters outside it (a value head) are still
summed here. ``runtime.distributed=hsdp`` is FSDP2 over a 2-D mesh: the policy sharded
over the ranks of a node and replicated across nodes (a sharded gradient reduce-scattered
within the node, then all-reduced across nodes). :mod:`weighted_mtp.training.parallel`
chooses between them.

The reductions here (step totals, rho1's step-wide selection, a value head's gradient,
validation sums) always run over every rank (the default group), whatever the mode: every
rank is a data-parallel peer under ddp, fsdp and hsdp alike.

Nodes (:func:`node_count`): torchrun sets LOCAL_WORLD_SIZE (its ``--nproc-per-node``), so
nodes = WORLD_SIZE / LOCAL_WORLD_SIZE; a Slurm task has SLURM_NNODES (and
SLURM_NTASKS_PER_NODE). Both number ranks node by node (torchrun: node_rank x
nproc_per_node + local_rank; Slurm: the default block distribution), so the ranks of a
node are consecutive: hsdp's shard groups.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

BUCKET_BYTES = 64 << 20


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # nodes the ranks run on, from the launcher's environment (None: not known)
    nodes: int | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's or Slurm's environment."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_WORLD_SIZE", 0))
        nodes = world // local if local > 0 and world % local == 0 else None
        return DistInfo(int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)), nodes)
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return DistInfo(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            _slurm_nodes(env),
        )
    return DistInfo()


def _slurm_nodes(env: Mapping[str, str]) -> int | None:
    """SLURM_NNODES (SLURM_JOB_NUM_NODES), else SLURM_NTASKS / SLURM_NTASKS_PER_NODE."""
    for key in ("SLURM_NNODES", "SLURM_JOB_NUM_NODES"):
        if env.get(key, "").isdigit():
            return int(env[key])
    per_node, tasks = env.get("SLURM_NTASKS_PER_NODE", ""), env.get("SLURM_NTASKS", "")
    known = per_node.isdigit() and tasks.isdigit() and int(per_node) > 0
    if known and int(tasks) % int(per_node) == 0:
        return int(tasks) // int(per_node)
    return None


def node_count(info: DistInfo, configured: int | None = None) -> int:
    """The run's nodes: ``configured`` (``runtime.nodes``) when set, else what the launcher's
    environment told :func:`env_info`; 1 when nothing tells (one process, or a DistInfo
    made by hand, as the memory plan's: one node). Validation refuses hsdp over several
    ranks whose nodes nothing tells (:func:`weighted_mtp.config.rules.nodes`)."""
    if configured is not None:
        return int(configured)
    return info.nodes if info.enabled and info.nodes is not None else 1


def init(device: torch.device) -> DistInfo:
    """Join the process group when launched with several processes (idempotent)."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        # on CUDA, nccl for device tensors and gloo for the few host-side reductions
        # (step totals are summed on the CPU): nccl alone refuses CPU tensors
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    return info


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """One GPU per process: cuda -> cuda:LOCAL_RANK."""
    if device.type == "cuda" and device.index is None and info.enabled:
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return device


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``t`` over ranks (a copy; ``t`` itself when not distributed)."""
    if not info.enabled:
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_gather_rows(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's ``t`` ([rows, ...], row counts may differ), in rank order."""
    if not info.enabled:
        return [t]
    counts = [torch.zeros(1, dtype=torch.int64, device=t.device) for _ in range(info.world_size)]
    dist.all_gather(counts, torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device))
    n = [int(c) for c in counts]
    padded = t.new_zeros((max(n), *t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(out, padded)
    return [o[:k] for o, k in zip(out, n, strict=True)]


def sum_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum ``.grad`` over ranks in flat buckets: one reduction pass per optimizer step."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= BUCKET_BYTES:
            _reduce_bucket(bucket)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket)


def _reduce_bucket(bucket: list[torch.Tensor]) -> None:
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in bucket:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        offset = 0
        for g in group:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
