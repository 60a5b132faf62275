"""The demo's report: ``results.md`` (the table), ``results.json`` and ``results.png`` of one
seed's run dir (``weighted_mtp.demo`` runs the stages; this module only writes).

Besides pass@k, the table shows what each weighting did to the loss (the run's weight
diagnostics, :mod:`weighted_mtp.weighting.diagnostics`): the share of the loss targets
that belong to incorrect records, the share of the loss weight on them, and the share of
the policy's CE mass on dropped (weight 0) targets; and the critic's validation AUROC.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table(rows: list[dict[str, Any]], k: int) -> str:
    """The comparison table as markdown."""
    cols = ["stage", "train loss", "val loss", "greedy pass@1", "pass@1", f"pass@{k}"]
    cols += ["val AUROC", "incorrect tokens", "incorrect weight", "CE dropped", "bug / rest"]
    cols += ["train tok/s", "train s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        w = r.get("weight_summary", {})
        bug = r.get("bug_token_weights") or {}
        cells = [
            r["stage"],
            _fmt(r.get("train/loss"), ".3f"),
            _fmt(r.get("val/loss"), ".3f"),
            _fmt(r.get("greedy_pass@1"), ".3f"),
            _fmt(r.get("pass@1"), ".3f"),
            _fmt(r.get(f"pass@{k}"), ".3f"),
            _fmt(r.get("val/auroc"), ".3f"),
            _fmt(w.get("token/incorrect_share"), ".3f"),
            _fmt(w.get("weight/incorrect_share"), ".3f"),
            _fmt(w.get("weight/ce_dropped"), ".3f"),
            _fmt_pair(bug.get("first_diverging_mean"), bug.get("rest_mean")),
            _fmt(r.get("tokens_per_s"), ".0f"),
            _fmt(r.get("train_seconds"), ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_pair(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a:.2f} / {b:.2f}"


def diagnostics(rows: list[dict[str, Any]]) -> str:
    """One line per trained policy row: its weights' mean and quantiles per label."""
    out = []
    for r in rows:
        w = r.get("weight_summary")
        if not w:
            continue
        per = []
        for label in ("correct", "incorrect"):
            if f"weight/mean_{label}" in w:
                per.append(
                    f"{label} mean {w[f'weight/mean_{label}']:.3f}, "
                    f"kept {w[f'weight/kept_{label}']:.3f}"
                )
        clip = [f"{k.split('/')[-1]} {v:.3f}" for k, v in w.items() if "clipped" in k]
        out.append(f"- {r['stage']}: " + "; ".join(per + clip))
    return "\n".join(out)


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


def write_results(
    args: argparse.Namespace,
    seed: int,
    run_dir: Path,
    by_stage: dict[str, dict],
    timing: dict,
    order: tuple[str, ...],
) -> str:
    """results.md / results.json / results.png of one seed (rows in ``order``); returns the
    report text."""
    k = args.eval_samples
    rows = [by_stage[s] for s in order if s in by_stage]
    histories = {r["stage"]: r.pop("history", []) for r in rows}
    md = table(rows, k) + "\n\nWeights per label over each run's steps:\n" + diagnostics(rows)
    note = (
        f"\n\nHeld-out test.jsonl problems; greedy pass@1 from one greedy sample, pass@1 and "
        f"pass@{k} from {k} samples per problem (temperature {args.temperature}, top-p "
        f"{args.top_p}), unbiased estimator. Critic trains only the value head (its losses "
        f"are value losses). incorrect tokens / weight: the share of the loss targets of "
        f"incorrect records and of the loss weight on them; CE dropped: the share of the "
        f"policy's CE on weight-0 targets; bug / rest: mean weight at the first token where "
        f"an incorrect program departs from its closest correct one / at its other tokens "
        f"(valid.jsonl, final value head). pretrained: the policy every stage starts from. "
        f"Seed {seed}. Whole demo: {timing['wall_seconds']:.0f} s wall, "
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
