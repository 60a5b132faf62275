"""Baseline: plain MTP on correct solutions, every token weight 1.

The weighting comes from ``weighting._target_`` (UniformWeighting in conf/stage/baseline.yaml).
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from weighted_mtp.training.loop import train
from weighted_mtp.training.task import Task


def build_task(cfg: DictConfig, model, tokenizer, device) -> Task:
    return Task(
        train_policy=True,
        weighting=instantiate(cfg.weighting),
        policy_records=cfg.training.policy_records,
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    return train(cfg, build_task)
