"""The plan against one real GPU: planned vs measured peak memory, tokens/s and MFU.

For each stage the plan simulates rank 0 of the run on fake tensors
(``weighted_mtp.plan.simulate.simulate_rank``, what ``python -m weighted_mtp plan`` runs),
then the same rank runs for real on the device (``run_rank``: build on the meta device,
load random bf16 weights, one tracked optimizer step with the optimizer state resident and
a validation batch, then ``--steps`` timed optimizer steps). Prints, per stage:

- planned peak, the tracker's measured peak (the same tracker the plan uses),
  ``torch.cuda.max_memory_allocated`` (what the caching allocator handed out) and
  ``torch.cuda.max_memory_reserved`` (what it took from the GPU), and ratios;
- median seconds per optimizer step, tokens/s, achieved TFLOP/s (FLOPs counted by torch's
  FlopCounterMode over the step, recompute included) and MFU against ``--peak-tflops``
  (default: the datasheet's dense bf16 peak of the device, by name: A100 312, H100 / H200
  989) and against a bf16 matrix product measured in the same run.

``--world N``: rank 0 of an N-GPU run, measured for real on this one device with torch's
``fake`` process group: FSDP2 shards the model N ways and allocates its all-gather /
reduce-scatter buffers as a real rank does; the collectives do nothing (so s/step has no
communication in it). With ``--profile vessl`` / ``--profile vessl_a100_40gb`` the run is
the shipped profile at full shape (its batch, accumulation, sequence length, activation
checkpointing; the model shapes of ``conf/shapes/``: Meta's 7B MTP, Sheared-LLaMA-2.7B as
rho1's reference). ``--overrides`` passes Hydra overrides through (``training.compile=true``).

Model presets without ``--profile`` (``--preset``): ``7b-8`` is Meta's 7B MTP shape (dim
4096, 32 heads, vocab 32000, 4 heads) cut to 8 blocks (4 trunk + 4 head blocks); ``1b`` a
1.1B Llama shape (dim 2048, 22 blocks, 32 heads, 4 KV heads) with 4 MTP heads. Their Rho-1
reference is a small Llama of the same vocabulary (its memory is the scoring pass).

    python benchmarks/gpu.py --world 4 --profile vessl            # rank 0 of 4 x A100-80GB
    python benchmarks/gpu.py --world 4 --profile vessl --overrides training.compile=true
    python benchmarks/gpu.py --preset 7b-8 --stages baseline,critic,verifiable,rho1
    python benchmarks/gpu.py --preset 1b --lora            # LoRA adapters, frozen bf16 base
    python benchmarks/gpu.py --small --device cpu --world 2  # a smoke run without a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from unittest import mock

import torch

from weighted_mtp import cuda_alloc, distributed
from weighted_mtp.config.loader import compose
from weighted_mtp.distributed import DistInfo
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
from weighted_mtp.plan import shapes
from weighted_mtp.plan.fake import fake_process_group
from weighted_mtp.plan.simulate import run_rank, simulate_rank

PRESETS = {
    "7b-8": dict(dim=4096, n_layers=8, n_heads=32, vocab_size=32000),
    "1b": dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000),
    "small": dict(dim=128, n_layers=6, n_heads=4, vocab_size=1024),
}
# dense bf16 datasheet peaks (SXM), matched in the device name; the first match wins
PEAK_TFLOPS = (("A100", 312.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0))
PROFILES = ("vessl", "vessl_a100_40gb")


def datasheet_tflops(name: str) -> float:
    """The dense bf16 peak of a device by its name; NaN when unknown (e.g. a CPU)."""
    return next((tf for key, tf in PEAK_TFLOPS if key in name.upper()), float("nan"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="7b-8")
    p.add_argument(
        "--profile",
        choices=PROFILES,
        help="the shipped profile at full shape (model from conf/shapes/; its batch, "
        "accumulation, length, checkpointing); --seq/--batch/--accum/--ac-blocks ignored",
    )
    p.add_argument("--world", type=int, default=1, help="rank 0 of N GPUs (fake process group)")
    p.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra overrides passed through, e.g. training.compile=true",
    )
    p.add_argument("--small", action="store_true", help="preset small, seq 128, batch 2")
    p.add_argument("--stages", default="baseline,critic,verifiable,rho1")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--ac-blocks", type=int, default=0, help="activation-checkpointed blocks")
    p.add_argument("--lora", action="store_true", help="models.policy.lora.enabled=true")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps (median)")
    p.add_argument(
        "--no-plan",
        action="store_true",
        help="skip the plan's simulation (planned = nan; e.g. a second run with "
        "training.compile=true, which the plan does not model)",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense bf16 peak of the device (default: by device name, A100 312, H100/H200 989)",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", help="also write the rows to this file")
    return p


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """bf16 n*n*n matrix products per second on ``device`` (the practical ceiling)."""
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def config(a: argparse.Namespace, stage: str):
    dist = "fsdp" if a.world > 1 else "ddp"
    if a.profile:  # the profile as shipped (it sets runtime.distributed=fsdp itself)
        return compose(
            [f"stage={stage}", f"profile={a.profile}", "runtime.gpu_memory_gb=null",
             f"runtime.device={a.device}", *a.overrides]
        )  # fmt: skip
    ac = a.ac_blocks > 0
    return compose(
        [
            f"stage={stage}",
            "profile=vessl",
            "runtime.gpu_memory_gb=null",
            f"runtime.device={a.device}",
            f"runtime.distributed={dist}",
            f"dataset.max_length={a.seq}",
            f"training.batch_size={a.batch}",
            f"training.gradient_accumulation_steps={a.accum}",
            f"training.activation_checkpointing={ac}",
            f"training.activation_checkpointing_blocks={a.ac_blocks if ac else 'null'}",
            f"models.policy.lora.enabled={a.lora and stage != 'critic'}",
            *a.overrides,
        ]
    )


def gathered_copies(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """``distributed.all_gather_rows`` on the fake process group with real tensors: every
    rank holds this rank's rows (the buffers a real gather allocates, with sane values)."""
    return [t.clone() for _ in range(info.world_size)]


