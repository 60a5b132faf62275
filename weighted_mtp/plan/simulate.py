"""One rank of a training run, simulated: the project's own step on fake tensors.

:func:`simulate_rank` builds the policy (and the stage's value head / reference) from shape
files on the meta device, loads it through the run's parallelism
(:mod:`weighted_mtp.training.parallel`: full replica or FSDP2 shards) from a checkpoint
reader of fake tensors, then runs one optimizer step of ``gradient_accumulation_steps``
full-length micro-batches through :func:`weighted_mtp.training.step.optimizer_step` (the
function the loop calls), with the optimizer state of earlier steps resident, and one
validation batch through :class:`weighted_mtp.training.validator.Validator`; rho1 also
runs its reference scoring pass. All under torch's memory trackers, a FLOP counter and a
collective counter: every number the plan prints comes from that run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from weighted_mtp import distributed
from weighted_mtp.data.collate import Batch
from weighted_mtp.distributed import DistInfo
from weighted_mtp.models import lora
from weighted_mtp.models.formats import resolve_dtype
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
from weighted_mtp.models.value_head import ValueHead
from weighted_mtp.plan.fake import fake_world, local_bytes, real_mesh, same_rows_everywhere
from weighted_mtp.plan.tracker import PlainTracker, flop_counter, peak, tracker_for
from weighted_mtp.training import compile as speed
from weighted_mtp.training import fsdp
from weighted_mtp.training.optim import build_optimizer
from weighted_mtp.training.parallel import build as build_parallel
from weighted_mtp.training.runtime import amp_dtype
from weighted_mtp.training.step import optimizer_step
from weighted_mtp.training.task import Task, prepare_policy
from weighted_mtp.training.validator import EVAL_BATCH_FACTOR, Validator

CUDA = torch.device("cuda")


@dataclass
class RankResult:
    peak_bytes: int  # the largest of the training, validation and reference-pass peaks
    categories: dict[str, int]  # tracker category -> bytes at the training peak
    validation_peak_bytes: int
    reference_peak_bytes: int  # rho1: the scoring pass before training (0 otherwise)
    module_bytes: dict[str, int]  # policy / value_head / reference parameters on this rank
    flops: float  # one optimizer step of this rank (forward, backward, recompute)
    step_seconds: list[float] = field(default_factory=list)  # run_rank(timed_steps=N)
    comm_bytes: dict[str, int] = field(default_factory=dict)  # collective -> bytes per step
    sharded: bool = False
    grad_bytes: int = 0  # this rank's trainable parameters (its gradient shard), bytes


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


def build_task(cfg: DictConfig, model: MTPTransformer) -> Task:
    """The stage's Task with shape-only parts (stages/*.py build the same from files).

    rho1: the reference scores every training record before training (``Task.prepare``)
    and is released; during the step the weighting reads cached losses (``cached_ce``).
    """
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
        return Task(True, weighting, reference=cached_ce)
    return Task(True, weighting)


def cached_ce(batch: Batch) -> torch.Tensor:
    """What ``ReferenceLossCache`` gives during training: per-token losses read from disk
    into a float32 [B, S] tensor."""
    return torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=batch.input_ids.device)


class ShapeReader:
    """A :class:`~weighted_mtp.models.reader.CheckpointReader` without a file: the
    checkpoint's rows in the file's dtype, random (fake tensors under the plan; real ones,
    initialised like a trained model's scale, in the memory benchmark)."""

    dcp = False

    def __init__(self, args: ModelArgs, dtype: torch.dtype) -> None:
        with torch.device("meta"):
            sd = MTPTransformer(args).state_dict()
        self.args, self.dtype = args, dtype
        self.shapes = {k: (tuple(v.shape), dtype) for k, v in sd.items()}

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        shape = (stop - start, *self.shapes[key][0][1:])
        if key.endswith("norm.weight"):
            return torch.ones(shape, dtype=self.dtype)
        return (torch.randn(shape) * 0.02).to(self.dtype)


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
    checkpoint_dtype: torch.dtype = torch.bfloat16,
) -> RankResult:
    """Simulate ``rank`` of ``world_size`` on fake tensors (no memory is allocated)."""
    mesh = real_mesh(fsdp.init_device_mesh)
    with (
        fake_world(rank, world_size),
        mock.patch.object(fsdp, "init_device_mesh", mesh),
        mock.patch.object(distributed, "all_gather_rows", same_rows_everywhere),
    ):
        info = DistInfo(rank, world_size, rank)
        return run_rank(
            cfg,
            policy,
            reference,
            info,
            torch.device("cpu"),
            checkpoint_dtype,
            compile_blocks=False,
        )


