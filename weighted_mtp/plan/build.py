"""From a composed config to a :class:`~weighted_mtp.plan.report.Plan`.

Memory, FLOPs and collectives come from :func:`~weighted_mtp.plan.simulate.simulate_rank`
(the loop's own step on fake tensors). Time is derived from them at a stated MFU and
interconnect bandwidth. When the run does not fit, :func:`find_fix` simulates the changes
a user would make, cheapest first, and names the first one that fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from weighted_mtp.plan import shapes
from weighted_mtp.plan.host import host_ram_per_node
from weighted_mtp.plan.report import GB, HEADROOM, Plan
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
BUS_FACTOR = {"allreduce": 2.0, "allgather": 1.0, "reduce_scatter": 1.0}


@dataclass(frozen=True)
class Machine:
    gpus: int = 4
    gpus_per_node: int = 4
    gpu_memory_gb: float | None = None
    peak_tflops: float = 312.0  # A100 dense bf16
    mfu: float = 0.4
    interconnect_gbps: float = 200.0  # NCCL bus bandwidth, GB/s (A100 NVLink)
    checkpoint_dtype: str = "bfloat16"  # dtype of the policy's weights on disk


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
    result = simulate_rank(cfg, args, reference.data if reference else None, machine.gpus)
    plan = _assemble(cfg, machine, result, policy.source, reference.source if reference else None)
    plan.host_ram_gb_per_node = host_ram_per_node(cfg, args, machine) / GB
    if fix and plan.fits is False:
        plan.fix = find_fix(cfg, machine, policy_shape, reference_shape)
    return plan


def _components(result: RankResult) -> dict[str, float]:
    out: dict[str, float] = {}
    for cat, b in result.categories.items():
        name = COMPONENTS.get(cat, "activations")
        out[name] = out.get(name, 0.0) + b / GB
    for name in ("value_head", "reference"):
        b = result.module_bytes.get(name, 0)
        if b:  # their weights are tracked as parameters; shown on their own
            out["parameters"] = out.get("parameters", 0.0) - b / GB
            out[name.replace("_", " ") + (" model" if name == "reference" else "")] = b / GB
    return {k: round(v, 3) for k, v in out.items() if abs(v) >= 5e-4}


def _comm_seconds(result: RankResult, machine: Machine) -> tuple[float, float]:
    """(exposed, overlapped) seconds of this step's collectives at the interconnect speed.
    ddp's gradient all-reduce runs after every micro-batch (exposed); FSDP's all-gathers and
    reduce-scatters are prefetched / issued during backward (overlapped with compute)."""
    if machine.gpus <= 1:
        return 0.0, 0.0
    ring = (machine.gpus - 1) / machine.gpus
    exposed = overlapped = 0.0
    for op, b in result.comm_bytes.items():
        kind = next((k for k in BUS_FACTOR if k in op.replace("_", "")), None)
        kind = kind or next((k for k in BUS_FACTOR if k.replace("_", "") in op), None)
        if kind is None:
            continue
        t = BUS_FACTOR[kind] * ring * b / (machine.interconnect_gbps * GB)
        if kind == "allreduce":
            exposed += t
        else:
            overlapped += t
    return exposed, overlapped


def _assemble(
    cfg: DictConfig, machine: Machine, result: RankResult, policy: str, reference: str | None
) -> Plan:
    t = cfg.training
    tokens = t.batch_size * t.gradient_accumulation_steps * machine.gpus * cfg.dataset.max_length
    compute = result.flops / (machine.peak_tflops * 1e12 * machine.mfu)
    exposed, overlapped = _comm_seconds(result, machine)
    comm = exposed + max(0.0, overlapped - compute)
    step = compute + comm
    total = max(1, round(cfg.training.n_epochs * cfg.data_sampling.n_samples))
    steps = (total // machine.gpus) // (t.batch_size * t.gradient_accumulation_steps)
    train_peak = sum(result.categories.values())
    return Plan(
        stage=cfg.experiment.stage,
        gpus=machine.gpus,
        distributed=cfg.runtime.distributed,
        per_gpu_peak_gb=round(result.peak_bytes / GB, 3),
        training_peak_gb=round(train_peak / GB, 3),
        validation_peak_gb=round(result.validation_peak_bytes / GB, 3),
        gpu_memory_gb=machine.gpu_memory_gb,
        components=_components(result),
        host_ram_gb_per_node=0.0,
        tokens_per_step=tokens,
        flops_per_step=result.flops * machine.gpus,
        step_time_s=round(step, 3),
        compute_time_s=round(compute, 3),
        comm_time_s=round(comm, 3),
        optimizer_steps=steps,
        run_hours=round(steps * step / 3600, 2),
        mfu=machine.mfu,
        peak_tflops=machine.peak_tflops,
        interconnect_gbps=machine.interconnect_gbps,
        policy_shape=policy,
        reference_shape=reference,
        assumptions=_assumptions(cfg, result.validation_peak_bytes > train_peak),
    )


def _assumptions(cfg: DictConfig, validation_is_peak: bool) -> list[str]:
    out = [
        f"every sequence fills dataset.max_length ({cfg.dataset.max_length}) and every "
        "token is a response token (the memory upper bound of a batch)",
        "simulated on fake CPU tensors with CPU autocast; CUDA allocator fragmentation, the "
        "CUDA context (~0.5-1 GB) and NCCL's own buffers are outside the figures "
        f"(hence the {HEADROOM:.0%} headroom)",
        "FLOPs: matmuls and attention as counted by torch's FlopCounterMode (includes "
        "activation-checkpoint recomputation); validation time is not included",
    ]
    if validation_is_peak:
        out.append("the peak is validation's (training.batch_size x 4 sequences, no grad)")
    return out


def _with(cfg: DictConfig, **changes: object) -> DictConfig:
    new = OmegaConf.masked_copy(cfg, list(cfg.keys()))
    for key, value in changes.items():
        OmegaConf.update(new, key.replace("__", "."), value)
    return new


def find_fix(
    cfg: DictConfig, machine: Machine, policy_shape: str | None, reference_shape: str | None
) -> str:
    """The first change (cheapest first) whose simulated plan fits, as override text."""
    t = cfg.training
    candidates: list[dict[str, object]] = []
    if cfg.runtime.distributed == "ddp" and machine.gpus > 1:
        candidates.append({"runtime__distributed": "fsdp"})
    base = {"runtime__distributed": "fsdp"} if machine.gpus > 1 else {}
    if not t.activation_checkpointing:
        candidates.append({**base, "training__activation_checkpointing": True})
    b, a = t.batch_size, t.gradient_accumulation_steps
    while b > 1:
        b, a = math.ceil(b / 2), a * 2
        candidates.append(
            {
                **base,
                "training__activation_checkpointing": True,
                "training__batch_size": b,
                "training__gradient_accumulation_steps": a,
            }
        )
    for change in candidates:
        plan = make_plan(_with(cfg, **change), machine, policy_shape, reference_shape, fix=False)
        if plan.fits:
            text = " ".join(f"{k.replace('__', '.')}={v}" for k, v in change.items())
            return f"{text} (plan: {plan.per_gpu_peak_gb:.1f} GB per GPU)"
    return "no single change found: use more GPUs or GPUs with more memory"