@contextlib.contextmanager
def world(n: int):
    """Rank 0 of ``n`` (torch's fake process group) around a real run; nothing for 1."""
    if n <= 1:
        yield
        return
    with (
        fake_process_group(0, n),
        mock.patch.object(distributed, "all_gather_rows", gathered_copies),
    ):
        yield


def run_stage(a: argparse.Namespace, stage: str, args: ModelArgs, ref: dict) -> dict:
    cfg = config(a, stage)
    reference = ref if stage == "rho1" else None
    device = torch.device(a.device)
    t0 = time.perf_counter()
    planned = float("nan") if a.no_plan else simulate_rank(cfg, args, reference, a.world).peak_bytes
    plan_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with world(a.world):
        info = DistInfo(0, a.world, 0)
        result = run_rank(cfg, args, reference, info, device, timed_steps=a.steps)
    cuda = device.type == "cuda"
    allocated = torch.cuda.max_memory_allocated(device) if cuda else 0
    reserved = torch.cuda.max_memory_reserved(device) if cuda else 0
    step_s = statistics.median(result.step_seconds)
    t = cfg.training
    tokens = cfg.dataset.max_length * t.batch_size * t.gradient_accumulation_steps
    tflops = result.flops / step_s / 1e12
    return {
        "stage": stage,
        "world": a.world,
        "profile": a.profile,
        "overrides": list(a.overrides),
        "lora": bool(cfg.models.policy.lora.enabled),
        "sharded": result.sharded,
        "planned_gb": planned / 1e9,
        "tracked_gb": result.peak_bytes / 1e9,
        "cuda_max_allocated_gb": allocated / 1e9,
        "cuda_max_reserved_gb": reserved / 1e9,
        "planned/tracked": planned / result.peak_bytes,
        "planned/allocated": planned / allocated if allocated else None,
        "reserved/allocated": reserved / allocated if allocated else None,
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,  # this rank's
        "flops_per_step": result.flops,
        "tflops": tflops,
        "mfu": tflops / a.peak_tflops,
        "plan_s": plan_s,
    }


