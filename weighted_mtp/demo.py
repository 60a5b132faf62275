"""``make demo`` / ``python -m weighted_mtp.demo``: the four stages end to end on a laptop.

Creates the micro assets and the synthetic task set (``setup``), trains critic ->
verifiable, baseline and rho1 on the local profile through the public entrypoint
(``compose`` + ``app.run``), evaluates each trained policy on the held-out synthetic
split (``test.jsonl``) with sampled pass@k in the sandbox, and prints one comparison
table. The table (``results.md``), the raw numbers (``results.json``) and a plot
(``results.png``: validation loss curves, pass@1 / pass@k per stage) go into the run dir
``<storage>/demo/<timestamp>/``.

Stages and evaluations run ``--jobs`` (default 2) at a time in worker processes, each
with ``--threads`` (default 1) intra-op threads: the micro model's matmuls are small, and
one thread per process is robust on a busy machine (OpenMP barriers stall when a core is
shared). ``--epochs`` / ``--n-samples`` trade time for quality. ``results.json`` also
records the demo's wall time, CPU time (user + system of every process) and the load
average, since wall time on a shared machine says little.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from weighted_mtp.setup_assets import PRETRAIN_PROBLEMS, PRETRAIN_STEPS, REFERENCE_STEPS, setup

POLICY_STAGES = ("verifiable", "baseline", "rho1")
ORDER = ("critic", "verifiable", "baseline", "rho1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m weighted_mtp.demo", description=__doc__)
    p.add_argument("--storage", type=Path, default=Path("storage"), help="storage root")
    p.add_argument("--out", type=Path, default=None, help="run dir (default storage/demo/<ts>)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per job")
    p.add_argument(
        "--jobs", type=int, default=2, help="stages trained / evaluated at once (processes)"
    )
    p.add_argument("--epochs", type=float, default=1.0, help="epochs of the policy stages")
    p.add_argument("--critic-epochs", type=float, default=30.0, help="epochs of the critic")
    p.add_argument("--n-samples", type=int, default=1000, help="records drawn per epoch")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (policy stages)")
    p.add_argument("--critic-lr", type=float, default=2e-3, help="learning rate (critic)")
    p.add_argument("--critic-batch-size", type=int, default=16, help="batch size (critic)")
    p.add_argument(
        "--critic-evals", type=int, default=10, help="validation points over the critic's run"
    )
    p.add_argument(
        "--critic-trunk-cache-mb",
        type=float,
        default=512,
        help="the critic's training.frozen_trunk_cache_mb (its frozen trunk runs once per record)",
    )
    p.add_argument(
        "--val-samples", type=int, default=300, help="validation records scored (300 = all)"
    )
    p.add_argument("--evals-per-epoch", type=int, default=2, help="validation points per epoch")
    p.add_argument("--eval-samples", type=int, default=5, help="samples per test problem")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="first N test problems only")
    p.add_argument(
        "--concurrency", type=int, default=4, help="programs executed at once per evaluation"
    )
    p.add_argument("--gen-batch-size", type=int, default=64, help="prompts per generation batch")
    p.add_argument(
        "--pretrain-steps", type=int, default=None, help=f"setup's (default {PRETRAIN_STEPS})"
    )
    p.add_argument(
        "--reference-steps", type=int, default=None, help=f"setup's (default {REFERENCE_STEPS})"
    )
    p.add_argument(
        "--pretrain-problems",
        type=int,
        default=None,
        help=f"setup's (default {PRETRAIN_PROBLEMS})",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="one run per seed (training, sampling and evaluation seeds); with several, each "
        "goes to <run dir>/seed<S>/ and `compare` summarises them in <run dir>/compare/",
    )
    return p.parse_args(argv)


def stage_overrides(
    args: argparse.Namespace, stage: str, run_dir: Path, seed: int = 0
) -> list[str]:
    """Hydra overrides of one stage: micro assets under --storage, demo training budget."""
    data = args.storage / "datasets" / "synthetic" / "processed"
    model = args.storage / "models" / "micro-mtp"
    critic = stage == "critic"
    out = [
        f"stage={stage}",
        "profile=local",
        f"experiment.name=demo-{stage}",
        f"models.policy.path={model}",
        f"models.policy.tokenizer_path={model / 'tokenizer'}",
        f"models.reference.path={args.storage / 'models' / 'micro-ref'}",
        f"models.reference.cache_dir={args.storage / 'cache' / 'reference'}",
        f"runtime.seed={seed}",
        f"data_sampling.seed={seed}",
        f"dataset.train={data / 'train.jsonl'}",
        f"dataset.validation={data / 'valid.jsonl'}",
        f"data_sampling.n_samples={args.n_samples}",
        f"training.n_epochs={args.critic_epochs if critic else args.epochs}",
        f"training.batch_size={args.critic_batch_size if critic else args.batch_size}",
        "training.gradient_accumulation_steps=1",
        "training.warmup_ratio=0.05",
        f"training.eval_samples={args.val_samples}",
        f"checkpoint.save_dir={run_dir / 'checkpoints' / stage}",
        "checkpoint.save_checkpoint_every="
        + str(args.critic_epochs / args.critic_evals if critic else 1 / args.evals_per_epoch),
        "checkpoint.save_total_limit=1",
        "runtime.device=cpu",
    ]
    out.append(f"training.learning_rate={args.critic_lr if critic else args.lr}")
    if critic:  # the demo's critic: a prefix-max value head on the frozen policy
        out.append("models.value_head.type=prefix_max")
        out.append(f"training.frozen_trunk_cache_mb={args.critic_trunk_cache_mb}")
    if stage == "verifiable":
        critic_ckpt = run_dir / "checkpoints" / "critic" / "checkpoint_final"
        out.append(f"experiment.critic_checkpoint={critic_ckpt}")
    return out


def train_stage(args: argparse.Namespace, stage: str, run_dir: Path, seed: int) -> dict[str, Any]:
    """Train one stage in-process; returns its metrics, history and wall time."""
    from weighted_mtp import app
    from weighted_mtp.config.loader import compose

    cfg = compose(stage_overrides(args, stage, run_dir, seed))
    t0 = time.perf_counter()
    result = app.run(cfg, source=f"demo:{stage}")
    result["train_seconds"] = time.perf_counter() - t0
    result["checkpoint"] = str(Path(cfg.checkpoint.save_dir) / "checkpoint_final")
    return result


def evaluate_stage(
    args: argparse.Namespace, stage: str, ckpt: str, run_dir: Path, seed: int
) -> dict:
    """Greedy pass@1, and sampled pass@1 / pass@n, on the held-out split (a program that
    both produce is executed once)."""
    from weighted_mtp.evaluation.config import EvalConfig
    from weighted_mtp.evaluation.evaluate import evaluate

    n = args.eval_samples
    common = dict(
        checkpoint=ckpt,
        data=str(args.storage / "datasets" / "synthetic" / "processed" / "test.jsonl"),
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        seed=seed,
        concurrency=args.concurrency,
        batch_size=args.gen_batch_size,
    )
    scored: dict = {}
    greedy = evaluate(
        EvalConfig(out_dir=str(run_dir / "eval" / stage / "greedy"), **common), scored
    )
    sampled = evaluate(
        EvalConfig(
            out_dir=str(run_dir / "eval" / stage / "sampled"),
            ks=sorted({1, n}),
            n_samples=n,
            temperature=args.temperature,
            top_p=args.top_p,
            **common,
        ),
        scored,
    )
    return {
        "greedy_pass@1": greedy["pass@1"],
        **{key: sampled[key] for key in (f"pass@{j}" for j in sorted({1, n}))},
        "gen_tokens_per_s": sampled["tokens_per_s"],
        "by_difficulty": {"greedy": greedy["by_difficulty"], "sampled": sampled["by_difficulty"]},
    }


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table(rows: list[dict[str, Any]], k: int) -> str:
    """The comparison table as markdown."""
    cols = ["stage", "train loss", "val loss", "val head0 CE", "greedy pass@1", "pass@1"]
    cols += [f"pass@{k}"]
    cols += ["train tok/s", "gen tok/s", "train s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [
            r["stage"],
            _fmt(r.get("train/loss"), ".3f"),
            _fmt(r.get("val/loss"), ".3f"),
            _fmt(r.get("val/head0_ce"), ".3f"),
            _fmt(r.get("greedy_pass@1"), ".3f"),
            _fmt(r.get("pass@1"), ".3f"),
            _fmt(r.get(f"pass@{k}"), ".3f"),
            _fmt(r.get("tokens_per_s"), ".0f"),
            _fmt(r.get("gen_tokens_per_s"), ".0f"),
            _fmt(r.get("train_seconds"), ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], histories: dict[str, list[dict]], k: int, path: Path):
    """Validation loss per step for each stage, and pass@1 / pass@k bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for stage, hist in histories.items():
        pts = [(h["step"], h["val/mtp_ce"]) for h in hist if "val/mtp_ce" in h]
        if pts:
            ax1.plot(*zip(*pts, strict=True), marker="o", label=stage)
    ax1.set(xlabel="optimizer step", ylabel="validation MTP CE", title="Validation loss")
    ax1.legend()
    evald = [r for r in rows if r.get("pass@1") is not None]
    bars = [("greedy_pass@1", "greedy pass@1"), ("pass@1", "pass@1"), (f"pass@{k}", f"pass@{k}")]
    width = 0.8 / len(bars)
    for j, (key, label) in enumerate(bars):
        xs = [i + (j - (len(bars) - 1) / 2) * width for i in range(len(evald))]
        ax2.bar(xs, [r[key] for r in evald], width, label=label)
    x = range(len(evald))
    ax2.set_xticks(list(x), [r["stage"] for r in evald])
    top = max([r[key] for r in evald for key, _ in bars] + [0.05])
    ax2.set(ylim=(0, min(1.0, top * 1.2)), ylabel="held-out synthetic", title="pass@k (test.jsonl)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _task(args: argparse.Namespace, kind: str, stage: str, run_dir: Path, seed: int, ckpt: str):
    """One unit of demo work (a stage's training or its evaluation), in a worker or inline."""
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if kind == "train":
        res = train_stage(args, stage, run_dir, seed)
    else:
        res = evaluate_stage(args, stage, ckpt, run_dir, seed)
        res["eval_seconds"] = time.perf_counter() - t0
    return res


def schedule(args: argparse.Namespace, runs: dict[int, Path]) -> dict[int, dict[str, dict]]:
    """Train and evaluate every stage of every seed; ``--jobs`` tasks at once.

    A task starts when what it needs is done: verifiable after the critic, an evaluation
    after its stage's training. Returns {seed: {stage: row}}.
    """
    import concurrent.futures as cf
    import multiprocessing

    todo = [(seed, kind, stage) for seed in runs for stage in ORDER for kind in ("train", "eval")]
    todo = [t for t in todo if t[1] == "train" or t[2] in POLICY_STAGES]
    rows: dict[int, dict[str, dict]] = {seed: {} for seed in runs}
    done: set[tuple[int, str, str]] = set()

    def ready(seed: int, kind: str, stage: str) -> bool:
        need = (seed, "train", stage) if kind == "eval" else None
        if stage == "verifiable" and kind == "train":
            need = (seed, "train", "critic")
        return need is None or need in done

    def finish(task: tuple[int, str, str], res: dict) -> None:
        seed, kind, stage = task
        row = rows[seed].setdefault(stage, {"stage": stage})
        row |= res
        done.add(task)
        print(f"=== seed {seed} / {stage}: {kind} done ===", flush=True)

    def submit_args(task: tuple[int, str, str]) -> tuple:
        seed, kind, stage = task
        ckpt = rows[seed].get(stage, {}).get("checkpoint", "")
        return (args, kind, stage, runs[seed], seed, ckpt)

    if args.jobs <= 1:
        while todo:
            task = next(t for t in todo if ready(*t))
            todo.remove(task)
            finish(task, _task(*submit_args(task)))
        return rows
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        running: dict[cf.Future, tuple[int, str, str]] = {}
        while todo or running:
            for task in [t for t in todo if ready(*t)][: args.jobs - len(running)]:
                todo.remove(task)
                running[pool.submit(_task, *submit_args(task))] = task
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                finish(running.pop(fut), fut.result())
    return rows


def write_results(
    args: argparse.Namespace, seed: int, run_dir: Path, by_stage: dict[str, dict], timing: dict
) -> str:
    """results.md / results.json / results.png of one seed; returns the report text."""
    k = args.eval_samples
    rows = [by_stage[s] for s in ORDER]
    histories = {r["stage"]: r.pop("history") for r in rows}
    md = table(rows, k)
    note = (
        f"\n\nHeld-out test.jsonl problems; greedy pass@1 from one greedy sample, pass@1 and "
        f"pass@{k} from {k} samples per problem (temperature {args.temperature}, top-p "
        f"{args.top_p}), unbiased estimator. Critic trains only the value head (its losses "
        f"are value losses). Seed {seed}. Whole demo: {timing['wall_seconds']:.0f} s wall, "
        f"{timing['cpu_seconds']:.0f} s CPU (user+sys, all processes), setup "
        f"{timing['setup_seconds']:.0f} s, {args.jobs} jobs, load average "
        f"{timing['load_average_start']:.1f} at start, {timing['load_average_end']:.1f} at end.\n"
    )
    (run_dir / "results.md").write_text(md + note)
    results = {
        "seed": seed,
        "wall_seconds": timing["wall_seconds"],
        "timing": timing,
        "stages": {r["stage"]: r for r in rows},
        "rows": rows,
        "histories": histories,
        "args": vars(args),
    }
    (run_dir / "results.json").write_text(json.dumps(results, default=str))
    plot(rows, histories, k, run_dir / "results.png")
    return md + note + f"written: {run_dir}/results.md, results.json, results.png"


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import os

    import torch

    torch.set_num_threads(args.threads)
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    run_dir = args.out or args.storage / "demo" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"demo: run dir {run_dir}", flush=True)
    pre = {
        "pretrain_steps": args.pretrain_steps,
        "pretrain_problems": args.pretrain_problems,
        "reference_steps": args.reference_steps,
    }
    setup(args.storage, jobs=args.jobs, **{k: v for k, v in pre.items() if v is not None})
    setup_s = time.perf_counter() - t_start
    print(f"setup done in {setup_s:.0f} s", flush=True)
    several = len(args.seeds) > 1
    runs = {seed: run_dir / f"seed{seed}" if several else run_dir for seed in args.seeds}
    for d in runs.values():
        d.mkdir(parents=True, exist_ok=True)
    rows = schedule(args, runs)
    timing = {
        "setup_seconds": setup_s,
        "wall_seconds": time.perf_counter() - t_start,
        "cpu_seconds": cpu_seconds(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg()[0],
    }
    reports = [write_results(args, seed, d, rows[seed], timing) for seed, d in runs.items()]
    print("\n" + "\n\n".join(reports))
    if several:
        from weighted_mtp import compare

        compare.run(compare.parse([str(run_dir)]))
    print(
        f"total: {timing['wall_seconds']:.0f} s wall, {timing['cpu_seconds']:.0f} s CPU "
        f"(setup included), load average {load_start:.1f} -> {timing['load_average_end']:.1f}"
    )
    return 0


def _cli() -> int:
    """``python -m weighted_mtp.demo``: user errors and diverged runs without a traceback."""
    from weighted_mtp.errors import run_reported

    return run_reported(main)


if __name__ == "__main__":
    sys.exit(_cli())
