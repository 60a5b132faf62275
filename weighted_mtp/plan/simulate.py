"""One rank of a training run, simulated: the project's own step on fake tensors.

:func:`simulate_rank` builds the policy (and the stage's value head / reference) from shape
files on fake tensors, prepares it as the loop does (fp32 master weights when trained,
activation checkpointing, FSDP2 sharding under ``runtime.distributed=fsdp``), then runs
``STEPS`` optimizer steps of ``gradient_accumulation_steps`` full-length micro-batches
and one validation batch through the training code (``training.task``, ``training.fsdp``,
``training.optim``, ``training.evaluate``), under torch's memory trackers, a FLOP counter
and a collective counter. Every number the plan prints comes from that run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any
from unittest import mock

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from weighted_mtp.data.collate import Batch
from weighted_mtp.models.formats import resolve_dtype
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
from weighted_mtp.models.value_head import ValueHead
from weighted_mtp.plan.fake import fake_world, local_bytes, real_mesh
from weighted_mtp.plan.tracker import flop_counter, peak, tracker_for
from weighted_mtp.training import distributed as dist
from weighted_mtp.training import fsdp
from weighted_mtp.training.distributed import DistInfo
from weighted_mtp.training.evaluate import EVAL_BATCH_FACTOR, Validator
from weighted_mtp.training.optim import build_optimizer
from weighted_mtp.training.runtime import amp_dtype, autocast
from weighted_mtp.training.task import Task, denominators, micro_step

STEPS = 2  # the second step runs with the optimizer state of the first: the steady state


@dataclass
class RankResult:
    peak_bytes: int  # the larger of the training and validation peaks
    categories: dict[str, int]  # tracker category -> bytes at the training peak
    validation_peak_bytes: int
    module_bytes: dict[str, int]  # policy / value_head / reference parameters on this rank
    flops: float  # one optimizer step of this rank (forward, backward, recompute)
    comm_bytes: dict[str, int] = field(default_factory=dict)  # collective -> bytes per step
    sharded: bool = False


def fake_batch(cfg: DictConfig, vocab_size: int, batch_size: int, device: torch.device) -> Batch:
    """A full-length batch: every sequence ``dataset.max_length`` tokens, all of them
    response tokens (the worst case for activation and logits memory)."""
    b, s = batch_size, cfg.dataset.max_length
    ids = torch.randint(3, vocab_size, (b, s), device=device)
    ones = torch.ones(b, s, dtype=torch.bool, device=device)
    return Batch(
        input_ids=ids,
        attention_mask=ones,
        labels=ids.clone(),
        response_mask=ones.clone(),
        reward=torch.ones(b, device=device),
        is_correct=torch.ones(b, dtype=torch.bool, device=device),
        difficulty=torch.zeros(b, dtype=torch.long, device=device),
        record_ids=torch.arange(b, device=device),
        task_ids=[str(i) for i in range(b)],
    )


def build_task(cfg: DictConfig, model: MTPTransformer, reference: nn.Module | None) -> Task:
    """The stage's Task with shape-only parts (stages/*.py build the same from files)."""
    stage = cfg.experiment.stage
    t = cfg.training
    head = None
    if stage in ("critic", "verifiable"):
        vh = cfg.models.value_head
        head = ValueHead(model.args.dim, vh.type, vh.hidden_dim)
    if stage == "critic":
        return Task(False, value_head=head, value_coef=1.0, value_loss_type=t.loss_type,
                    gamma=t.gamma, lam=t.lam)  # fmt: skip
    weighting = instantiate(cfg.weighting)
    if stage == "verifiable":
        return Task(True, weighting, head, t.value_coef, t.loss_type, t.gamma, t.lam)
    if stage == "rho1":
        from weighted_mtp.stages.rho1 import token_ce

        temperature = float(getattr(weighting, "temperature", 1.0))
        return Task(True, weighting, reference=partial(token_ce, reference, temperature))
    return Task(True, weighting)


