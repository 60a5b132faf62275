"""``training.compile`` and ``training.loss_chunk_size``: step time and peak memory.

One training step (trunk once, head-by-head chunked MTP loss, backward, AdamW) of an
``MTPTransformer`` with random weights, each variant in a fresh subprocess:

- ``eager`` vs ``compile`` (regional torch.compile of every block, inductor unless
  WEIGHTED_MTP_COMPILE_BACKEND says otherwise), the ratio compiled / eager printed from the
  same run; the first step (compilation included) is reported apart;
- ``--sweep``: the loss chunk size (tokens per vocabulary-projection chunk), eager;
- ``--fused``: the MTP loss's chunk CE as ``losses._InPlaceCE`` (one [chunk, V] fp32
  buffer: the logits turned in place into softmax - onehot, scaled in backward; the
  default, ``losses.FUSED_CE``) vs ``F.cross_entropy`` (autograd's log-softmax, then its
  gradient); the head part only (a fixed trunk output), the same loss.

Peak memory: on CPU the peak RSS of the timed steps only (the high-water mark is reset
after warm-up / compilation via /proc/self/clear_refs), on CUDA max_memory_allocated.

    python benchmarks/compile.py                  # dim 256, 6 blocks, vocab 32000, seq 256
    python benchmarks/compile.py --sweep 256,512,1024,2048,4096 --fused
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--blocks", type=int, default=6, help="blocks in total (Meta's n_layers)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--n-future", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", help="autocast dtype (bfloat16) or 'none'")
    p.add_argument("--sweep", default="", help="comma-separated loss chunk sizes (eager)")
    p.add_argument("--fused", action="store_true", help="also the hand-written chunk backward")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    return p


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_variant(a: argparse.Namespace) -> dict:
    import torch

    from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
    from weighted_mtp.training.losses import backward_trunk, mtp_loss, mtp_targets

    torch.manual_seed(0)
    device = torch.device(a.device)
    amp = None if a.amp == "none" else getattr(torch, a.amp)
    kind, _, arg = a.variant.partition(":")
    ma = ModelArgs(
        dim=a.dim, n_layers=a.blocks, n_heads=a.heads, n_kv_heads=a.kv_heads,
        vocab_size=a.vocab, multiple_of=256, n_future_tokens=a.n_future,
    )  # fmt: skip
    model = MTPTransformer(ma)
    model.init_weights(torch.Generator().manual_seed(0))
    model.to(device)
    ids = torch.randint(3, a.vocab, (a.batch, a.seq), device=device)
    mask = torch.ones_like(ids)
    targets = mtp_targets(ids, a.n_future)
    chunk = int(arg) if kind == "chunk" else a.chunk_size
    if kind == "compile":
        model.set_compile(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    if kind in ("head", "fused"):  # the head part only (a fixed trunk output)
        from weighted_mtp.training import losses

        losses.FUSED_CE = kind == "fused"
        with torch.no_grad():
            h0 = model.trunk(ids, mask)

        def step() -> float:
            with torch.autocast(device.type, amp, enabled=amp is not None):
                out = mtp_loss(model, h0, mask, targets, chunk_size=chunk)
            return float(out.loss)
    else:

        def step() -> float:
            with torch.autocast(device.type, amp, enabled=amp is not None):
                h = model.trunk(ids, mask)
                out = mtp_loss(model, h, mask, targets, chunk_size=chunk)
                backward_trunk(h, out)
            return float(out.loss)

    times, losses, first = [], [], 0.0
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            _reset_peak()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        losses.append(step())
        if kind not in ("head", "fused"):
            opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        if i == 0:
            first = dt
        if i >= a.warmup:
            times.append(dt)
    return {
        "variant": a.variant,
        "step_s": statistics.median(times),
        "first_step_s": first,
        "peak_mb": _peak_mb(device),
        "loss": losses[-1],
    }


def _child(a: argparse.Namespace, variant: str) -> dict:
    args = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(a).items()
        if k not in ("variant", "sweep", "fused", "no_compile")
    ]
    proc = subprocess.run(
        [sys.executable, __file__, *args, f"--variant={variant}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.variant:
        print(json.dumps(_run_variant(a)))
        return 0
    peak = "CUDA peak allocated" if a.device.startswith("cuda") else "peak RSS (timed steps)"
    print(
        f"dim {a.dim}, blocks {a.blocks}, heads {a.heads}/{a.kv_heads} kv, vocab {a.vocab}, "
        f"seq {a.seq}, batch {a.batch}, n_future {a.n_future}, chunk {a.chunk_size}; median "
        f"of {a.steps} steps after {a.warmup} warm-up; {a.device}, autocast {a.amp}"
    )

    def show(name: str, r: dict, ref: dict | None = None) -> None:
        ratio = ""
        if ref:
            t, m = r["step_s"] / ref["step_s"], r["peak_mb"] / ref["peak_mb"]
            ratio = f"   time x{t:.3f}  memory x{m:.3f}"
        print(
            f"  {name:<26} step {r['step_s']:8.3f} s  first {r['first_step_s']:7.2f} s  "
            f"{peak} {r['peak_mb']:7.0f} MB  loss {r['loss']:.5f}{ratio}"
        )

    eager = _child(a, "eager")
    show("eager", eager)
    if not a.no_compile:
        show("compile (vs eager)", _child(a, "compile"), eager)
    if a.sweep:
        sizes = [int(x) for x in a.sweep.split(",")]
        base = None
        for s in sizes:
            r = _child(a, f"chunk:{s}")
            base = base or r
            show(f"loss chunk {s} (vs first)", r, base)
    if a.fused:
        head = _child(a, "head")
        show("head part, F.cross_entropy", head)
        show("head part, in-place CE", _child(a, "fused"), head)
    return 0


if __name__ == "__main__":
    sys.exit(main())
