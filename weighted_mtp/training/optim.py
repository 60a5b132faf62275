"""AdamW and the learning-rate schedule (linear warmup, then cosine / linear / constant)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

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


def build_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW; weight decay applies to matrices only (not norms, biases)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))


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