def build_reference(cfg: DictConfig, config: dict[str, Any]) -> nn.Module:
    """The Rho-1 reference from its Hugging Face config.json (frozen, eval)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(hf, dtype=resolve_dtype(cfg.models.reference.dtype))
    return model.eval().requires_grad_(False)


def simulate_rank(
    cfg: DictConfig,
    policy: ModelArgs,
    reference: dict[str, Any] | None,
    world_size: int,
    rank: int = 0,
) -> RankResult:
    device = torch.device("cpu")
    mesh = real_mesh(fsdp.init_device_mesh)
    with fake_world(rank, world_size), mock.patch.object(fsdp, "init_device_mesh", mesh):
        return _simulate(cfg, policy, reference, DistInfo(rank, world_size, rank), device)


def _simulate(
    cfg: DictConfig,
    args: ModelArgs,
    ref_config: dict[str, Any] | None,
    info: DistInfo,
    device: torch.device,
) -> RankResult:
    t_cfg = cfg.training
    amp = amp_dtype(cfg.runtime.mixed_precision, cfg.runtime.amp_dtype)
    sharded = cfg.runtime.distributed == "fsdp" and info.enabled
    model = MTPTransformer(args, resolve_dtype(cfg.models.policy.dtype))
    model.set_activation_checkpointing(t_cfg.activation_checkpointing)
    reference = None
    if cfg.experiment.stage == "rho1" and ref_config is not None:
        reference = build_reference(cfg, ref_config)
    task = build_task(cfg, model, reference)
    if not task.train_policy:
        model.requires_grad_(False)
    elif next(model.parameters()).dtype != torch.float32:
        model.float()
    if sharded:
        fsdp.shard(model, device, info.world_size, amp)
    fsdp_step = sharded and task.train_policy
    modules = task.trainable_modules(model)
    for m in modules.values():
        m.train()
    params = [p for m in modules.values() for p in m.parameters()]
    replicated = [p for m in modules.values() if not fsdp.is_sharded(m) for p in m.parameters()]
    optimizer = build_optimizer(params, t_cfg.learning_rate, t_cfg.weight_decay)
    module_bytes = {"policy": local_bytes(model.parameters())}
    if task.value_head is not None:
        module_bytes["value_head"] = local_bytes(task.value_head.parameters())
    if reference is not None:
        module_bytes["reference"] = local_bytes(reference.parameters())

    tracker = tracker_for(args.vocab_size, model, optimizer)
    tracker.track_external(*(x for x in (model, task.value_head, reference) if x is not None))
    tracker.track_external(optimizer)

    def one_step() -> None:
        batches = [
            fake_batch(cfg, args.vocab_size, t_cfg.batch_size, device)
            for _ in range(t_cfg.gradient_accumulation_steps)
        ]
        den = denominators(task, batches, model.n_future_tokens)
        den.mtp, den.value = (dist.all_reduce_sum(d, info) for d in (den.mtp, den.value))
        if fsdp_step:
            fsdp.begin_step(model)
        for b in batches:
            with autocast(device, amp):
                micro_step(task, model, b, den, backward=True)
        if fsdp_step:
            fsdp.reduce_gradients(model)
        dist.sum_gradients(replicated, info)
        clip = fsdp.clip_grad_norm_ if sharded else torch.nn.utils.clip_grad_norm_
        clip(params, t_cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops = flop_counter()
    with tracker:
        for _ in range(STEPS - 1):
            one_step()
        tracker.comm_bytes.clear()
        with flops:
            one_step()
    train_peak, categories = peak(tracker)
    resident = [x for x in (model, task.value_head, reference, optimizer) if x is not None]
    val_peak = _validation_peak(cfg, task, model, resident, info, device, amp, sharded)
    return RankResult(
        peak_bytes=max(train_peak, val_peak),
        categories=categories,
        validation_peak_bytes=val_peak,
        module_bytes=module_bytes,
        flops=float(flops.get_total_flops()),
        comm_bytes=dict(tracker.comm_bytes),
        sharded=sharded,
    )


def _validation_peak(cfg, task, model, resident, info, device, amp, sharded) -> int:
    """Peak of one validation batch (``training.evaluate.Validator.run``) with the training
    state (weights, value head, reference, optimizer state) resident."""
    batch_size = cfg.training.batch_size * EVAL_BATCH_FACTOR
    batch = fake_batch(cfg, model.args.vocab_size, batch_size, device)
    validator = Validator.__new__(Validator)  # its records come from this fake batch
    validator.task, validator.model, validator.device, validator.amp = task, model, device, amp
    validator.info, validator.batch_size = DistInfo(), batch_size
    validator.records = [None] * batch_size
    validator.collator = lambda records: batch
    tracker = tracker_for(model.args.vocab_size, model, resident[-1])
    tracker.track_external(*resident)
    with tracker:
        if sharded:
            with fsdp.full_weights(model):
                validator.run()
        else:
            validator.run()
    return peak(tracker)[0]
