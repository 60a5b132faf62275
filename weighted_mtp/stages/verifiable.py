"""Verifiable: weight each token by clip(exp(TD error / beta)) from the critic's value head.

The value head starts from ``experiment.critic_checkpoint`` (a critic checkpoint) and keeps
learning: loss = weighted MTP CE + value_coef x value loss. Sampling is balanced and
follows the curriculum of ``data_sampling``.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from weighted_mtp.training import checkpoint as ckpt
from weighted_mtp.training.loop import train
from weighted_mtp.training.task import Task


def build_task(cfg: DictConfig, model, tokenizer, device) -> Task:
    path = cfg.experiment.critic_checkpoint
    head = ckpt.load_value_head(path).to(device)
    if head.dim != model.args.dim:
        from weighted_mtp.errors import UserError

        raise UserError(
            f"experiment.critic_checkpoint={path}: its value head expects dim {head.dim}, "
            f"the policy has dim {model.args.dim}; use a critic trained on this policy"
        )
    return Task(
        train_policy=True,
        weighting=instantiate(cfg.weighting),
        policy_records=cfg.training.policy_records,
        value_head=head,
        value_coef=cfg.training.value_coef,
        value_loss_type=cfg.training.loss_type,
        gamma=cfg.training.gamma,
        lam=cfg.training.lam,
        provenance={"critic_checkpoint": str(path), "critic_sha256": ckpt.file_sha256(path)},
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    return train(cfg, build_task)
