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

from weighted_mtp.setup_assets import PRETRAIN_PROBLEMS, PRETRAIN_STEPS, REFERENCE_STEPS, setup

# row -> (stage, weighting config of conf/weighting/ or None for the stage's own); each
# control differs from its stage only in the weighting
RUNS = {
    "critic": ("critic", None),
    "verifiable": ("verifiable", None),
    "verifiable_control": ("verifiable", "verifiable_control"),
    "baseline": ("baseline", None),
    "rho1": ("rho1", None),
    "rho1_control": ("rho1", "rho1_control"),
}
CONTROLS = {"verifiable": "verifiable_control", "rho1": "rho1_control"}  # stage -> control
PRETRAINED = "pretrained"  # the policy every stage starts from: evaluated, not trained
ORDER = (*RUNS, PRETRAINED)
POLICY_STAGES = tuple(r for r in ORDER if r != "critic")  # the rows that are evaluated


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m weighted_mtp.demo", description=__doc__)
    p.add_argument("--storage", type=Path, default=Path("storage"), help="storage root")
    p.add_argument("--out", type=Path, default=None, help="run dir (default storage/demo/<ts>)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per job")
    p.add_argument(
        "--jobs", type=int, default=2, help="stages trained / evaluated at once (processes)"
    )
    p.add_argument(
        "--rows",
        nargs="+",
        choices=ORDER,
        default=list(ORDER),
        help="rows to run (default all; a control or verifiable brings in what it needs)",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for every policy stage (not the critic), e.g. "
        "training.advantage_norm=step; repeatable",
    )
    p.add_argument("--epochs", type=float, default=1.0, help="epochs of the policy stages")
    p.add_argument("--critic-epochs", type=float, default=30.0, help="epochs of the critic")
    p.add_argument("--n-samples", type=int, default=1000, help="records drawn per epoch")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (policy stages)")
    p.add_argument(
        "--warmup", type=float, default=0.05, help="warm-up share of the steps (policy stages)"
    )
    p.add_argument("--critic-lr", type=float, default=2e-3, help="learning rate (critic)")
    p.add_argument("--critic-warmup", type=float, default=0.05, help="warm-up share (critic)")
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
        "--speculative-drafts",
        type=int,
        default=0,
        help="the greedy evaluation also decodes self-speculatively with this many drafts "
        "(0 = off; make experiment: 3, for compare's table)",
    )
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


def selected_rows(rows: list[str]) -> list[str]:
    """``--rows`` in table order, with what they need (the critic for verifiable rows)."""
    want = set(rows)
    if any(RUNS.get(r, ("",))[0] == "verifiable" for r in want):
        want.add("critic")
    return [r for r in ORDER if r in want]


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
