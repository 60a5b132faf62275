"""One optimizer step: LoRA adapters (frozen low-precision base) vs full fine-tuning.

Both variants run the training loop's own step (``training.step.optimizer_step``: the
head-by-head MTP loss, AdamW) on the same model shape and batch, each in a fresh
subprocess:

(full) full fine-tuning as the loop does it: float32 master weights, AdamW over all of them;
(lora) ``models.policy.lora``: the base frozen in ``--base-dtype`` (bfloat16), float32
       adapters of rank ``--rank`` on ``--targets``, AdamW over the adapters only.

Compute runs under ``--amp`` autocast in both (bfloat16 by default, as on the cluster).
Peak memory is the peak of live tensor storage during a steady-state step (optimizer
state resident), from torch's ``MemTracker`` (the tracker the plan uses; on CUDA,
``torch.cuda.max_memory_allocated``), plus the process's peak RSS. Prints the median step
time, the peaks, trainable parameters and the ratios lora / full (target: peak memory
<= 0.5).

    python benchmarks/lora.py             # dim 512, 8 blocks, vocab 32000, seq 512, batch 4
    python benchmarks/lora.py --small     # seconds, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

TARGET = "target: peak memory lora / full <= 0.5"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--blocks", type=int, default=8, help="blocks in total (Meta's n_layers)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--n-future", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", default="wq,wk,wv,wo,w1,w2,w3")
    p.add_argument("--base-dtype", default="bfloat16")
    p.add_argument("--amp", default="bfloat16", help="autocast dtype, or 'none'")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--small", action="store_true", help="dim 128, 4 blocks, vocab 4096, seq 128")
    p.add_argument("--variant", choices=["full", "lora"], help=argparse.SUPPRESS)
    return p


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_variant(a: argparse.Namespace) -> dict:
    import torch

    from weighted_mtp.data.collate import Batch
    from weighted_mtp.distributed import DistInfo
    from weighted_mtp.models import lora
    from weighted_mtp.models.formats import resolve_dtype
    from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
    from weighted_mtp.plan.tracker import PlainTracker, peak
    from weighted_mtp.training.optim import build_optimizer
    from weighted_mtp.training.parallel import Replicated
    from weighted_mtp.training.step import optimizer_step
    from weighted_mtp.training.task import Task, prepare_policy
    from weighted_mtp.weighting.uniform import UniformWeighting

    device = torch.device(a.device)
    amp = None if a.amp == "none" else resolve_dtype(a.amp)
    args = ModelArgs(dim=a.dim, n_layers=a.blocks, n_heads=a.heads, n_kv_heads=a.kv_heads,
                     vocab_size=a.vocab, multiple_of=256, n_future_tokens=a.n_future)  # fmt: skip
    with torch.device("meta"):
        model = MTPTransformer(args, resolve_dtype(a.base_dtype))
    task = Task(True, UniformWeighting())
    config = lora.lora_config(a.rank, 2 * a.rank, 0.0, a.targets.split(","))
    prepare_policy(model, task, adapted=a.variant == "lora")  # full: float32 master weights
    model.to_empty(device=device)
    model.init_weights(torch.Generator().manual_seed(0))
    if a.variant == "lora":
        lora.apply(model, config, seed=0)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, 1e-4, 0.0, device)
    par = Replicated(DistInfo(), device, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, a.vocab, (a.batch, a.seq), generator=g).to(device)
    ones = torch.ones_like(ids, dtype=torch.bool)
    batch = Batch(input_ids=ids, attention_mask=ones, labels=ids.clone(), response_mask=ones,
                  reward=torch.ones(a.batch, device=device), is_correct=ones[:, 0],
                  difficulty=torch.zeros(a.batch, dtype=torch.long, device=device),
                  record_ids=torch.arange(a.batch), task_ids=["t"] * a.batch)  # fmt: skip

    def step() -> float:
        res = optimizer_step([batch], task, model, par, optimizer, scaler, params, 1.0,
                             device, amp)  # fmt: skip
        return res.totals["loss"]

    step()  # warm-up: AdamW state created, steady state from here
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tracker = PlainTracker(a.vocab)
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    tracked = peak(tracker)[0]
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    cuda_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return {
        "variant": a.variant,
        "step_s": statistics.median(times),
        "peak_mb": tracked / 2**20,
        "cuda_peak_mb": cuda_peak / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_m": sum(p.numel() for p in params) / 1e6,
        "total_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "loss": loss,
    }


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.small:
        a.dim, a.blocks, a.heads, a.kv_heads, a.vocab, a.seq, a.batch = 128, 4, 4, 4, 4096, 128, 2
    if a.variant:
        print(json.dumps(_run_variant(a)))
        return 0
    base = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
            if k not in ("small", "variant")]  # fmt: skip
    res = {}
    for v in ("full", "lora"):
        proc = subprocess.run([sys.executable, __file__, *base, f"--variant={v}"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        res[v] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"dim {a.dim}, blocks {a.blocks}, heads {a.heads}/{a.kv_heads} kv, vocab {a.vocab}, "
        f"seq {a.seq}, batch {a.batch}, n_future {a.n_future}; lora r {a.rank} on {a.targets}, "
        f"base {a.base_dtype}; autocast {a.amp}; {a.device}; median of {a.steps} steps"
    )
    for v in ("full", "lora"):
        r = res[v]
        cuda = f"   CUDA peak {r['cuda_peak_mb']:8.0f} MB" if r["cuda_peak_mb"] else ""
        print(
            f"  ({v:>4}) step {r['step_s']:7.3f} s   peak (tracked) {r['peak_mb']:8.0f} MB"
            f"{cuda}   peak RSS {r['peak_rss_mb']:8.0f} MB   trainable {r['trainable_m']:.2f} M"
            f" of {r['total_m']:.1f} M"
        )
    f, lo = res["full"], res["lora"]
    ratios = f"  peak memory lora/full {lo['peak_mb'] / f['peak_mb']:.3f}"
    if f["cuda_peak_mb"]:
        ratios += f"   CUDA peak lora/full {lo['cuda_peak_mb'] / f['cuda_peak_mb']:.3f}"
    ratios += f"   peak RSS lora/full {lo['peak_rss_mb'] / f['peak_rss_mb']:.3f}"
    print(ratios + f"   time lora/full {lo['step_s'] / f['step_s']:.3f}")
    print(f"  {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
