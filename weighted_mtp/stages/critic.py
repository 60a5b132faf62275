"""Critic: pretrain a value head V(s_t) on balanced correct/incorrect solutions.

The policy is frozen (its trunk runs without gradients); the value head regresses the
outcome reward at every state (TD(lambda) with ``training.gamma``/``training.lam``), with
``training.loss_type`` mse | huber | mae. ``training.frozen_trunk_cache_mb`` keeps the frozen
trunk's outputs in host memory, so later epochs and validations skip the policy's forward.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from weighted_mtp.models.value_head import ValueHead
from weighted_mtp.training.loop import train
from weighted_mtp.training.task import Task
from weighted_mtp.training.trunk_cache import TrunkCache


def build_task(cfg: DictConfig, model, tokenizer, device) -> Task:
    vh = cfg.models.value_head
    head = ValueHead(model.args.dim, vh.type, vh.hidden_dim).to(device)
    return Task(
        train_policy=False,
        value_head=head,
        value_coef=1.0,
        value_loss_type=cfg.training.loss_type,
        gamma=cfg.training.gamma,
        lam=cfg.training.lam,
        trunk_cache=TrunkCache(mb) if (mb := cfg.training.frozen_trunk_cache_mb) else None,
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    return train(cfg, build_task)
