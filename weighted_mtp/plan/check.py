"""The plan against reality: the same rank, simulated on fake tensors and run for real.

:func:`measure` runs :func:`~weighted_mtp.plan.simulate.run_rank` on real CPU tensors in
``world_size`` processes joined by gloo (torch.multiprocessing, as torchrun would), with
the very trackers the plan uses, and also reads each process's peak RSS. The tracker's
figure is the comparable one: it counts the same live tensor storages the plan counts,
while RSS adds the CPU allocator's caching and fragmentation, torch's thread pools and
gloo's buffers, none of which exist (or are the same) on a GPU.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf

from weighted_mtp.distributed import DistInfo
from weighted_mtp.models.mtp import ModelArgs
from weighted_mtp.plan.simulate import run_rank, simulate_rank


@dataclass
class Comparison:
    stage: str
    distributed: str
    planned: list[int]  # peak bytes per rank (fake tensors)
    measured: list[int]  # peak bytes per rank (same tracker, real tensors)
    rss_delta: list[int]  # peak RSS minus RSS before the model was built, per rank

    @property
    def ratios(self) -> list[float]:
        return [p / m for p, m in zip(self.planned, self.measured, strict=True)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _worker(rank: int, world: int, port: int, cfg: dict, args: dict, ref: Any, out: str) -> None:
    torch.set_num_threads(1)
    before = _rss_bytes()
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)
    try:
        result = run_rank(
            OmegaConf.create(cfg),
            ModelArgs.from_dict(args),
            ref,
            DistInfo(rank, world, rank),
            torch.device("cpu"),
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(out, f"{rank}.json").write_text(
        json.dumps({"peak": result.peak_bytes, "rss_delta": peak_rss - before})
    )


def measure(
    cfg: DictConfig, args: ModelArgs, ref_config: dict | None, world_size: int
) -> list[dict[str, int]]:
    """Run every rank for real (``world_size`` processes, gloo); per-rank peaks."""
    with tempfile.TemporaryDirectory() as tmp:
        payload = (OmegaConf.to_container(cfg, resolve=True), args.to_dict(), ref_config, tmp)
        mp.start_processes(
            _worker,
            args=(world_size, _free_port(), *payload),
            nprocs=world_size,
            start_method="spawn",
        )
        return [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(world_size)]


def compare(
    cfg: DictConfig, args: ModelArgs, ref_config: dict | None, world_size: int
) -> Comparison:
    """Plan rank 0 on fake tensors (the plan's rank: FSDP gives it the largest shards),
    then run every rank for real; planned vs measured per rank."""
    planned = [simulate_rank(cfg, args, ref_config, world_size).peak_bytes] * world_size
    real = measure(cfg, args, ref_config, world_size)
    return Comparison(
        cfg.experiment.stage,
        cfg.runtime.distributed,
        planned,
        [r["peak"] for r in real],
        [r["rss_delta"] for r in real],
    )


def as_dict(c: Comparison) -> dict[str, Any]:
    return asdict(c) | {"ratios": c.ratios}
