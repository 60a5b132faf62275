"""``python -m weighted_mtp plan`` and ``wmtp-plan``: will this run fit, how long will it take?

Reads no weights, tokenizer or data: only the shape files (``params.json`` of the policy,
``config.json`` of the Rho-1 reference; built-in shapes in ``conf/shapes/``). Simulates one
rank's optimizer step and a validation batch of the config with the project's own code on
fake tensors (``weighted_mtp.plan.simulate``) and prints memory per GPU by component, host
RAM per node, tokens, FLOPs and time per step, and whether it fits the GPU (the rule is
printed: see :mod:`weighted_mtp.plan.report`).

Several nodes: ``--nodes N --gpus-per-node G`` (N defaults to ``runtime.nodes`` when the
config has it, else 1; G to 4), ``--inter-node-gbps`` the network between nodes in Gbit/s
per GPU; one node's global batch is kept (:mod:`weighted_mtp.plan.build`).

Exit status: 0 when it fits (or no GPU memory is known), 3 when it does not, 2 on user
errors.
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import DictConfig, OmegaConf

from weighted_mtp.errors import UserError
from weighted_mtp.plan.build import Machine, make_plan
from weighted_mtp.plan.report import Plan

HELP = "memory/time plan of a config on N GPUs (fake tensors; no weights or data read)"
DOES_NOT_FIT_EXIT_CODE = 3


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    d = Machine()
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        help=f"world size, all nodes (default: nodes x gpus per node = {d.gpus})",
    )
    p.add_argument("--nodes", type=int, default=None, help="nodes (default: runtime.nodes, else 1)")
    p.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        help=f"GPUs per node (default: --gpus / --nodes, else {d.gpus_per_node})",
    )
    p.add_argument(
        "--inter-node-gbps",
        type=float,
        default=d.inter_node_gbps,
        help=f"network between nodes, Gbit/s per GPU (default {d.inter_node_gbps:g}: one "
        "HDR InfiniBand NIC per GPU = 25 GB/s)",
    )
    p.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=None,
        help="memory of one GPU as sold, in GB = GiB: 80 for an A100-80GB, i.e. 85.9e9 "
        "bytes (default: runtime.gpu_memory_gb)",
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
        help=f"NCCL bus bandwidth within a node, GB/s (default {d.interconnect_gbps:g}, A100 "
        "NVLink)",
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


def _positive(flag: str, value: float | None, example: str, integer: bool = True) -> None:
    if value is not None and not value > 0:
        kind = "an integer >= 1" if integer else "> 0"
        raise UserError(f"{flag} {value:g}: must be {kind}; e.g. {flag} {example}")


def machine_from(args: argparse.Namespace, cfg: DictConfig) -> Machine:
    """The machine of the flags; the config's ``runtime.nodes`` when ``--nodes`` is not
    given. UserError (exit 2) for a count < 1, a bandwidth <= 0 or an inconsistent
    ``--gpus``."""
    memory = args.gpu_memory_gb if args.gpu_memory_gb is not None else cfg.runtime.gpu_memory_gb
    _positive("--nodes", args.nodes, "2")
    _positive("--gpus", args.gpus, "4")
    _positive("--gpus-per-node", args.gpus_per_node, "4")
    for flag, value, example in (
        ("--inter-node-gbps", args.inter_node_gbps, "200"),
        ("--interconnect-gbps", args.interconnect_gbps, "200"),
        ("--gpu-memory-gb", args.gpu_memory_gb, "80"),
        ("--peak-tflops", args.peak_tflops, "312"),
    ):
        _positive(flag, value, example, integer=False)
    if not 0 < args.mfu <= 1:
        raise UserError(f"--mfu {args.mfu:g}: must be in (0, 1]; e.g. --mfu 0.4")
    nodes = args.nodes
    if nodes is None:
        nodes = OmegaConf.select(cfg, "runtime.nodes", default=None)
        nodes = 1 if nodes is None else nodes
        if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
            raise UserError(f"runtime.nodes = {nodes!r}: must be an integer >= 1; e.g. 1")
    per_node = args.gpus_per_node
    if per_node is None:
        per_node = args.gpus // nodes if args.gpus else Machine.gpus_per_node
    gpus = nodes * per_node
    if args.gpus is not None and args.gpus != gpus:
        raise UserError(
            f"--gpus {args.gpus}: not --nodes {nodes} x --gpus-per-node {per_node} = {gpus}; "
            "give --nodes and --gpus-per-node only"
        )
    return Machine(
        gpus=gpus,
        gpus_per_node=per_node,
        gpu_memory_gb=memory,
        peak_tflops=args.peak_tflops,
        mfu=args.mfu,
        interconnect_gbps=args.interconnect_gbps,
        checkpoint_dtype=args.checkpoint_dtype,
        nodes=nodes,
        inter_node_gbps=args.inter_node_gbps,
    )


def plan_and_print(cfg: DictConfig, args: argparse.Namespace) -> int:
    from weighted_mtp.config.validate import validate

    machine = machine_from(args, cfg)
    validate(cfg, check_paths=False, plan=False)
    print(
        f"plan: simulating one rank of stage {cfg.experiment.stage} on {machine.gpus} GPU(s) "
        "with fake tensors (about a minute on a laptop CPU) ...",
        file=sys.stderr,
        flush=True,
    )
    plan: Plan = make_plan(cfg, machine, args.policy_shape, args.reference_shape)
    print(plan.to_json() if args.json else plan.to_text(), flush=True)
    return DOES_NOT_FIT_EXIT_CODE if plan.fits is False else 0


def run(args: argparse.Namespace) -> int:
    from weighted_mtp.config.loader import load_flat

    return plan_and_print(load_flat(args.config, args.override), args)
