"""The one training loop, shared by every stage.

``train(cfg, build_task)`` loads the policy, tokenizer and data, asks the stage for its
:class:`~weighted_mtp.training.task.Task`, then runs optimizer steps: fetch
``gradient_accumulation_steps`` micro-batches and run one optimizer step on them
(:func:`~weighted_mtp.training.step.optimizer_step`, with the parallelism of
:mod:`~weighted_mtp.training.parallel`), schedule; log every ``log_interval`` steps;
validate and checkpoint every ``save_checkpoint_every`` epochs; resume from ``checkpoint.resume``.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from weighted_mtp import distributed as dist
from weighted_mtp.data.collate import Collator
from weighted_mtp.data.dataset import ProcessedDataset
from weighted_mtp.data.sampling import build_sampler
from weighted_mtp.errors import TrainingDiverged, UserError
from weighted_mtp.models import lora
from weighted_mtp.models.formats import resolve_dtype
from weighted_mtp.models.mtp import MTPTransformer
from weighted_mtp.models.reader import CheckpointReader, meta_model
from weighted_mtp.models.tokenizer import Tokenizer, config_tokenizer_path, load_tokenizer
from weighted_mtp.progress import Progress
from weighted_mtp.tracking import create_tracker
from weighted_mtp.tracking.base import Tracker
from weighted_mtp.training import compile as speed
from weighted_mtp.training.checkpoint import Checkpointer
from weighted_mtp.training.optim import build_optimizer, build_scheduler
from weighted_mtp.training.parallel import Replicated
from weighted_mtp.training.parallel import build as build_parallel
from weighted_mtp.training.runtime import amp_dtype, resolve_device, seed_everything
from weighted_mtp.training.step import optimizer_step
from weighted_mtp.training.task import Task, prepare_policy
from weighted_mtp.training.validator import Validator
from weighted_mtp.weighting.diagnostics import diagnostic_metrics

log = logging.getLogger(__name__)

BuildTask = Callable[[DictConfig, MTPTransformer, Tokenizer, torch.device], Task]


def train(cfg: DictConfig, build_task: BuildTask) -> dict[str, Any]:
    """Run one stage's training from a validated config; returns the final metrics.

    Tracked in MLflow when ``mlflow.tracking_uri`` is set (rank 0 only; the run ends
    FAILED if training raises).
    """
    device = resolve_device(cfg.runtime.device)
    info = dist.init(device)
    device = dist.local_device(device, info)
    tracker = create_tracker(cfg, rank=info.rank)
    try:
        result = _train(cfg, build_task, tracker, device, info)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    dist.barrier(info)  # every rank done before the group is torn down
    dist.shutdown()
    return result


@dataclass
class _Plan:
    total_steps: int
    micro_batches: int
    checkpoint_interval: int  # optimizer steps; 0 = no periodic checkpoints


def _plan(cfg: DictConfig, sampler_total: int, world_size: int) -> _Plan:
    t = cfg.training
    per_step = t.batch_size * t.gradient_accumulation_steps
    total_steps = (sampler_total // world_size) // per_step
    if total_steps == 0:
        raise UserError(
            f"no optimizer step fits: {sampler_total} samples over {world_size} rank(s) < "
            f"batch_size x accumulation ({per_step}); raise data_sampling.n_samples or "
            "training.n_epochs"
        )
    steps_per_epoch = cfg.data_sampling.n_samples / (per_step * world_size)
    every = cfg.checkpoint.save_checkpoint_every
    interval = max(1, round(every * steps_per_epoch)) if every > 0 else 0
    return _Plan(total_steps, t.gradient_accumulation_steps, interval)


def _train(
    cfg: DictConfig,
    build_task: BuildTask,
    tracker: Tracker,
    device: torch.device,
    info: dist.DistInfo,
) -> dict[str, Any]:
    t_cfg = cfg.training
    seed_everything(cfg.runtime.seed)
    amp = amp_dtype(cfg.runtime.mixed_precision, cfg.runtime.amp_dtype)
    tokenizer = load_tokenizer(config_tokenizer_path(cfg))
    parallel = build_parallel(cfg.runtime.distributed, info, device, amp, nodes=cfg.runtime.nodes)
    # the stage sees the policy's shape (meta device); its weights come once the dtype
    # (trained or frozen) is known, each rank reading only what it holds
    reader = CheckpointReader(cfg.models.policy.path)
    reader.check(vocab_size=tokenizer.vocab_size)
    model = meta_model(reader, resolve_dtype(cfg.models.policy.dtype))
    model.set_activation_checkpointing(
        t_cfg.activation_checkpointing, t_cfg.activation_checkpointing_blocks
    )
    task = build_task(cfg, model, tokenizer, device)
    task.check_inputs()
    speed.apply(t_cfg, model, task)  # training.compile, loss_chunk_size: before sharding
    adapters = lora.config_of(cfg)
    prepare_policy(model, task, adapters is not None)
    parallel.load(model, reader)
    del reader
    if adapters is not None:  # the base frozen in models.policy.dtype, float32 adapters
        lora.apply(model, adapters, cfg.runtime.seed)
        trainable, frozen = lora.count_parameters(model)
        log.info("LoRA: %d trainable adapter parameters, %d frozen", trainable, frozen)
    modules = task.trainable_modules(model)
    for m in modules.values():
        m.train()

    train_ds = ProcessedDataset(cfg.dataset.train)
    collator = Collator(tokenizer, cfg.dataset.max_length)
    sampler = build_sampler(
        cfg.data_sampling,
        index=train_ds.index,
        n_epochs=t_cfg.n_epochs,
        rank=info.rank,
        world_size=info.world_size,
    )
    plan = _plan(cfg, sampler.total, info.world_size)
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, t_cfg.learning_rate, t_cfg.weight_decay, device)
    scheduler = build_scheduler(
        optimizer, plan.total_steps, t_cfg.warmup_ratio, t_cfg.lr_scheduler, t_cfg.min_lr_ratio
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    validator = Validator(cfg, task, model, collator, device, amp, info, pad=parallel.sharded)
    saver = Checkpointer(cfg, task, modules, optimizer, scheduler, scaler, sampler, parallel)
    step = saver.resume()
    if task.prepare is not None:  # every batch this rank will still train on, in order
        ahead = iter(copy.deepcopy(sampler))
        task.prepare(
            collator(train_ds.records(next(ahead) for _ in range(t_cfg.batch_size))).to(device)
            for _ in range((plan.total_steps - step) * plan.micro_batches)
        )

    it = iter(sampler)
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    bar = Progress(
        plan.total_steps, cfg.experiment.stage, "steps", initial=step,
        every=t_cfg.log_interval, enabled=info.is_main,
    )  # fmt: skip
    tokens, t0 = 0.0, time.perf_counter()
    weights = _WeightSummary()
    while step < plan.total_steps:
        batches = [
            collator(train_ds.records(next(it) for _ in range(t_cfg.batch_size))).to(device)
            for _ in range(plan.micro_batches)
        ]
        try:
            res = optimizer_step(
                batches, task, model, parallel, optimizer, scaler, params, t_cfg.max_grad_norm,
                device, amp,
            )  # fmt: skip
        except TrainingDiverged as exc:
            bar.close()
            raise TrainingDiverged(
                f"{exc} at step {step + 1}: training stopped before the update; "
                f"the last good checkpoint in {saver.save_dir} is unchanged"
            ) from None
        totals = res.totals
        step_tokens = totals["tokens"]
        step_lr = scheduler.get_last_lr()[0]  # the lr this step trained with
        scheduler.step()
        step += 1
        tokens += step_tokens
        metrics = _step_metrics(totals, task, res.grad_norm, step_lr, sampler)
        weights.add(totals, metrics)
        metrics["tokens_per_s"] = tokens / max(time.perf_counter() - t0, 1e-9)
        bar.update(1, _status(metrics))
        if step % t_cfg.log_interval == 0:
            history.append({"step": step, **metrics})
            tracker.log_metrics(metrics, step)
        interval = plan.checkpoint_interval
        if interval and step % interval == 0 and step < plan.total_steps:
            val = _validate(validator, model, parallel)
            history.append({"step": step, **val})
            tracker.log_metrics(val, step)
            saver.periodic(step, val)
    bar.close()
    val = _validate(validator, model, parallel)
    history.append({"step": step, **val})
    tracker.log_metrics(val, step)
    final = saver.final(step, val)
    tracker.log_dict(
        {
            "checkpoint": str(final) if final else None,
            "step": step,
            "epoch": sampler.epoch,
            "val": val,
            "best_val_loss": saver.best,
            "provenance": task.provenance,
        },
        "final_checkpoint.json",
    )
    result = {"step": step, **metrics, **val, "best_val_loss": saver.best}
    if info.is_main:
        print(f"{cfg.experiment.stage} done: step {step}/{plan.total_steps} {_fmt(result)}")
        print(f"  checkpoints: {saver.save_dir}" + (f" (final: {final})" if final else ""))
        run_id = getattr(tracker, "run_id", None)
        if run_id:
            uri, exp = getattr(tracker, "tracking_uri", ""), getattr(tracker, "experiment", "")
            print(f"  MLflow run: {run_id} (experiment {exp!r} at {uri})")
        else:
            off = "" if cfg.mlflow.tracking_uri else " (mlflow.tracking_uri is empty)"
            print(f"  MLflow: not tracked{off}")
        sys.stdout.flush()
    if weights.steps:
        result["weight_summary"] = weights.summary()
        tracker.log_dict(result["weight_summary"], "weight_summary.json")
    return result | {"history": history}


def _validate(validator: Validator, model: MTPTransformer, parallel: Replicated) -> dict:
    with parallel.validation(model):
        return validator.run()


def _step_metrics(totals: dict, task: Task, grad_norm, lr: float, sampler) -> dict[str, float]:
    m = {
        "train/loss": totals["loss"],
        "train/grad_norm": float(grad_norm),
        "train/lr": lr,
        "train/epoch": float(sampler.epoch),
    }
    if "mtp_loss" in totals:
        m["train/mtp_loss"] = totals["mtp_loss"]
        m |= {f"train/head{k}_ce": v for k, v in enumerate(totals["head_ce"])}
    if "value_loss" in totals:
        m["train/value_loss"] = totals["value_loss"]
    m |= {f"train/{k}": v for k, v in totals.get("weight_diagnostics", {}).items()}
    if task.weighting is not None:
        m |= {f"train/{k}": v for k, v in task.weighting.stats().items()}
    if task.trunk_cache is not None:
        m |= {f"train/{k}": v for k, v in task.trunk_cache.stats().items()}
    return m


class _WeightSummary:
    """The weight diagnostics of the whole run (the steps this process ran): the
    diagnostics' sums added over steps, and the weighting's clipped fractions averaged."""

    def __init__(self) -> None:
        self.sums: list[float] | None = None
        self.clipped: dict[str, float] = {}
        self.steps = 0

    def add(self, totals: dict, metrics: dict[str, float]) -> None:
        if "weight_sums" not in totals:
            return
        new = totals["weight_sums"]
        self.sums = [a + b for a, b in zip(self.sums or [0.0] * len(new), new, strict=True)]
        for k, v in metrics.items():
            if k.startswith("train/weight/clipped_"):
                key = k.removeprefix("train/")
                self.clipped[key] = self.clipped.get(key, 0.0) + v
        self.steps += 1

    def summary(self) -> dict[str, float]:
        clipped = {k: v / self.steps for k, v in self.clipped.items()}
        return diagnostic_metrics(self.sums or []) | clipped | {"steps": self.steps}


def _status(m: dict[str, float]) -> str:
    """The step's one-line summary (progress bar postfix, or the log line of a non-TTY)."""
    return (
        f"loss={m['train/loss']:.4f} grad_norm={m['train/grad_norm']:.3g} "
        f"lr={m['train/lr']:.3g} tok_s={m['tokens_per_s']:.0f}"
    )


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.startswith("train/head"))
