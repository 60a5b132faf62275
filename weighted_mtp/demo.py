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
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from weighted_mtp import demo_args
from weighted_mtp.demo_args import (  # noqa: F401  (the demo's names, also for callers)
    CONTROLS,
    ORDER,
    POLICY_STAGES,
    PRETRAINED,
    RUNS,
    selected_rows,
)
from weighted_mtp.setup_assets import setup


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The demo's options (:func:`weighted_mtp.demo_args.parse_args`, this module's help)."""
    return demo_args.parse_args(argv, description=__doc__)


def stage_overrides(args: argparse.Namespace, row: str, run_dir: Path, seed: int = 0) -> list[str]:
    """Hydra overrides of one row (a stage, or a control: the stage with the control's
    weighting): micro assets under --storage, the demo's training budget."""
    data = args.storage / "datasets" / "synthetic" / "processed"
    model = args.storage / "models" / "micro-mtp"
    stage, weighting = RUNS[row]
    critic = stage == "critic"
    out = [
        f"stage={stage}",
        "profile=local",
        f"experiment.name=demo-{row}",
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
        f"training.warmup_ratio={args.critic_warmup if critic else args.warmup}",
        f"training.eval_samples={args.val_samples}",
        f"checkpoint.save_dir={run_dir / 'checkpoints' / row}",
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
    if weighting is not None:
        out.append(f"weighting={weighting}")
    return out if critic else out + list(args.override)


def train_stage(args: argparse.Namespace, row: str, run_dir: Path, seed: int) -> dict[str, Any]:
    """Train one row in-process; returns its metrics, history and wall time (and, for the
    verifiable stage and its control, the weights at the synthetic bugs' first tokens)."""
    from weighted_mtp import app
    from weighted_mtp.config.loader import compose

    cfg = compose(stage_overrides(args, row, run_dir, seed))
    t0 = time.perf_counter()
    result = app.run(cfg, source=f"demo:{row}")
    result["train_seconds"] = time.perf_counter() - t0
    result["checkpoint"] = str(Path(cfg.checkpoint.save_dir) / "checkpoint_final")
    if row == "verifiable":  # its control's weights are 1 everywhere
        from weighted_mtp.evaluation.weight_probe import bug_token_weights

        result["bug_token_weights"] = bug_token_weights(
            result["checkpoint"], cfg.dataset.validation
        )
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
        EvalConfig(
            out_dir=str(run_dir / "eval" / stage / "greedy"),
            speculative_drafts=args.speculative_drafts,
            **common,
        ),
        scored,
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
    spec = {k: v for k, v in greedy.items() if k.startswith("speculative/")}
    return {
        **spec,
        "greedy_pass@1": greedy["pass@1"],
        **{key: sampled[key] for key in (f"pass@{j}" for j in sorted({1, n}))},
        "gen_tokens_per_s": sampled["tokens_per_s"],
        "by_difficulty": {"greedy": greedy["by_difficulty"], "sampled": sampled["by_difficulty"]},
    }


def _task(args: argparse.Namespace, kind: str, stage: str, run_dir: Path, seed: int, ckpt: str):
    """One unit of demo work (a row's training or its evaluation), in a worker or inline."""
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

    A task starts when what it needs is done: verifiable (and its control) after the
    critic, an evaluation after its row's training (the pretrained policy's at once).
    Returns {seed: {row: results}}.
    """
    import concurrent.futures as cf
    import multiprocessing

    wanted = selected_rows(args.rows)
    todo = [(seed, kind, row) for seed in runs for row in wanted for kind in ("train", "eval")]
    todo = [
        t for t in todo if (t[1] == "train" and t[2] != PRETRAINED) or
        (t[1] == "eval" and t[2] in POLICY_STAGES)
    ]  # fmt: skip
    rows: dict[int, dict[str, dict]] = {seed: {} for seed in runs}
    done: set[tuple[int, str, str]] = set()

    def ready(seed: int, kind: str, row: str) -> bool:
        need = (seed, "train", row) if kind == "eval" and row != PRETRAINED else None
        if RUNS.get(row, ("",))[0] == "verifiable" and kind == "train":
            need = (seed, "train", "critic")
        return need is None or need in done

    def finish(task: tuple[int, str, str], res: dict) -> None:
        seed, kind, stage = task
        row = rows[seed].setdefault(stage, {"stage": stage})
        row |= res
        done.add(task)
        print(f"=== seed {seed} / {stage}: {kind} done ===", flush=True)

    def submit_args(task: tuple[int, str, str]) -> tuple:
        seed, kind, row = task
        ckpt = rows[seed].get(row, {}).get("checkpoint", "")
        if row == PRETRAINED:
            ckpt = str(args.storage / "models" / "micro-mtp")
        return (args, kind, row, runs[seed], seed, ckpt)

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
    from weighted_mtp.demo_report import write_results

    reports = [write_results(args, seed, d, rows[seed], timing, ORDER) for seed, d in runs.items()]
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
