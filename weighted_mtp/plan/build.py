"""From a composed config to a :class:`~weighted_mtp.plan.report.Plan`.

Memory, FLOPs and collectives come from :func:`~weighted_mtp.plan.simulate.simulate_rank`
(the loop's own step on fake tensors). Time is derived from them at a stated MFU and
interconnect bandwidth. When the run does not fit, :func:`find_fix` simulates the changes
a user would make, cheapest first, and names the first one that fits.

Several nodes (``Machine.nodes`` > 1): the global batch of one node's run is kept
(``batch_size x gradient_accumulation_steps x gpus_per_node``), so each GPU of N nodes
takes 1/N of its share (fewer accumulation steps first, then a smaller micro-batch) and
the run has the same optimizer steps. ``runtime.distributed=hsdp`` shards within a node
and replicates across nodes: per-GPU memory is FSDP's over ``gpus_per_node`` shards, and
each step adds the all-reduce across nodes of the node's gradient shard (the rank's
``grad_bytes``, ring factor 2(N-1)/N) at ``inter_node_gbps`` per GPU, counted as exposed.
``fsdp`` / ``ddp`` over several nodes run every collective over all ranks, at the
inter-node bandwidth (the ring's slowest link).
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from weighted_mtp.errors import UserError
from weighted_mtp.models.formats import resolve_dtype
from weighted_mtp.plan import shapes
from weighted_mtp.plan.host import host_ram_per_node
from weighted_mtp.plan.report import GB, Plan, allocator_ratio
from weighted_mtp.plan.simulate import RankResult, simulate_rank

# tracker category -> the plan's component (value head / reference split from parameters)
COMPONENTS = {
    "Parameter": "parameters",
    "Sharded Param": "parameters",
    "Unsharded Param": "parameters (all-gathered)",
    "Buffer": "activations",
    "Gradient": "gradients",
    "Sharded Grad": "gradients",
    "Unsharded Grad": "gradients (unsharded)",
    "Activation": "activations",
    "Temp": "activations",
    "Inputs": "activations",
    "Other": "activations",
    "Optstate": "optimizer state",
    "OptState": "optimizer state",
    "Logits": "logits chunks",
    "Communication": "communication buffers",
    "All Gather": "communication buffers",
    "Reduce Scatter": "communication buffers",
}
# bytes a ring collective moves per byte of its largest buffer
BUS_FACTOR = {"allreduce": 2.0, "allgather": 1.0, "reducescatter": 1.0}


NVLINK_GBPS = 200.0  # intra-node NCCL bus bandwidth, GB/s (A100 NVLink 3: ~230 measured)
INFINIBAND_GBITPS = 200.0  # inter-node, Gbit/s per GPU (one HDR 200 Gb/s NIC per GPU)


@dataclass(frozen=True)
class Machine:
    gpus: int = 4  # all ranks: nodes x gpus_per_node
    gpus_per_node: int = 4
    gpu_memory_gb: float | None = None  # the card's nominal "GB", read as GiB (report.py)
    peak_tflops: float = 312.0  # A100 dense bf16
    mfu: float = 0.4
    interconnect_gbps: float = NVLINK_GBPS  # intra-node NCCL bus bandwidth, GB/s
    checkpoint_dtype: str = "bfloat16"  # dtype of the policy's weights on disk
    nodes: int = 1
    inter_node_gbps: float = INFINIBAND_GBITPS  # Gbit/s per GPU between nodes


def hybrid(cfg: DictConfig, machine: Machine) -> bool:
    """Sharded within a node, replicated across nodes (HSDP; one node: FSDP)."""
    return str(cfg.runtime.distributed) == "hsdp"


def per_gpu_batch(cfg: DictConfig, nodes: int) -> tuple[int, int]:
    """(batch_size, accumulation) per GPU on ``nodes`` nodes for one node's global batch."""
    b, a = int(cfg.training.batch_size), int(cfg.training.gradient_accumulation_steps)
    if nodes == 1:
        return b, a
    share = b * a
    if share % nodes:
        raise UserError(
            f"--nodes {nodes}: training.batch_size x training.gradient_accumulation_steps = "
            f"{b} x {a} = {share} sequences per GPU per step cannot be split over {nodes} "
            f"nodes at the same global batch; use a node count dividing {share}, or set "
            "training.gradient_accumulation_steps to a multiple of it"
        )
    share //= nodes
    b = math.gcd(b, share)
    return b, share // b


