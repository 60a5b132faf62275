"""Steps/s of each stage's optimizer step on the same micro-scale model and batch.

Runs the loop's own step (``weighted_mtp.training.task.micro_step`` + AdamW) for
baseline, critic, verifiable, rho1 with a warm reference-loss cache and rho1 cold
(cache empty: one reference forward per step), and prints each as a ratio to baseline.
Targets (issue 5): verifiable <= 1.10 x baseline; rho1 warm <= 1.10 x baseline;
rho1 cold ~ baseline + one reference forward (printed alongside).

    python benchmarks/stages.py [--storage storage] [--steps 10] [--rounds 3]
                                [--batch 8] [--seq 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from weighted_mtp.data.collate import Batch, Collator
from weighted_mtp.data.dataset import ProcessedDataset
from weighted_mtp.models.formats import load_model
from weighted_mtp.models.reference import load_reference
from weighted_mtp.models.tokenizer import load_tokenizer
from weighted_mtp.models.value_head import ValueHead
from weighted_mtp.setup_assets import setup
from weighted_mtp.stages.rho1 import token_ce
from weighted_mtp.training.reference_cache import ReferenceLossCache
from weighted_mtp.training.task import Task, denominators, micro_step
from weighted_mtp.weighting import Rho1Weighting, TDErrorWeighting, UniformWeighting


def time_steps(task: Task, model, batches: list[Batch], steps: int) -> list[float]:
    """Seconds of each of ``steps`` optimizer steps (forward, backward, AdamW)."""
    modules = task.trainable_modules(model)
    model.requires_grad_(task.train_policy)
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        b = batches[i % len(batches)]
        t0 = time.perf_counter()
        task.begin_step(model, [b])  # Rho-1 (scope=step): its pre-pass is part of the cost
        den = denominators(task, [b], model.n_future_tokens)
        micro_step(task, model, b, den, backward=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--storage", type=Path, default=Path("storage"))
    ap.add_argument("--steps", type=int, default=10, help="timed steps per stage and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256, help="max_length (tokens)")
    args = ap.parse_args()
    setup(args.storage)
    models = args.storage / "models"
    tok = load_tokenizer(models / "micro-mtp" / "tokenizer")
    data = ProcessedDataset(args.storage / "datasets/synthetic/processed/train.jsonl")
    collate = Collator(tok, args.seq)
    n_batches = args.steps + 2
    batches = [
        collate(data.records(range(i * args.batch, (i + 1) * args.batch))) for i in range(n_batches)
    ]
    model = load_model(models / "micro-mtp")
    reference = load_reference(models / "micro-ref", "float32", tok)
    head = ValueHead(model.args.dim)
    tmp = Path(tempfile.mkdtemp(prefix="wmtp-bench-"))

    def rho1_task(cache_dir: Path) -> Task:
        cache = ReferenceLossCache(partial(token_ce, reference, 1.0), cache_dir)
        return Task(train_policy=True, weighting=Rho1Weighting(0.6), reference=cache)

    warm = rho1_task(tmp / "warm")
    for b in batches:  # fill the cache
        warm.reference(b)
    tasks = {
        "baseline": Task(train_policy=True, weighting=UniformWeighting()),
        "critic": Task(train_policy=False, value_head=head, value_coef=1.0),
        "verifiable": Task(
            train_policy=True,
            weighting=TDErrorWeighting(beta=0.9, clip_min=0.1, clip_max=5.0),
            value_head=head,
            value_coef=0.5,
        ),
        "rho1 (warm cache)": warm,
    }
    # rounds interleave the stages so that machine noise hits them alike
    times: dict[str, list[float]] = {name: [] for name in [*tasks, "rho1 (cold cache)"]}
    for r in range(args.rounds):
        for name, task in tasks.items():
            times[name] += time_steps(task, model, batches, args.steps)
        # an empty cache, and every batch seen once: each step runs the reference forward
        cold = rho1_task(tmp / f"cold{r}")
        times["rho1 (cold cache)"] += time_steps(cold, model, batches, args.steps)
    results = {name: statistics.median(t) for name, t in times.items()}
    ref_fwd = []
    for b in batches[:5]:
        t0 = time.perf_counter()
        token_ce(reference, 1.0, b.input_ids, b.attention_mask, b.labels)
        ref_fwd.append(time.perf_counter() - t0)
    base = results["baseline"]
    tokens = sum(int(b.attention_mask.sum()) for b in batches) / len(batches)
    print(
        f"micro-mtp dim {model.args.dim}, batch {args.batch} x <= {args.seq} tokens "
        f"(~{tokens:.0f} tokens/step), {torch.get_num_threads()} threads"
    )
    print(f"{'stage':<20}{'s/step':>10}{'steps/s':>10}{'x baseline':>12}")
    for name, sec in results.items():
        print(f"{name:<20}{sec:>10.4f}{1 / sec:>10.2f}{sec / base:>12.3f}")
    ref = statistics.median(ref_fwd)
    print(
        f"reference forward alone: {ref:.4f} s; baseline + reference forward = "
        f"{(base + ref) / base:.3f} x baseline (compare rho1 cold)"
    )


if __name__ == "__main__":
    main()