def model_shapes(a: argparse.Namespace) -> tuple[ModelArgs, dict]:
    """The policy and rho1's reference: the profile's (conf/shapes/) or a preset's."""
    if a.profile and not a.small:
        cfg = compose([f"profile={a.profile}"])
        policy = shapes.resolve(None, cfg.models.policy.path, "params.json", "policy")
        ref = shapes.resolve(None, cfg.models.reference.path, "config.json", "reference")
        return shapes.policy_args(policy), ref.data
    args = ModelArgs(**PRESETS[a.preset], multiple_of=256, n_future_tokens=4)
    ref = {  # a small Llama of the same vocabulary for rho1
        "model_type": "llama",
        "hidden_size": min(args.dim, 1024),
        "intermediate_size": 2 * min(args.dim, 1024),
        "num_attention_heads": 8 if args.dim >= 512 else 4,
        "num_hidden_layers": 4,
        "vocab_size": args.vocab_size,
    }
    return args, ref


def main(argv: list[str] | None = None) -> int:
    alloc = cuda_alloc.configure()  # before CUDA initialises
    a = _parser().parse_args(argv)
    if a.world < 1 or a.steps < 1:
        raise SystemExit(f"--world {a.world} / --steps {a.steps}: both must be >= 1")
    if a.small:
        a.preset, a.seq, a.batch = "small", 128, 2
        if a.profile:  # the profile's settings at the small shape
            a.overrides = ["dataset.max_length=128", "training.batch_size=2",
                           "training.gradient_accumulation_steps=1", *a.overrides]  # fmt: skip
    args, ref = model_shapes(a)
    device = torch.device(a.device)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in MTPTransformer(args).parameters())
    ceiling = matmul_tflops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if a.peak_tflops is None:
        a.peak_tflops = datasheet_tflops(name)
    what = f"profile {a.profile}" if a.profile else f"preset {a.preset}"
    print(
        f"{name}; torch {torch.__version__}; bf16 matmul {ceiling:.0f} TFLOP/s measured, "
        f"{a.peak_tflops:.0f} datasheet peak; {alloc.params()}\n"
        f"{what}: {args.n_layers} blocks, dim {args.dim}, {n_params / 1e9:.2f}B parameters; "
        f"rank 0 of {a.world}; overrides {a.overrides or 'none'}",
        flush=True,
    )
    print(
        f"{'stage':<11} {'planned GB':>10} {'tracked GB':>10} {'alloc GB':>9} "
        f"{'reserv GB':>9} {'p/t':>6} {'p/a':>6} {'s/step':>7} {'tok/s':>8} {'TFLOP/s':>8} "
        f"{'MFU':>6} {'MFU*':>6}",
        flush=True,
    )
    rows = []
    for stage in a.stages.split(","):
        r = run_stage(a, stage, args, ref)
        r["mfu_of_measured_matmul"] = r["tflops"] / ceiling
        rows.append(r)
        pa = f"{r['planned/allocated']:.3f}" if r["planned/allocated"] else "-"
        print(
            f"{stage:<11} {r['planned_gb']:>10.2f} {r['tracked_gb']:>10.2f} "
            f"{r['cuda_max_allocated_gb']:>9.2f} {r['cuda_max_reserved_gb']:>9.2f} "
            f"{r['planned/tracked']:>6.3f} {pa:>6} {r['step_s']:>7.3f} "
            f"{r['tokens_per_s']:>8.0f} {r['tflops']:>8.1f} {r['mfu']:>6.3f} "
            f"{r['mfu_of_measured_matmul']:>6.3f}",
            flush=True,
        )
    print(
        "p/t: planned / tracked; p/a: planned / cuda max allocated; MFU vs the datasheet "
        "peak, MFU* vs the measured matmul; tok/s of this rank (no communication time)"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"preset": a.preset, "profile": a.profile, "world": a.world,
                       "params": n_params, "matmul_tflops": ceiling,
                       "peak_tflops": a.peak_tflops, "device": name,
                       "cuda_alloc": alloc.params(), "rows": rows}, f, indent=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
