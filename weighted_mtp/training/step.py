"""One optimizer step: the only place where the training loop (and the memory plan's
simulation) runs forward, backward, gradient reduction, clipping and the update."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from weighted_mtp import distributed as dist
from weighted_mtp.data.collate import Batch
from weighted_mtp.errors import TrainingDiverged
from weighted_mtp.models.mtp import MTPTransformer
from weighted_mtp.training.parallel import Replicated
from weighted_mtp.training.runtime import autocast
from weighted_mtp.training.task import Task, denominators, micro_step
from weighted_mtp.weighting.diagnostics import SUMS, diagnostic_metrics, weight_quantiles


@dataclass
class StepResult:
    """``totals``: the step's global ``loss`` (and ``mtp_loss`` / ``value_loss``), ``tokens``
    and ``head_ce`` [n] (summed over micro-batches and ranks), and when the policy trains
    ``weight_sums`` (the diagnostics' sums, all ranks) and ``weight_diagnostics`` (their
    shares and means, plus this rank's weight quantiles per label); ``grad_norm``: before
    clipping."""

    totals: dict[str, Any]
    grad_norm: torch.Tensor


def optimizer_step(
    batches: list[Batch],
    task: Task,
    model: MTPTransformer,
    parallel: Replicated,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: list[nn.Parameter],
    max_grad_norm: float,
    device: torch.device,
    amp: torch.dtype | None,
) -> StepResult:
    """Run one optimizer step on ``batches`` (this rank's micro-batches, on ``device``).

    Arguments: ``batches`` - the step's micro-batches of this rank (every rank passes the
    same number); ``task`` - what is trained (:class:`~weighted_mtp.training.task.Task`);
    ``model`` - the policy, materialised by ``parallel.load`` (or ``parallel.prepare``);
    ``parallel`` - the :mod:`~weighted_mtp.training.parallel` object; ``optimizer`` -
    over ``params``, the trainable parameters (policy unless frozen, value head), e.g.
    :func:`~weighted_mtp.training.optim.build_optimizer`; ``scaler`` - the grad scaler
    (enabled for float16 only); ``max_grad_norm``; ``device``; ``amp`` - the autocast
    dtype or None.

    Does: the task's step-wide pass (:meth:`Task.begin_step`: Rho-1's top-k over the
    whole step), token-exact denominators over every micro-batch and rank (one all-reduce), the
    forward/backward of each micro-batch under autocast, the global loss totals (one
    all-reduce), the gradient reduction, unscale, clip, ``optimizer.step``, scaler update
    and ``zero_grad``. Raises :class:`TrainingDiverged` (before any update) when the loss
    is not finite. The learning-rate schedule is the caller's. Collectives are issued in
    the same order on every rank.
    """
    info = parallel.info
    # fp16: the grad scaler's factor goes into the denominators, since the MTP loss runs
    # its own backward head by head; reported losses are unscaled again.
    loss_scale = scaler.scale(torch.ones((), device=device)).item() if scaler.is_enabled() else 1.0
    # step-wide weightings (Rho-1, selection_scope=step): one no-grad pass over every
    # micro-batch first; forward-only, so every unit is resharded afterwards
    with parallel.validation(model), autocast(device, amp):
        task.begin_step(model, batches, info)
    den = denominators(task, batches, model.n_future_tokens)
    den.mtp, den.value = (dist.all_reduce_sum(d, info) for d in (den.mtp, den.value))
    den = den.scaled(loss_scale)
    parts = []
    for b in batches:
        with parallel.micro_batch(model), autocast(device, amp):
            out = micro_step(task, model, b, den, True, parallel.before_last_backward)
        parts.append({k: (v / loss_scale if "loss" in k else v) for k, v in out.items()})
    totals = global_totals(parts, batches, info)
    if not math.isfinite(totals["loss"]):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"loss is {totals['loss']}")
    parallel.reduce_gradients(model, params)
    scaler.unscale_(optimizer)
    grad_norm = parallel.clip_grad_norm_(params, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(totals, grad_norm)


def global_totals(parts: list[dict], batches: list[Batch], info: dist.DistInfo) -> dict[str, Any]:
    """This step's loss terms, token count and per-head CE over micro-batches and ranks,
    in one all-reduce."""
    names = [k for k in ("loss", "mtp_loss", "value_loss") if k in parts[0]]
    scalars = [sum(p[k] for p in parts).double().cpu() for k in names]
    tokens = torch.tensor(sum(float(b.attention_mask.sum()) for b in batches), dtype=torch.float64)
    vec = [torch.stack([*scalars, tokens])]
    diag = "weight_sums" in parts[0]
    if diag:
        vec.append(sum(p["weight_sums"] for p in parts))
    if "head_ce" in parts[0]:
        vec.append(sum(p["head_ce"] * p["head_valid"] for p in parts).double().cpu())
        vec.append(sum(p["head_valid"] for p in parts).double().cpu())
    flat = dist.all_reduce_sum(torch.cat(vec), info)
    out: dict[str, Any] = dict(
        zip([*names, "tokens"], flat[: len(names) + 1].tolist(), strict=True)
    )
    rest = flat[len(names) + 1 :]
    if diag:
        sums, rest = rest[: len(SUMS)], rest[len(SUMS) :]
        out["weight_sums"] = sums.tolist()
        local = {
            label: torch.cat([p["label_weights"][label] for p in parts])
            for label in ("correct", "incorrect")
        }
        out["weight_diagnostics"] = diagnostic_metrics(sums) | weight_quantiles(local)
    if "head_ce" in parts[0]:
        ce_sum, valid = rest.split(len(rest) // 2)
        out["head_ce"] = (ce_sum / valid.clamp(min=1)).tolist()
    return out