def run_rank(
    cfg: DictConfig,
    args: ModelArgs,
    ref_config: dict[str, Any] | None,
    info: DistInfo,
    device: torch.device,
    checkpoint_dtype: torch.dtype = torch.bfloat16,
    timed_steps: int = 0,
    compile_blocks: bool = True,
) -> RankResult:
    """Build, load and run one optimizer step + a validation batch of this rank, tracked.

    Works on fake tensors (:func:`simulate_rank`) and on real ones (the memory benchmarks
    run it with gloo on CPU and on a GPU): that is how the plan is checked against
    reality. ``timed_steps`` more optimizer steps of the same batches follow untracked,
    each timed (``RankResult.step_seconds``; real tensors only).
    """
    t_cfg = cfg.training
    amp = amp_dtype(cfg.runtime.mixed_precision, cfg.runtime.amp_dtype)
    parallel = build_parallel(cfg.runtime.distributed, info, device, amp)
    with torch.device("meta"):
        model = MTPTransformer(args, resolve_dtype(cfg.models.policy.dtype))
    model.set_activation_checkpointing(
        t_cfg.activation_checkpointing, t_cfg.activation_checkpointing_blocks
    )
    task = build_task(cfg, model)
    speed.apply(t_cfg, model, task, compile_blocks=compile_blocks)  # fake tensors: eager
    adapters = lora.config_of(cfg)
    prepare_policy(model, task, adapters is not None)
    parallel.load(model, ShapeReader(args, checkpoint_dtype))  # type: ignore[arg-type]
    if adapters is not None:
        lora.apply(model, adapters, cfg.runtime.seed)
    modules = task.trainable_modules(model)
    for m in modules.values():
        m.to(device).train()
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    # the optimizer the cluster builds (fused AdamW on CUDA: no full-size temporaries)
    optimizer = build_optimizer(params, t_cfg.learning_rate, t_cfg.weight_decay, CUDA)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    module_bytes = {"policy": local_bytes(model.parameters())}
    if task.value_head is not None:
        module_bytes["value_head"] = local_bytes(task.value_head.parameters())
    if adapters is not None:  # trainable LoRA adapters (float32) next to the frozen base
        module_bytes["adapters"] = local_bytes(p for p in model.parameters() if p.requires_grad)
    resident: list[Any] = [x for x in (model, task.value_head) if x is not None]

    reference_peak = 0
    if cfg.experiment.stage == "rho1" and ref_config is not None:
        reference_peak, module_bytes["reference"] = _reference_peak(
            cfg, ref_config, resident, args.vocab_size, device
        )
    _create_optimizer_state(params, optimizer)
    tracker = tracker_for(args.vocab_size, model, optimizer)
    tracker.track_external(*resident, optimizer)
    flops = flop_counter()
    batches = [
        fake_batch(cfg, args.vocab_size, t_cfg.batch_size, device)
        for _ in range(t_cfg.gradient_accumulation_steps)
    ]
    with tracker, flops:
        optimizer_step(batches, task, model, parallel, optimizer, scaler, params,
                       t_cfg.max_grad_norm, device, amp)  # fmt: skip
    train_peak, categories = peak(tracker)
    step_seconds = []
    for _ in range(timed_steps):
        _synchronize(device)
        t0 = time.perf_counter()
        optimizer_step(batches, task, model, parallel, optimizer, scaler, params,
                       t_cfg.max_grad_norm, device, amp)  # fmt: skip
        _synchronize(device)
        step_seconds.append(time.perf_counter() - t0)
    val_peak = _validation_peak(cfg, task, model, parallel, [*resident, optimizer], device, amp)
    return RankResult(
        peak_bytes=max(train_peak, val_peak, reference_peak),
        categories=categories,
        validation_peak_bytes=val_peak,
        reference_peak_bytes=reference_peak,
        module_bytes=module_bytes,
        flops=float(flops.get_total_flops()),
        comm_bytes=dict(tracker.comm_bytes),
        sharded=parallel.sharded,
        step_seconds=step_seconds,
        grad_bytes=local_bytes(params),
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _create_optimizer_state(params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    """The optimizer state of a run past its first step (AdamW's moments), so that the
    simulated step is the steady state: every forward/backward with the state resident."""
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _reference_peak(cfg, ref_config, resident, vocab_size, device) -> tuple[int, int]:
    """rho1's scoring pass before training: the reference next to the loaded policy, one
    training batch scored without gradients. Returns (peak, reference bytes)."""
    from weighted_mtp.stages.rho1 import token_ce

    reference = build_reference(cfg, ref_config).to(device)
    ref_bytes = local_bytes(reference.parameters())
    temperature = float(cfg.training.temperature)
    batch = fake_batch(cfg, vocab_size, cfg.training.batch_size, device)
    tracker = PlainTracker(vocab_size)
    tracker.track_external(*resident, reference)
    with tracker, torch.no_grad():
        token_ce(reference, temperature, batch.input_ids, batch.attention_mask, batch.labels)
    return peak(tracker)[0], ref_bytes


def _validation_peak(cfg, task, model, parallel, resident, device, amp) -> int:
    """Peak of one validation batch (``training.validator.Validator.run``) with the training
    state (weights, value head, optimizer state) resident."""
    batch_size = cfg.training.batch_size * EVAL_BATCH_FACTOR
    batch = fake_batch(cfg, model.args.vocab_size, batch_size, device)
    validator = Validator.__new__(Validator)  # its records come from this fake batch
    validator.task, validator.model, validator.device, validator.amp = task, model, device, amp
    validator.info, validator.batch_size, validator.n_batches = DistInfo(), batch_size, 1
    validator.records = validator.pad_records = [None] * batch_size
    validator.collator = lambda records: batch
    tracker = tracker_for(model.args.vocab_size, model, resident[-1])
    tracker.track_external(*resident)
    with tracker, parallel.validation(model):
        validator.run()
    return peak(tracker)[0]