def communicators(machine: Machine, hsdp: bool) -> int:
    """NCCL process groups a rank holds: none alone; the world's; HSDP adds its shard and
    replicate groups."""
    if machine.gpus <= 1:
        return 0
    return 3 if hsdp and machine.nodes > 1 else 1


def make_plan(
    cfg: DictConfig,
    machine: Machine,
    policy_shape: str | None = None,
    reference_shape: str | None = None,
    fix: bool = True,
) -> Plan:
    policy = shapes.resolve(policy_shape, cfg.models.policy.path, "params.json", "policy")
    reference = None
    if cfg.experiment.stage == "rho1":
        reference = shapes.resolve(
            reference_shape, cfg.models.reference.path, "config.json", "reference"
        )
    args = shapes.policy_args(policy)
    dtype = resolve_dtype(machine.checkpoint_dtype)
    sim_cfg, world = _simulated(cfg, machine)
    result = simulate_rank(sim_cfg, args, reference.data if reference else None, world, 0, dtype)
    ref_source = reference.source if reference else None
    plan = _assemble(
        sim_cfg, machine, result, policy.source, ref_source, args.n_layers, hybrid(cfg, machine)
    )
    plan.distributed = str(cfg.runtime.distributed)
    host = host_ram_per_node(args, dtype, result.module_bytes.get("reference", 0))
    plan.host_ram_gb_per_node = round(host / GB, 4)
    if fix and plan.fits is False:
        plan.fix = find_fix(cfg, machine, policy_shape, reference_shape)
    return plan


def _simulated(cfg: DictConfig, machine: Machine) -> tuple[DictConfig, int]:
    """The config one rank runs and the world it is sharded over: each GPU's share of
    the global batch; HSDP as FSDP over one node's GPUs (its shard group)."""
    if machine.nodes < 1 or machine.gpus_per_node < 1:
        raise UserError(f"nodes {machine.nodes} x gpus per node {machine.gpus_per_node}: >= 1")
    b, a = per_gpu_batch(cfg, machine.nodes)
    change: dict[str, object] = {}
    if (b, a) != (cfg.training.batch_size, cfg.training.gradient_accumulation_steps):
        change = {"training.batch_size": b, "training.gradient_accumulation_steps": a}
    if hybrid(cfg, machine):
        change["runtime.distributed"] = "fsdp"
        return _with(cfg, change), machine.gpus_per_node
    return (_with(cfg, change) if change else cfg), machine.gpus


def _components(result: RankResult) -> dict[str, float]:
    out: dict[str, float] = {}
    for cat, b in result.categories.items():
        name = COMPONENTS.get(cat, "activations")
        out[name] = out.get(name, 0.0) + b / GB
    for key, name in (("value_head", "value head"), ("adapters", "LoRA adapters")):
        b = result.module_bytes.get(key, 0)
        if b:  # their weights are tracked as parameters; shown on their own
            out["parameters"] = out.get("parameters", 0.0) - b / GB
            out[name] = b / GB
    if result.module_bytes.get("reference"):  # resident in rho1's scoring pass only
        out["reference model (scoring pass only)"] = result.module_bytes["reference"] / GB
    return {k: round(v, 6) for k, v in out.items() if v}


