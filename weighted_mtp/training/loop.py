"""The one training loop, shared by every stage.

``train(cfg, build_task)`` loads the policy, tokenizer and data, asks the stage for its
:class:`~weighted_mtp.training.task.Task`, then runs optimizer steps: fetch
``gradient_accumulation_steps`` micro-batches, normalise token-exactly over all of them,
forward/backward each, clip, step, schedule; log every ``log_interval`` steps; validate
and checkpoint every ``save_checkpoint_every`` epochs; resume from ``checkpoint.resume``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from weighted_mtp.data.collate import Collator
from weighted_mtp.data.dataset import ProcessedDataset
from weighted_mtp.models.formats import load_model
from weighted_mtp.models.mtp import MTPTransformer
from weighted_mtp.models.tokenizer import Tokenizer, load_tokenizer
from weighted_mtp.training import checkpoint as ckpt
from weighted_mtp.training.evaluate import Validator
from weighted_mtp.training.optim import build_optimizer, build_scheduler
from weighted_mtp.training.runtime import amp_dtype, autocast, resolve_device, seed_everything
from weighted_mtp.training.task import Task, denominators, micro_step
from weighted_mtp.training.tracking import Tracker, create_tracker

log = logging.getLogger(__name__)

BuildTask = Callable[[DictConfig, MTPTransformer, Tokenizer, torch.device], Task]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stops, checkpoints stay as they were."""


def tokenizer_path(cfg: DictConfig) -> str:
    return cfg.models.policy.tokenizer_path or str(Path(cfg.models.policy.path) / "tokenizer")


def train(cfg: DictConfig, build_task: BuildTask) -> dict[str, Any]:
    """Run one stage's training from a validated config; returns the final metrics.

    Tracked in MLflow when ``mlflow.tracking_uri`` is set (the run ends FAILED if
    training raises).
    """
    tracker = create_tracker(cfg)
    try:
        result = _train(cfg, build_task, tracker)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return result


