"""One optimizer step: our MTP step vs naive MTP vs transformers' Llama next-token step.

(a) ours: trunk once + head-by-head, chunked-vocabulary ``mtp_loss``;
(b) naive MTP: all heads' [B,S,n,V] logits at once (``naive_mtp_loss``);
(c) ``LlamaForCausalLM`` with the same number of blocks, next-token loss.

Each variant runs in a fresh subprocess (peak memory: on CPU the peak RSS, ``ru_maxrss`` of
that process, every child importing torch and transformers so the baselines match; on
CUDA ``torch.cuda.max_memory_allocated``). Prints the median step time after warm-up, the
peak memory, the ratios and the analytic FLOP ratio a/c. ``--device cuda`` runs on the GPU
with bf16 autocast (``--amp``), as training does there.

    python benchmarks/mtp_step.py            # dim 512, 8 blocks, vocab 32000, seq 512, batch 4
    python benchmarks/mtp_step.py --small    # seconds, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

TARGETS = "targets: mem a <= 0.6 b, mem a <= 1.2 c, time a <= 1.05 b, time a/c <= 1.1 FLOP a/c"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--blocks", type=int, default=8, help="blocks in total (Meta's n_layers)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--n-future", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--amp", default="none", help="autocast dtype (bfloat16) or 'none'")
    p.add_argument("--small", action="store_true", help="dim 128, 4 blocks, vocab 4096, seq 128")
    p.add_argument("--variant", choices=["a", "b", "c"], help=argparse.SUPPRESS)
    return p


def _flops_per_token(a: argparse.Namespace, n_outputs: int) -> float:
    """Training FLOPs per token (3x forward): blocks + n_outputs vocabulary projections."""
    from weighted_mtp.models.mtp import ModelArgs

    ma = ModelArgs(
        dim=a.dim,
        n_layers=a.blocks,
        n_heads=a.heads,
        n_kv_heads=a.kv_heads,
        vocab_size=a.vocab,
        multiple_of=256,
    )
    kv = ma.head_dim * a.kv_heads
    block = 2 * (2 * a.dim * a.dim + 2 * a.dim * kv) + 2 * 3 * a.dim * ma.ffn_hidden_dim
    attn = 2 * 2 * a.seq * a.dim / 2  # QK^T and AV over the causal half
    return 3 * (a.blocks * (block + attn) + n_outputs * 2 * a.dim * a.vocab)


def _run_variant(a: argparse.Namespace) -> dict:
    import torch
    import transformers  # noqa: F401  (same import baseline in every child)

    from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
    from weighted_mtp.training.losses import backward_trunk, mtp_loss, mtp_targets, naive_mtp_loss

    torch.manual_seed(0)
    device = torch.device(a.device)
    amp = None if a.amp == "none" else getattr(torch, a.amp)
    ids = torch.randint(3, a.vocab, (a.batch, a.seq), device=device)
    mask = torch.ones_like(ids)
    if a.variant == "c":
        from transformers import LlamaConfig, LlamaForCausalLM

        ma = ModelArgs(
            dim=a.dim,
            n_layers=a.blocks,
            n_heads=a.heads,
            n_kv_heads=a.kv_heads,
            vocab_size=a.vocab,
            multiple_of=256,
        )
        cfg = LlamaConfig(
            vocab_size=a.vocab,
            hidden_size=a.dim,
            intermediate_size=ma.ffn_hidden_dim,
            num_hidden_layers=a.blocks,
            num_attention_heads=a.heads,
            num_key_value_heads=a.kv_heads,
            tie_word_embeddings=False,
            attn_implementation="sdpa",
        )
        model = LlamaForCausalLM(cfg).to(device)

        def step() -> float:
            with torch.autocast(device.type, amp, enabled=amp is not None):
                loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
            loss.backward()
            return loss.item()
    else:
        ma = ModelArgs(
            dim=a.dim,
            n_layers=a.blocks,
            n_heads=a.heads,
            n_kv_heads=a.kv_heads,
            vocab_size=a.vocab,
            multiple_of=256,
            n_future_tokens=a.n_future,
        )
        model = MTPTransformer(ma)
        model.init_weights(torch.Generator().manual_seed(0))
        model.to(device)
        targets = mtp_targets(ids, a.n_future)

        def step() -> float:
            with torch.autocast(device.type, amp, enabled=amp is not None):
                h = model.trunk(ids, mask)
                if a.variant == "a":
                    out = mtp_loss(model, h, mask, targets, chunk_size=a.chunk_size)
                    backward_trunk(h, out)
                else:
                    out = naive_mtp_loss(model, h, mask, targets)
                    out.loss.backward()
            return out.loss.item()

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    times, losses = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        losses.append(step())
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": a.variant,
        "step_s": statistics.median(times),
        "peak_mb": peak_mb,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "loss": losses[-1],
    }


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.small:
        a.dim, a.blocks, a.heads, a.kv_heads, a.vocab, a.seq, a.batch = 128, 4, 4, 2, 4096, 128, 2
    if a.variant:
        print(json.dumps(_run_variant(a)))
        return 0
    base = [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("small", "variant")
    ]
    res = {}
    for v in "abc":
        proc = subprocess.run(
            [sys.executable, __file__, *base, f"--variant={v}"],
            capture_output=True,
            text=True,
            check=True,
        )
        res[v] = json.loads(proc.stdout.strip().splitlines()[-1])
    names = {
        "a": "ours: trunk once + head-by-head chunked MTP",
        "b": "naive MTP: all heads' logits at once",
        "c": "transformers LlamaForCausalLM next-token",
    }
    print(
        f"dim {a.dim}, blocks {a.blocks}, heads {a.heads}/{a.kv_heads} kv, vocab {a.vocab}, "
        f"seq {a.seq}, batch {a.batch}, n_future {a.n_future}, chunk {a.chunk_size}; "
        f"median of {a.steps} steps after {a.warmup} warm-up; {a.device}, autocast {a.amp}"
    )
    peak = "CUDA peak allocated" if a.device.startswith("cuda") else "peak RSS"
    for v in "abc":
        r = res[v]
        print(
            f"  ({v}) {names[v]:<46} step {r['step_s']:8.3f} s   {peak} "
            f"{r['peak_mb']:8.0f} MB   params {r['params_m']:.1f} M"
        )
    ra, rb, rc = res["a"], res["b"], res["c"]
    flop = _flops_per_token(a, a.n_future) / _flops_per_token(a, 1)
    print(
        f"  memory a/b {ra['peak_mb'] / rb['peak_mb']:.3f}   "
        f"memory a/c {ra['peak_mb'] / rc['peak_mb']:.3f}"
    )
    print(
        f"  time   a/b {ra['step_s'] / rb['step_s']:.3f}   time a/c "
        f"{ra['step_s'] / rc['step_s']:.3f}   analytic FLOP a/c {flop:.3f}   "
        f"(time a/c) / (FLOP a/c) {ra['step_s'] / rc['step_s'] / flop:.3f}"
    )
    print(f"  {TARGETS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
