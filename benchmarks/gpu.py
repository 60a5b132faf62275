"""The plan against one real GPU: planned vs measured peak memory, tokens/s and MFU.

For each stage the plan simulates the rank of a one-GPU run of the config on fake tensors
(``weighted_mtp.plan.simulate.simulate_rank``, what ``python -m weighted_mtp plan --gpus 1``
runs), then the same rank runs for real on the GPU (``run_rank``: build on the meta device,
load random bf16 weights, one tracked optimizer step with the optimizer state resident and
a validation batch, then ``--steps`` timed optimizer steps). Prints, per stage:

- planned peak, the tracker's measured peak (the same tracker the plan uses) and
  ``torch.cuda.max_memory_allocated`` (what the caching allocator handed out), and ratios;
- median seconds per optimizer step, tokens/s, achieved TFLOP/s (FLOPs counted by torch's
  FlopCounterMode over the step, recompute included) and MFU against ``--peak-tflops`` (the
  GPU's dense bf16 peak) and against a bf16 matrix product measured in the same run.

Model presets (``--preset``): ``7b-8`` is Meta's 7B MTP shape (dim 4096, 32 heads, vocab
32000, 4 heads) cut to 8 blocks (4 trunk + 4 head blocks); ``1b`` a 1.1B Llama shape
(dim 2048, 22 blocks, 32 heads, 4 KV heads) with 4 MTP heads. The Rho-1 reference is a
small Llama of the same vocabulary (its memory is the scoring pass before training).

    python benchmarks/gpu.py --preset 7b-8 --stages baseline,critic,verifiable,rho1
    python benchmarks/gpu.py --preset 1b --lora            # LoRA adapters, frozen bf16 base
    python benchmarks/gpu.py --small --device cpu          # a smoke run without a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from weighted_mtp.config.loader import compose
from weighted_mtp.distributed import DistInfo
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
from weighted_mtp.plan.simulate import run_rank, simulate_rank

PRESETS = {
    "7b-8": dict(dim=4096, n_layers=8, n_heads=32, vocab_size=32000),
    "1b": dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000),
    "small": dict(dim=128, n_layers=6, n_heads=4, vocab_size=1024),
}
H200_BF16_TFLOPS = 989.0  # dense bf16, SXM datasheet


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="7b-8")
    p.add_argument("--small", action="store_true", help="preset small, seq 128, batch 2")
    p.add_argument("--stages", default="baseline,critic,verifiable,rho1")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--ac-blocks", type=int, default=0, help="activation-checkpointed blocks")
    p.add_argument("--lora", action="store_true", help="models.policy.lora.enabled=true")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps (median)")
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_TFLOPS)
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
    ac = a.ac_blocks > 0
    return compose(
        [
            f"stage={stage}",
            "profile=vessl",
            "runtime.gpu_memory_gb=null",
            f"runtime.device={a.device}",
            f"dataset.max_length={a.seq}",
            f"training.batch_size={a.batch}",
            f"training.gradient_accumulation_steps={a.accum}",
            f"training.activation_checkpointing={ac}",
            f"training.activation_checkpointing_blocks={a.ac_blocks if ac else 'null'}",
            f"models.policy.lora.enabled={a.lora and stage != 'critic'}",
        ]
    )


def run_stage(a: argparse.Namespace, stage: str, args: ModelArgs, ref: dict) -> dict:
    cfg = config(a, stage)
    reference = ref if stage == "rho1" else None
    device = torch.device(a.device)
    t0 = time.perf_counter()
    planned = simulate_rank(cfg, args, reference, 1).peak_bytes
    plan_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result = run_rank(cfg, args, reference, DistInfo(), device, timed_steps=a.steps)
    allocated = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    step_s = statistics.median(result.step_seconds)
    tokens = a.seq * a.batch * a.accum
    tflops = result.flops / step_s / 1e12
    return {
        "stage": stage,
        "lora": a.lora and stage != "critic",
        "planned_gb": planned / 1e9,
        "tracked_gb": result.peak_bytes / 1e9,
        "cuda_max_allocated_gb": allocated / 1e9,
        "planned/tracked": planned / result.peak_bytes,
        "planned/allocated": planned / allocated if allocated else None,
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "tflops": tflops,
        "mfu": tflops / a.peak_tflops,
        "plan_s": plan_s,
    }


def main() -> int:
    a = _parser().parse_args()
    if a.small:
        a.preset, a.seq, a.batch = "small", 128, 2
    args = ModelArgs(**PRESETS[a.preset], multiple_of=256, n_future_tokens=4)
    ref = {  # a small Llama of the same vocabulary for rho1
        "model_type": "llama",
        "hidden_size": min(args.dim, 1024),
        "intermediate_size": 2 * min(args.dim, 1024),
        "num_attention_heads": 8 if args.dim >= 512 else 4,
        "num_hidden_layers": 4,
        "vocab_size": args.vocab_size,
    }
    device = torch.device(a.device)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in MTPTransformer(args).parameters())
    ceiling = matmul_tflops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{name}; torch {torch.__version__}; bf16 matmul {ceiling:.0f} TFLOP/s measured, "
        f"{a.peak_tflops:.0f} peak\nmodel {a.preset}: {args.n_layers} blocks, dim {args.dim}, "
        f"{n_params / 1e9:.2f}B parameters; seq {a.seq}, batch {a.batch} x {a.accum}; "
        f"activation checkpointing {a.ac_blocks} blocks; lora {a.lora}",
        flush=True,
    )
    print(
        f"{'stage':<11} {'planned GB':>10} {'tracked GB':>10} {'alloc GB':>9} {'p/t':>6} "
        f"{'p/a':>6} {'s/step':>7} {'tok/s':>8} {'TFLOP/s':>8} {'MFU':>6} {'MFU*':>6}",
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
            f"{r['cuda_max_allocated_gb']:>9.2f} {r['planned/tracked']:>6.3f} {pa:>6} "
            f"{r['step_s']:>7.3f} {r['tokens_per_s']:>8.0f} {r['tflops']:>8.1f} "
            f"{r['mfu']:>6.3f} {r['mfu_of_measured_matmul']:>6.3f}",
            flush=True,
        )
    print("p/t: planned / tracked; p/a: planned / cuda max allocated; MFU* vs measured matmul")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"preset": a.preset, "params": n_params, "matmul_tflops": ceiling,
                       "device": name, "rows": rows}, f, indent=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
