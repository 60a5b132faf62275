"""Resume safety: a resumed run must keep the data plan and the schedule it started with,
and its LoRA adapter settings.

:data:`LOCKED` fields decide which records are drawn, in which order, and the step and
learning-rate schedule. Resuming with any of them changed (or on another number of
ranks, or on a training file with other content) is refused, naming each field with its
old and new value, unless ``checkpoint.allow_config_change`` lists it; the run then
continues at the checkpoint's position under the new values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from weighted_mtp.training.checkpoint.files import CheckpointError

LOCKED = (
    "training.n_epochs",
    "training.batch_size",
    "training.gradient_accumulation_steps",
    "training.learning_rate",
    "training.lr_scheduler",
    "training.warmup_ratio",
    "training.min_lr_ratio",
    "data_sampling._target_",
    "data_sampling.n_samples",
    "data_sampling.correct_ratio",
    "data_sampling.balance_correct",
    "data_sampling.seed",
    "data_sampling.curriculum_learning",
    "data_sampling.difficulty_bins",
    "data_sampling.curriculum_schedule",
    "runtime.seed",
    "dataset.train",  # its path and its content (sha256)
)
WORLD_SIZE = "world_size"  # not a config field: the number of ranks
ALLOWABLE = (*LOCKED, WORLD_SIZE)


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def plan_of(cfg: dict[str, Any], world_size: int, train_sha256: str | None) -> dict[str, Any]:
    """The values of every locked field (``dataset.train``: path and content hash)."""
    plan = {k: _get(cfg, k) for k in LOCKED}
    plan["dataset.train"] = f"{plan['dataset.train']} (sha256 {str(train_sha256)[:12]})"
    plan[WORLD_SIZE] = world_size
    return plan


def check_plan(
    saved: dict[str, Any], current: dict[str, Any], allowed: list[str], where: str
) -> list[str]:
    """Raise CheckpointError naming every changed field not in ``allowed``; the allowed
    changes are returned (for a warning)."""
    changed = [k for k in ALLOWABLE if k in saved and saved[k] != current.get(k)]
    refused = [k for k in changed if k not in allowed]
    if refused:
        lines = [f"cannot resume from {where}: the data plan or schedule would change:"]
        lines += [f"  - {k}: {saved[k]!r} -> {current.get(k)!r}" for k in refused]
        lines.append(
            '  Fix: resume with the checkpoint\'s values, start a new run (checkpoint.resume="" '
            "and another checkpoint.save_dir), or accept the change explicitly: "
            f"--override 'checkpoint.allow_config_change=[{','.join(refused)}]'"
        )
        raise CheckpointError("\n".join(lines))
    return changed


def check_adapter(
    saved: tuple[Any, dict[str, torch.Tensor]] | None, run_config: Any | None, where: Path
) -> dict[str, torch.Tensor]:
    """The checkpoint's LoRA adapter tensors (``saved``: :meth:`Checkpoint.adapter`) by
    parameter name ({} without LoRA), after checking that its adapter settings are this
    run's (``run_config``: the run's peft ``LoraConfig``, None without LoRA)."""
    from weighted_mtp.models import lora

    if saved is None:
        if run_config is not None:
            raise CheckpointError(
                f"{where} has no LoRA adapter (a full fine-tuning checkpoint): resume it "
                "with models.policy.lora.enabled=false, or start fresh"
            )
        return {}
    config, tensors = saved
    if run_config is None:
        raise CheckpointError(
            f"{where} holds LoRA adapters: resume it with models.policy.lora.enabled=true "
            "and its settings (adapter_config.json), or start fresh"
        )
    changed = lora.same_settings(config, run_config)
    if changed:
        raise CheckpointError(
            f"cannot resume from {where}: models.policy.lora would change "
            f"({'; '.join(changed)}); resume with the checkpoint's adapter settings"
        )
    return {lora.param_name(k): v for k, v in tensors.items()}