def _comm_seconds(result: RankResult, machine: Machine, hsdp: bool) -> tuple[float, float, float]:
    """(exposed, overlapped, inter-node) seconds of this step's collectives.
    ddp's gradient all-reduce runs after every micro-batch (exposed); FSDP's all-gathers and
    reduce-scatters are prefetched / issued during backward (overlapped with compute).
    HSDP: those run within a node (NVLink); the all-reduce across nodes of each rank's
    gradient shard is exposed (inter-node, also in ``exposed``)."""
    group = machine.gpus_per_node if hsdp else machine.gpus
    inter = machine.inter_node_gbps / 8 * GB  # bytes/s per GPU
    bandwidth = machine.interconnect_gbps * GB if machine.nodes == 1 or hsdp else inter
    exposed = overlapped = 0.0
    if group > 1:
        ring = (group - 1) / group
        for op, b in result.comm_bytes.items():
            kind = next((k for k in BUS_FACTOR if k in op.replace("_", "")), None)
            if kind is None:
                continue
            t = BUS_FACTOR[kind] * ring * b / bandwidth
            if kind == "allreduce":
                exposed += t
            else:
                overlapped += t
    if machine.nodes == 1:
        return exposed, overlapped, 0.0
    if hsdp:
        n = machine.nodes
        across = BUS_FACTOR["allreduce"] * (n - 1) / n * result.grad_bytes / inter
        return exposed + across, overlapped, across
    return exposed, overlapped, exposed + overlapped


