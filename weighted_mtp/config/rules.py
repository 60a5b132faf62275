"""The rules of this tool's config fields, each adding its problems to the validator's
:class:`~weighted_mtp.config.problems.Checker`: ranges, the allowed values (imported from
the modules that implement them), the fields a stage requires, LoRA, the weighting's
parameter addresses, the curriculum, and the memory plan when a GPU size is given."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.utils import get_class

from weighted_mtp.config import checks
from weighted_mtp.data.curriculum import BINS_KEY, SCHEDULE_KEY, curriculum_problems
from weighted_mtp.errors import UserError
from weighted_mtp.models.formats import DTYPE_NAMES
from weighted_mtp.models.value_head import VALUE_HEAD_TYPES
from weighted_mtp.training.optim import SCHEDULES as LR_SCHEDULERS
from weighted_mtp.training.parallel import PARALLELISMS
from weighted_mtp.training.runtime import AMP_DTYPES, DEVICES
from weighted_mtp.training.task import POLICY_RECORDS
from weighted_mtp.training.value import LOSS_TYPES
from weighted_mtp.weighting.rho1 import SCOPES as RHO1_SCOPES
from weighted_mtp.weighting.td import ADVANTAGE_NORMS

if TYPE_CHECKING:
    from weighted_mtp.config.problems import Checker


def plan(c: Checker) -> None:
    """Simulate the run (fake tensors, no weights read) and fail when it would not fit."""
    import sys

    from weighted_mtp.distributed import env_info, node_count
    from weighted_mtp.plan.build import Machine, make_plan

    memory = float(c.get("runtime.gpu_memory_gb"))
    c.range("runtime.gpu_memory_gb", memory > 0, "> 0", "80")
    if memory <= 0:
        return
    info = env_info()
    gpus = info.world_size if info.enabled else Machine.gpus
    if c.get("runtime.distributed") == "hsdp":  # per GPU: FSDP over one node's GPUs
        gpus = max(1, gpus // max(1, node_count(info, c.get("runtime.nodes"))))
    try:
        result = make_plan(c.cfg, Machine(gpus=gpus, gpus_per_node=gpus, gpu_memory_gb=memory))
    except UserError as exc:  # no shape file: say so, but do not block the run
        print(f"warning: runtime.gpu_memory_gb is set but the run was not planned: {exc}",
              file=sys.stderr)  # fmt: skip
        return
    if result.fits is False:
        c.add(
            "runtime.gpu_memory_gb",
            memory,
            f"the plan of this config on {gpus} GPUs needs {result.per_gpu_peak_gb:.1f} GB per "
            f"GPU; it {result.fit_rule()}",
            f"{result.fix} (see python -m weighted_mtp plan)",
        )


def _num(c: Checker, key: str) -> float | None:
    value = c.get(key)
    return None if value is None else float(value)


def ranges(c: Checker) -> None:
    lr = _num(c, "training.learning_rate")
    c.range("training.learning_rate", lr is None or 0 < lr <= 1, "0 < learning_rate <= 1", "1e-5")
    for key, example in (
        ("training.batch_size", "8"),
        ("training.n_epochs", "1.0"),
        ("training.gradient_accumulation_steps", "1"),
        ("training.max_grad_norm", "1.0"),
        ("training.log_interval", "1"),
        ("training.loss_chunk_size", "1024"),
        ("dataset.max_length", "2048"),
        ("data_sampling.n_samples", "1000"),
        ("training.eval_samples", "64"),
    ):
        v = _num(c, key)
        c.range(key, v is None or (v > 0 and math.isfinite(v)), "> 0", example)
    for key, rule in (
        ("checkpoint.save_checkpoint_every", ">= 0 (0: no periodic checkpoints)"),
        ("checkpoint.save_total_limit", ">= 0 (0: keep every periodic checkpoint)"),
        ("training.weight_decay", ">= 0"),
        ("models.value_head.hidden_dim", ">= 0 (0: the model's dim)"),
        ("training.activation_checkpointing_blocks", ">= 0 (null: every block)"),
        ("training.frozen_trunk_cache_mb", ">= 0 (0: off)"),
    ):
        v = _num(c, key)
        c.range(key, v is None or v >= 0, rule, "0")
    w = _num(c, "training.warmup_ratio")
    c.range("training.warmup_ratio", w is None or 0 <= w < 1, "0 <= warmup_ratio < 1", "0.05")
    m = _num(c, "training.min_lr_ratio")
    c.range("training.min_lr_ratio", m is None or 0 <= m <= 1, "0 <= min_lr_ratio <= 1", "0.1")
    lam = _num(c, "training.lam")
    c.range("training.lam", lam is None or 0 <= lam <= 1, "0 <= lam <= 1", "1.0")
    g = _num(c, "training.gamma")
    c.range("training.gamma", g is None or 0 < g <= 1, "0 < gamma <= 1", "1.0")
    ratio = _num(c, "data_sampling.correct_ratio")
    c.range(
        "data_sampling.correct_ratio",
        ratio is None or 0 <= ratio <= 1,
        "0 <= correct_ratio <= 1",
        "0.5",
    )
    k = _num(c, "training.k_percent")
    c.range("training.k_percent", k is None or 0 < k <= 1, "0 < k_percent <= 1", "0.6")
    for key, example in (("training.temperature", "1.0"), ("training.beta", "0.9")):
        v = _num(c, key)
        c.range(key, v is None or v > 0, "> 0", example)
    vc = _num(c, "training.value_coef")
    c.range("training.value_coef", vc is None or vc >= 0, ">= 0", "0.5")
    lo, hi = _num(c, "training.weight_clip_min"), _num(c, "training.weight_clip_max")
    c.range("training.weight_clip_min", lo is None or lo >= 0, ">= 0", "0.1")
    if lo is not None and hi is not None and not lo < hi:
        c.add(
            "training.weight_clip_min",
            lo,
            f"must be < training.weight_clip_max ({hi})",
            "e.g. --override training.weight_clip_min=0.1 --override training.weight_clip_max=5.0",
        )
    batch, n = c.get("training.batch_size"), c.get("data_sampling.n_samples")
    if batch is not None and n is not None and 0 < n < batch:  # n <= 0: reported above
        c.add(
            "training.batch_size",
            batch,
            f"must be <= data_sampling.n_samples ({n})",
            f"--override training.batch_size={n} or raise data_sampling.n_samples",
        )
    c.choice("models.policy.dtype", DTYPE_NAMES)
    c.choice("models.reference.dtype", DTYPE_NAMES)
    c.choice("training.loss_type", LOSS_TYPES)
    if c.get("training.selection_scope") is not None:
        c.choice("training.selection_scope", RHO1_SCOPES)
    c.choice("training.advantage_norm", ADVANTAGE_NORMS)
    c.choice("training.policy_records", POLICY_RECORDS)
    lam = _num(c, "training.advantage_lambda")
    c.range("training.advantage_lambda", lam is None or 0 <= lam <= 1, "0 <= lambda <= 1", "0.9")
    c.choice("training.lr_scheduler", LR_SCHEDULERS)
    c.choice("runtime.amp_dtype", list(AMP_DTYPES))
    c.choice("models.value_head.type", VALUE_HEAD_TYPES)
    c.choice("runtime.distributed", list(PARALLELISMS))
    nodes(c)
    resume = c.get("checkpoint.resume")
    if resume and resume != "auto" and not Path(resume).exists():
        c.add(
            "checkpoint.resume",
            resume,
            "is not a checkpoint (a file, or an fsdp checkpoint directory)",
            '--override checkpoint.resume=auto, a checkpoint path, or "" to start fresh',
        )
    device = c.get("runtime.device")
    if device is not None and (device.split(":")[0] not in DEVICES or not checks.parses(device)):
        c.add(
            "runtime.device",
            device,
            f"must be one of {', '.join(DEVICES)} (cuda:N for one GPU)",
            "--override runtime.device=auto",
        )
    from weighted_mtp.training.checkpoint.compat import ALLOWABLE

    allowed = c.get("checkpoint.allow_config_change") or []
    for name in allowed:
        if name not in ALLOWABLE:
            c.add(
                "checkpoint.allow_config_change",
                list(allowed),
                f"{name!r} is not a field resume checks (those are: {', '.join(ALLOWABLE)})",
                "list only fields from that list",
            )


def nodes(c: Checker) -> None:
    """``runtime.nodes`` >= 1; under hsdp (several ranks) the ranks split evenly over the
    nodes, configured or told by the launcher (torchrun, Slurm)."""
    from weighted_mtp.distributed import env_info, node_count

    n = c.get("runtime.nodes")
    ok = n is None or n >= 1
    c.range("runtime.nodes", ok, ">= 1 (null: from the launcher's environment)", "2")
    info = env_info()
    if not ok or c.get("runtime.distributed") != "hsdp" or not info.enabled:
        return
    if n is None and info.nodes is None:
        c.add(
            "runtime.nodes",
            None,
            f"runtime.distributed=hsdp: the launcher does not tell how many nodes these "
            f"{info.world_size} ranks run on (torchrun's LOCAL_WORLD_SIZE, Slurm's SLURM_NNODES)",
            "--override runtime.nodes=<the number of nodes>",
        )
        return
    n = node_count(info, n)
    if info.world_size % n:
        c.add(
            "runtime.nodes",
            n,
            f"runtime.distributed=hsdp shards within a node: the {info.world_size} ranks must "
            f"split evenly over the {n} nodes (world size % nodes == 0)",
            "--override runtime.nodes=<the number of nodes>, with the same number of "
            "processes on every node",
        )


_STAGE_REQUIRED = {
    "verifiable": (
        "training.beta",
        "training.value_coef",
        "training.weight_clip_min",
        "training.weight_clip_max",
        "experiment.critic_checkpoint",
    ),
    "rho1": (
        "models.reference.path",
        "training.temperature",
        "training.k_percent",
        "training.selection_scope",
    ),
}


def stage_fields(c: Checker, stage: str | None) -> None:
    for key in _STAGE_REQUIRED.get(stage or "", ()):
        c.require(key, f"is required for stage {stage}")


def lora(c: Checker, stage: str | None) -> None:
    """``models.policy.lora``: ranges, known target modules, a stage that trains the policy."""
    from weighted_mtp.models.lora import TARGETS

    key = "models.policy.lora"
    r, alpha, dropout = (_num(c, f"{key}.{k}") for k in ("r", "alpha", "dropout"))
    c.range(f"{key}.r", r is None or r >= 1, ">= 1", "16")
    c.range(f"{key}.alpha", alpha is None or alpha > 0, "> 0", "32")
    c.range(f"{key}.dropout", dropout is None or 0 <= dropout < 1, "0 <= dropout < 1", "0.05")
    targets = list(c.get(f"{key}.target_modules") or [])
    unknown = [t for t in targets if t not in TARGETS]
    problem = (
        "is empty" if not targets
        else f"names unknown module(s) {', '.join(map(repr, unknown))}" if unknown
        else "has duplicates" if len(set(targets)) != len(targets)
        else None
    )  # fmt: skip
    if problem:
        c.add(
            f"{key}.target_modules",
            targets,
            f"{problem}: must list distinct Meta-layout linear layers out of {', '.join(TARGETS)}",
            f"--override '{key}.target_modules=[wq,wk,wv,wo,w1,w2,w3]'",
        )
    if c.get(f"{key}.enabled") and stage == "critic":
        c.add(
            f"{key}.enabled",
            True,
            "the critic stage trains no policy weights (the policy is frozen), so adapters "
            "would never change",
            f"--override {key}.enabled=false (use LoRA for baseline, verifiable or rho1)",
        )


def trunk_cache(c: Checker, stage: str | None) -> None:
    """``training.frozen_trunk_cache_mb``: only where the trunk is frozen (critic) and
    replicated (a sharded trunk's forward is a collective every rank must join)."""
    key = "training.frozen_trunk_cache_mb"
    mb = _num(c, key)
    if not mb or mb < 0:
        return
    if stage != "critic":
        c.add(
            key,
            mb,
            f"stage {stage} trains the policy's trunk, so its outputs change every step; only "
            "the critic's trunk is frozen",
            f"--override {key}=0 (or use it with stage=critic)",
        )
    elif c.get("runtime.distributed") in ("fsdp", "hsdp"):
        c.add(
            key,
            mb,
            f"a sharded ({c.get('runtime.distributed')}) trunk's forward all-gathers on every "
            "rank, and a cache hit on one rank would skip it",
            f"--override runtime.distributed=ddp (a frozen bf16 trunk fits replicated) "
            f"or --override {key}=0",
        )


def weighting(c: Checker) -> None:
    """A weighting argument whose address is a ``training.*`` field (the class's
    ``config_fields``) must follow it: ``weighting.beta`` set apart from ``training.beta``
    would train with one value and track the other."""
    target = c.get("weighting._target_")
    if not target:
        return
    try:
        cls = get_class(str(target))
    except Exception:  # noqa: BLE001 - instantiate reports a bad target with its cause
        return
    for arg, field in getattr(cls, "config_fields", {}).items():
        value, address = c.get(f"weighting.{arg}"), c.get(field)
        if value is not None and address is not None and value != address:
            c.add(
                f"weighting.{arg}",
                value,
                f"differs from {field} = {address!r}, the address of this parameter",
                f"set {field}={value} and leave weighting.{arg} as ${{{field}}}",
            )


def curriculum(c: Checker) -> None:
    if c.get("data_sampling.curriculum_learning"):
        bins = c.get(BINS_KEY) or {}
        for problem in curriculum_problems(bins, c.get(SCHEDULE_KEY) or []):
            c.add(*problem)