def _train(cfg: DictConfig, build_task: BuildTask, tracker: Tracker) -> dict[str, Any]:
    t_cfg, c_cfg = cfg.training, cfg.checkpoint
    seed_everything(cfg.runtime.seed)
    device = resolve_device(cfg.runtime.device)
    amp = amp_dtype(cfg.runtime.mixed_precision, cfg.runtime.amp_dtype)
    tokenizer = load_tokenizer(tokenizer_path(cfg))
    model = load_model(cfg.models.policy.path, cfg.models.policy.dtype, device)
    model.set_activation_checkpointing(t_cfg.activation_checkpointing)
    task = build_task(cfg, model, tokenizer, device)
    if not task.train_policy:
        model.requires_grad_(False)
    modules = task.trainable_modules(model)
    for m in modules.values():
        m.train()

    train_ds = ProcessedDataset(cfg.dataset.train)
    collator = Collator(tokenizer, cfg.dataset.max_length)
    sampler = instantiate(cfg.data_sampling, index=train_ds.index, n_epochs=t_cfg.n_epochs)
    micro_per_step = t_cfg.gradient_accumulation_steps
    per_step = t_cfg.batch_size * micro_per_step
    total_steps = len(sampler) // per_step
    if total_steps == 0:
        raise TrainingDiverged(
            f"no optimizer step fits: {len(sampler)} samples < batch_size x accumulation "
            f"({per_step}); raise data_sampling.n_samples or training.n_epochs"
        )
    steps_per_epoch = cfg.data_sampling.n_samples / per_step
    every = c_cfg.save_checkpoint_every
    interval = max(1, round(every * steps_per_epoch)) if every > 0 else 0

    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = build_optimizer(params, t_cfg.learning_rate, t_cfg.weight_decay)
    scheduler = build_scheduler(
        optimizer, total_steps, t_cfg.warmup_ratio, t_cfg.lr_scheduler, t_cfg.min_lr_ratio
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    validator = Validator(cfg, task, model, collator, device, amp)
    save_dir = Path(c_cfg.save_dir)

    step, best = 0, math.inf
    resume_from = _resume_path(c_cfg.resume, save_dir)
    if resume_from is not None:
        state = ckpt.load(resume_from)
        _load_modules(modules, state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        ckpt.set_rng_state(state["rng"])
        step, best = state["step"], state["best_val_loss"]
        log.info("resumed from %s at step %d", resume_from, step)

    def save(name: str, val: dict[str, float]) -> Path:
        state = {
            "format": ckpt.FORMAT_VERSION,
            "stage": cfg.experiment.stage,
            "step": step,
            "epoch": sampler.epoch,
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "value_head_config": None if task.value_head is None else task.value_head.config(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": ckpt.rng_state(),
            "best_val_loss": best,
            "val": val,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "provenance": task.provenance,
        }
        path = save_dir / name
        ckpt.atomic_save(state, path)
        return path

    it = iter(sampler)
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    val: dict[str, float] = {}
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=None,
        desc=cfg.experiment.stage,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    tokens, t0 = 0, time.perf_counter()
    while step < total_steps:
        batches = [
            collator(train_ds.records(next(it) for _ in range(t_cfg.batch_size))).to(device)
            for _ in range(micro_per_step)
        ]
        # fp16: the grad scaler's factor goes into the denominators, since the MTP loss
        # runs its own backward head by head; reported losses are unscaled again.
        loss_scale = (
            float(scaler.scale(torch.ones((), device=device))) if scaler.is_enabled() else 1.0
        )
        den = denominators(task, batches, model.n_future_tokens).scaled(loss_scale)
        parts = []
        for b in batches:
            with autocast(device, amp):
                out = micro_step(task, model, b, den, backward=True)
            parts.append({k: (v / loss_scale if "loss" in k else v) for k, v in out.items()})
            tokens += int(b.attention_mask.sum())
        loss = sum(p["loss"] for p in parts)
        if not torch.isfinite(loss):
            bar.close()
            raise TrainingDiverged(
                f"loss is {loss.item()} at step {step + 1}: training stopped before the "
                f"update; the last good checkpoint in {save_dir} is unchanged"
            )
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t_cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        metrics = _step_metrics(parts, task, loss, grad_norm, scheduler, sampler)
        elapsed = time.perf_counter() - t0
        metrics["tokens_per_s"] = tokens / max(elapsed, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        if step % t_cfg.log_interval == 0:
            history.append({"step": step, **metrics})
            tracker.log_metrics(metrics, step)
            if bar.disable:
                log.info("step %d/%d %s", step, total_steps, _fmt(metrics))
        if interval and step % interval == 0 and step < total_steps:
            val = validator.run()
            history.append({"step": step, **val})
            tracker.log_metrics(val, step)
            improved = val["val/loss"] < best
            best = min(best, val["val/loss"])
            periodic = save(f"checkpoint_step{step}.pt", val)
            if c_cfg.save_best and improved:
                ckpt.atomic_copy(periodic, save_dir / "checkpoint_best.pt")
            if c_cfg.save_total_limit > 0:
                ckpt.prune(save_dir, c_cfg.save_total_limit)
    bar.close()
    val = validator.run()
    history.append({"step": step, **val})
    tracker.log_metrics(val, step)
    improved = val["val/loss"] < best
    best = min(best, val["val/loss"])
    final = None
    if c_cfg.save_final:
        final = save("checkpoint_final.pt", val)
        if c_cfg.save_best and improved:
            ckpt.atomic_copy(final, save_dir / "checkpoint_best.pt")
    elif c_cfg.save_best and improved:
        save("checkpoint_best.pt", val)
    tracker.log_dict(
        {
            "checkpoint": str(final) if final else None,
            "step": step,
            "epoch": sampler.epoch,
            "val": val,
            "best_val_loss": best,
            "provenance": task.provenance,
        },
        "final_checkpoint.json",
    )
    result = {"step": step, **metrics, **val, "best_val_loss": best}
    print(f"{cfg.experiment.stage} done: step {step}/{total_steps} {_fmt(result)}", flush=True)
    print(f"  checkpoints: {save_dir}", flush=True)
    return result | {"history": history}


def _resume_path(resume: str, save_dir: Path) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        return ckpt.latest(save_dir)
    return Path(resume)


def _load_modules(modules: dict[str, torch.nn.Module], state: dict[str, Any]) -> None:
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])


def _step_metrics(parts, task: Task, loss, grad_norm, scheduler, sampler) -> dict[str, float]:
    m = {
        "train/loss": float(loss),
        "train/grad_norm": float(grad_norm),
        "train/lr": scheduler.get_last_lr()[0],
        "train/epoch": float(sampler.epoch),
    }
    if "mtp_loss" in parts[0]:
        m["train/mtp_loss"] = float(sum(p["mtp_loss"] for p in parts))
        valid = sum(p["head_valid"] for p in parts).clamp(min=1)
        head_ce = sum(p["head_ce"] * p["head_valid"] for p in parts) / valid
        m |= {f"train/head{k}_ce": float(v) for k, v in enumerate(head_ce)}
    if "value_loss" in parts[0]:
        m["train/value_loss"] = float(sum(p["value_loss"] for p in parts))
    if task.weighting is not None:
        m |= {f"train/{k}": v for k, v in task.weighting.stats().items()}
    return m


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.startswith("train/head"))
