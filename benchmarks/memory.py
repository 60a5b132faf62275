"""The memory plan against a real run: planned vs measured peak per rank, every stage.

For each stage and each ``runtime.distributed`` (ddp, fsdp) the plan simulates every rank
of a 2-process run on fake tensors (``weighted_mtp.plan``), then the same ranks really run
one optimizer step + a validation batch on CPU (gloo, 2 processes) with the same memory
tracker; also printed: each process's peak-RSS increase. Target: planned/measured within
15% (0.85 .. 1.15) for every rank.

    python benchmarks/memory.py              # dim 1024, 8 blocks, vocab 32000, seq 512
    python benchmarks/memory.py --small      # a tiny model, seconds per case
    python benchmarks/memory.py --stages baseline --modes fsdp --json
    python benchmarks/memory.py --fp32       # no bf16 autocast (CPUs without native bf16)

bf16 autocast is on by default, as on the cluster. A CPU without native bf16 matmul
(no AVX512-BF16/AMX) runs it ~100x slower than float32 (the 2-core development machine:
0.26 vs 36 GFLOP/s), so the mid-size cases take hours there; ``--fp32`` plans and runs
both in float32 instead (the plan is checked against the same configuration either way;
bf16 on real hardware: ``benchmarks/gpu.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from weighted_mtp.config.loader import compose
from weighted_mtp.models.mtp import ModelArgs
from weighted_mtp.plan.check import as_dict, compare

TARGET = (0.85, 1.15)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--blocks", type=int, default=8, help="blocks in total (Meta's n_layers)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--stages", default="baseline,critic,verifiable,rho1")
    p.add_argument("--modes", default="ddp,fsdp")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--small", action="store_true", help="dim 64, 6 blocks, vocab 512, seq 64")
    p.add_argument("--fp32", action="store_true", help="float32: no bf16 autocast")
    p.add_argument("--json", action="store_true")
    return p


def main() -> int:
    a = _parser().parse_args()
    if a.small:
        a.dim, a.blocks, a.heads, a.vocab, a.seq = 64, 6, 4, 512, 64
    args = ModelArgs(
        dim=a.dim, n_layers=a.blocks, n_heads=a.heads, vocab_size=a.vocab, n_future_tokens=4
    )
    reference = {  # a small Llama of the same vocabulary for rho1
        "model_type": "llama",
        "hidden_size": a.dim // 2,
        "intermediate_size": a.dim,
        "num_attention_heads": max(1, a.heads // 2),
        "num_hidden_layers": 2,
        "vocab_size": a.vocab,
    }
    rows = []
    print(
        f"model: dim {a.dim}, {a.blocks} blocks, vocab {a.vocab}; seq {a.seq}, batch "
        f"{a.batch} x {a.accum} micro-batches, {a.ranks} ranks (gloo, CPU), "
        f"{'float32' if a.fp32 else 'bf16 autocast'}",
        flush=True,
    )
    print(
        f"{'stage':<11} {'mode':<5} {'rank':>4} {'planned MB':>11} {'measured MB':>12} "
        f"{'ratio':>6} {'RSS+ MB':>8}",
        flush=True,
    )
    ok = True
    for stage in a.stages.split(","):
        for mode in a.modes.split(","):
            cfg = compose(
                [
                    f"stage={stage}",
                    "profile=local",
                    f"runtime.distributed={mode}",
                    f"runtime.mixed_precision={not a.fp32}",
                    f"dataset.max_length={a.seq}",
                    f"training.batch_size={a.batch}",
                    f"training.gradient_accumulation_steps={a.accum}",
                    f"training.activation_checkpointing={a.activation_checkpointing}",
                ]
            )
            t0 = time.perf_counter()
            c = compare(cfg, args, reference if stage == "rho1" else None, a.ranks)
            for r, (p, m, rss) in enumerate(zip(c.planned, c.measured, c.rss_delta, strict=True)):
                ratio = p / m
                ok &= TARGET[0] <= ratio <= TARGET[1]
                print(
                    f"{stage:<11} {mode:<5} {r:>4} {p / 1e6:>11.1f} {m / 1e6:>12.1f} "
                    f"{ratio:>6.3f} {rss / 1e6:>8.1f}",
                    flush=True,
                )
            rows.append(as_dict(c) | {"seconds": round(time.perf_counter() - t0, 1)})
    ratios = [r for row in rows for r in row["ratios"]]
    print(
        f"planned/measured: min {min(ratios):.3f}, max {max(ratios):.3f} "
        f"(target {TARGET[0]} .. {TARGET[1]}): {'met' if ok else 'NOT met'}"
    )
    if a.json:
        print(json.dumps(rows, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
