"""``python -m weighted_mtp plan`` and ``wmtp-plan``: will this run fit, how long will it take?

Reads no weights, tokenizer or data: only the shape files (``params.json`` of the policy,
``config.json`` of the Rho-1 reference; built-in shapes in ``conf/shapes/``). Simulates one
rank's optimizer step and a validation batch of the config with the project's own code on
fake tensors (``weighted_mtp.plan.simulate``) and prints memory per GPU by component, host
RAM per node, tokens, FLOPs and time per step, and whether it fits the GPU.

Exit status: 0 when it fits (or no GPU memory is known), 3 when it does not, 2 on user
errors.
"""

from __future__ import annotations

import argparse

from omegaconf import DictConfig

from weighted_mtp.plan.build import Machine, make_plan
from weighted_mtp.plan.report import Plan

HELP = "memory/time plan of a config on N GPUs (fake tensors; no weights or data read)"
DOES_NOT_FIT_EXIT_CODE = 3


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    d = Machine()
    p.add_argument("--gpus", type=int, default=d.gpus, help=f"world size (default {d.gpus})")
    p.add_argument(
        "--gpus-per-node", type=int, default=None, help="GPUs per node (default: --gpus)"
    )
    p.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=None,
        help="memory of one GPU in GB (default: runtime.gpu_memory_gb)",
    )
    p.add_argument("--mfu", type=float, default=d.mfu, help=f"model FLOP utilisation ({d.mfu})")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=d.peak_tflops,
        help=f"dense peak of one GPU in the compute dtype (A100 bf16: {d.peak_tflops})",
    )
    p.add_argument(
        "--interconnect-gbps",
        type=float,
        default=d.interconnect_gbps,
        help=f"collective bus bandwidth in GB/s (default {d.interconnect_gbps}, A100 NVLink)",
    )
    p.add_argument(
        "--checkpoint-dtype",
        default=d.checkpoint_dtype,
        help=f"dtype of the policy's weights on disk (default {d.checkpoint_dtype})",
    )
    p.add_argument("--policy-shape", help="built-in shape (conf/shapes/) or params.json path")
    p.add_argument("--reference-shape", help="built-in shape or config.json path (rho1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from weighted_mtp.__main__ import _add_config_args

    _add_config_args(p)
    add_plan_arguments(p)


def machine_from(args: argparse.Namespace, cfg: DictConfig) -> Machine:
    memory = args.gpu_memory_gb if args.gpu_memory_gb is not None else cfg.runtime.gpu_memory_gb
    return Machine(
        gpus=args.gpus,
        gpus_per_node=args.gpus_per_node or args.gpus,
        gpu_memory_gb=memory,
        peak_tflops=args.peak_tflops,
        mfu=args.mfu,
        interconnect_gbps=args.interconnect_gbps,
        checkpoint_dtype=args.checkpoint_dtype,
    )


def plan_and_print(cfg: DictConfig, args: argparse.Namespace) -> int:
    from weighted_mtp.config.validate import validate

    validate(cfg, check_paths=False, plan=False)
    plan: Plan = make_plan(cfg, machine_from(args, cfg), args.policy_shape, args.reference_shape)
    print(plan.to_json() if args.json else plan.to_text(), flush=True)
    return DOES_NOT_FIT_EXIT_CODE if plan.fits is False else 0


def run(args: argparse.Namespace) -> int:
    from weighted_mtp.config.loader import load_flat

    return plan_and_print(load_flat(args.config, args.override), args)