def _assemble(
    cfg: DictConfig,
    machine: Machine,
    result: RankResult,
    policy: str,
    reference: str | None,
    n_blocks: int,
    hsdp: bool = False,
) -> Plan:
    """``cfg``: the config one rank runs (its share of the batch; HSDP as FSDP)."""
    t = cfg.training
    tokens = t.batch_size * t.gradient_accumulation_steps * machine.gpus * cfg.dataset.max_length
    compute = result.flops / (machine.peak_tflops * 1e12 * machine.mfu)
    exposed, overlapped, inter_node = _comm_seconds(result, machine, hsdp)
    comm = exposed + max(0.0, overlapped - compute)
    step = compute + comm
    total = max(1, round(cfg.training.n_epochs * cfg.data_sampling.n_samples))
    steps = (total // machine.gpus) // (t.batch_size * t.gradient_accumulation_steps)
    train_peak = sum(result.categories.values())
    return Plan(
        stage=cfg.experiment.stage,
        gpus=machine.gpus,
        distributed=cfg.runtime.distributed,
        per_gpu_peak_gb=round(result.peak_bytes / GB, 6),
        training_peak_gb=round(train_peak / GB, 6),
        validation_peak_gb=round(result.validation_peak_bytes / GB, 6),
        reference_pass_peak_gb=round(result.reference_peak_bytes / GB, 6),
        gpu_memory_gb=machine.gpu_memory_gb,
        components=_components(result),
        host_ram_gb_per_node=0.0,
        tokens_per_step=tokens,
        flops_per_step=result.flops * machine.gpus,
        step_time_s=round(step, 6),
        compute_time_s=round(compute, 6),
        comm_time_s=round(comm, 6),
        optimizer_steps=steps,
        run_hours=round(steps * step / 3600, 2),
        mfu=machine.mfu,
        peak_tflops=machine.peak_tflops,
        interconnect_gbps=machine.interconnect_gbps,
        policy_shape=policy,
        n_blocks=n_blocks,
        reference_shape=reference,
        assumptions=_assumptions(cfg, result.validation_peak_bytes > train_peak, machine, hsdp),
        nodes=machine.nodes,
        gpus_per_node=machine.gpus_per_node,
        inter_node_gbps=machine.inter_node_gbps,
        inter_node_time_s=round(inter_node, 6),
        micro_batch=(int(t.batch_size), int(t.gradient_accumulation_steps)),
        communicators=communicators(machine, hsdp),
        allocator_ratio=allocator_ratio(),
    )


def _assumptions(
    cfg: DictConfig, validation_is_peak: bool, machine: Machine, hsdp: bool
) -> list[str]:
    out = [
        f"every sequence fills dataset.max_length ({cfg.dataset.max_length}) and every "
        "token is a response token (the memory upper bound of a batch)",
        "simulated on fake CPU tensors with CPU autocast: the figures are live tensors "
        "(torch.cuda.max_memory_allocated); the fit rule adds the allocator's reserved/"
        "allocated ratio (measured on an H200), the CUDA context and NCCL's buffers",
        "FLOPs: matmuls and attention as counted by torch's FlopCounterMode (includes "
        "activation-checkpoint recomputation); validation time is not included",
    ]
    if machine.nodes > 1:
        out.append(
            f"{machine.nodes} nodes keep one node's global batch: each GPU runs "
            f"{cfg.training.batch_size} x {cfg.training.gradient_accumulation_steps} "
            "micro-batches per optimizer step"
            + (
                "; hsdp: sharded within a node, the cross-node gradient all-reduce exposed"
                if hsdp
                else f"; {cfg.runtime.distributed}: every collective at the inter-node speed"
            )
        )
    if validation_is_peak:
        out.append("the peak is validation's (training.batch_size x 4 sequences, no grad)")
    if cfg.experiment.stage == "rho1":
        out.append(
            "rho1: the reference scores the training records before training and is "
            "released (its pass is planned separately: reference_pass_peak_gb)"
        )
    return out


def find_fix(
    cfg: DictConfig, machine: Machine, policy_shape: str | None, reference_shape: str | None
) -> str:
    """The first change (cheapest first) whose simulated plan fits, as override text:
    FSDP; then activation checkpointing on as few blocks as needed; then smaller
    micro-batches with more accumulation (the same effective batch)."""

    def plan_of(change: dict[str, object]) -> Plan:
        kv = " ".join(f"{k}={v}" for k, v in change.items())
        print(f"plan: does not fit; trying {kv} ...", file=sys.stderr, flush=True)
        return make_plan(_with(cfg, change), machine, policy_shape, reference_shape, fix=False)

    def text(change: dict[str, object], plan: Plan) -> str:
        kv = " ".join(f"{k}={v}" for k, v in change.items())
        return f"{kv} (plan: {plan.per_gpu_peak_gb:.1f} GB per GPU)"

    change: dict[str, object] = {}
    if cfg.runtime.distributed == "ddp" and machine.gpus > 1:
        change["runtime.distributed"] = "fsdp"
        plan = plan_of(change)
        if plan.fits:
            return text(change, plan)
    b, a = cfg.training.batch_size, cfg.training.gradient_accumulation_steps
    while True:
        found = least_checkpointing(cfg, machine, change, plan_of)
        if found is not None:
            return text(*found)
        if b == 1:
            return "no change found: use more GPUs or GPUs with more memory"
        b, a = math.ceil(b / 2), a * 2
        change |= {"training.batch_size": b, "training.gradient_accumulation_steps": a}


def least_checkpointing(cfg, machine, change, plan_of) -> tuple[dict, Plan] | None:  # noqa: ANN001
    """Activation checkpointing on the fewest blocks that fit, or None if all do not: the
    saving per block is measured (none vs all), a first count derived from it, then
    counts are simulated down while they fit (or up until one does)."""
    none = plan_of(change | {"training.activation_checkpointing": False})
    limit = none.usable_gb or 0.0
    if none.fits:
        return change | {"training.activation_checkpointing": False}, none
    full = {**change, "training.activation_checkpointing": True}
    full_plan = plan_of(full | {"training.activation_checkpointing_blocks": None})
    if not full_plan.fits:
        return None
    n_blocks = _n_blocks(full_plan)
    per_block = (none.per_gpu_peak_gb - full_plan.per_gpu_peak_gb) / n_blocks
    n = max(1, math.ceil((none.per_gpu_peak_gb - limit) / max(per_block, 1e-9)))
    best: tuple[dict, Plan] = (full, full_plan)
    tried: dict[int, Plan] = {}
    while 0 < n < n_blocks and n not in tried:
        part = full | {"training.activation_checkpointing_blocks": n}
        tried[n] = plan = plan_of(part)
        if plan.fits:
            best = part, plan
            n -= 1
        elif n + 1 in tried:  # n + 1 fits: the fewest
            break
        else:
            n += 1
    return best


def _n_blocks(plan: Plan) -> int:
    """Blocks of the planned policy (trunk + heads)."""
    return int(plan.n_blocks)


def _with(cfg: DictConfig, change: dict[str, object]) -> DictConfig:
    new = copy.deepcopy(cfg)
    for key, value in change.items():
        OmegaConf.update(new, key, value)
    return new
