"""The demo's rows and options: which stage and weighting each row trains (``RUNS``), the
table order, and ``python -m weighted_mtp.demo``'s arguments (:mod:`weighted_mtp.demo`
runs the rows, :mod:`weighted_mtp.demo_report` writes the results)."""

from __future__ import annotations

import argparse
from pathlib import Path

from weighted_mtp.setup_assets import PRETRAIN_PROBLEMS, PRETRAIN_STEPS, REFERENCE_STEPS

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


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """``python -m weighted_mtp.demo``'s options (``description``: its help text)."""
    p = argparse.ArgumentParser(prog="python -m weighted_mtp.demo", description=description)
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


def selected_rows(rows: list[str]) -> list[str]:
    """``--rows`` in table order, with what they need (the critic for verifiable rows)."""
    want = set(rows)
    if any(RUNS.get(r, ("",))[0] == "verifiable" for r in want):
        want.add("critic")
    return [r for r in ORDER if r in want]
