"""AdamW and the learning-rate schedule (linear warmup, then cosine / linear / constant)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.distributed.tensor import DTensor

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Linear warmup over ``warmup`` steps from 1/warmup to 1, then decay to ``min_ratio``
    at the last step: cosine, linear, or none (constant).
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule == "linear":
        decay = 1 - progress
    else:
        raise ValueError(f"lr_scheduler must be one of {SCHEDULES}, got {schedule!r}")
    return min_ratio + (1 - min_ratio) * decay


def param_groups(params: Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW groups of the trainable ``params``: weight decay on matrices only (not norms,
    biases); sharded (DTensor) and plain parameters (e.g. a replicated value head next to
    an FSDP policy) in separate groups, since AdamW's foreach and fused kernels take one
    tensor type per group."""
    params = [p for p in params if p.requires_grad]
    groups = []
    for sharded in (True, False):
        same = [p for p in params if isinstance(p, DTensor) == sharded]
        for decay in (True, False):
            ps = [p for p in same if (p.ndim >= 2) == decay]
            if ps:
                groups.append({"params": ps, "weight_decay": weight_decay if decay else 0.0})
    return groups


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    device: torch.device | None = None,
    **kwargs: Any,
) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.95) over :func:`param_groups`; the fused kernel on CUDA.
    ``kwargs`` go to AdamW (e.g. ``foreach=True``)."""
    if device is not None and device.type == "cuda":
        kwargs.setdefault("fused", True)
    return torch.optim.AdamW(param_groups(params, weight_decay), lr=lr, betas=(0.9, 0.95), **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total: int,
    warmup_ratio: float,
    schedule: str,
    min_ratio: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(round(warmup_ratio * total))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, schedule, min_ratio)
    )
