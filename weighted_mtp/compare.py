"""``python -m weighted_mtp compare DIR ...``: runs compared, with bootstrap intervals.

Each argument is a run or a folder holding several (searched recursively): demo runs
(``make demo``, the seeds of ``make experiment``), evaluation dirs (``wmtp-eval``, a
``wmtp-eval -m`` sweep, ``python -m weighted_mtp evaluate --out``) and ``wmtp -m`` sweep
jobs (:mod:`weighted_mtp.compare_sources`). Runs are grouped by the settings that differ
between them, or by ``--by key[,key]`` (:mod:`weighted_mtp.compare_groups`); a group's runs
are its seeds. One table row per group (per group and stage for demo runs). Over the
held-out problems that every run evaluated, per row:

- pass@k (demo runs: greedy pass@1, sampled pass@1 and pass@k): mean with a 95% bootstrap
  interval over problems and seeds (:mod:`weighted_mtp.evaluation.bootstrap`);
- the paired difference to the baseline row with its interval (same resampled problems
  and seeds for both rows);
- validation CE per head (the run's final validation; an evaluation's from its
  checkpoint's ``state.json``): mean and spread (min..max) over seeds;
- the **weighting effect** of every row ``S`` that has a control row ``S_control``
  (``verifiable_control``, ``rho1_control``: the same stage with only the weighting
  changed): ``S - S_control``, paired over problems and seeds, with its interval
  (``weighting_effect`` in compare.json);
- the MTP heads' self-speculative decoding on the greedy evaluation's prompts, where it was
  measured (``speculative_drafts``): acceptance, tokens per forward (95% interval over
  problems) and the share of outputs identical to greedy (``speculative`` in compare.json).

Training jobs without an evaluation (``wmtp -m`` result.json) get a table of their final
metrics: mean (min-max) over the group's runs (``training`` in compare.json).

Writes ``compare.md`` (the tables), ``compare.json`` and ``compare.png`` into ``--out``
(default ``<first dir>/compare``) and, with ``--mlflow-uri`` (default
``$MLFLOW_TRACKING_URI``), logs the numbers and files as one MLflow run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from weighted_mtp.compare_groups import Row, group
from weighted_mtp.compare_report import log_mlflow, plot, table
from weighted_mtp.compare_sources import Unit, find_units
from weighted_mtp.errors import UserError
from weighted_mtp.evaluation.bootstrap import intervals
from weighted_mtp.evaluation.spec_summary import speculative_table

CONTROL_SUFFIX = "_control"  # stage S's control row is S + CONTROL_SUFFIX

HELP = (
    "compare demo runs, evaluations or sweeps over seeds: pass@k with 95-percent bootstrap "
    "intervals, paired to a baseline row"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR")
    p.add_argument(
        "--by",
        default=None,
        metavar="KEY[,KEY]",
        help="group runs by these settings (e.g. training.k_percent); default: every setting "
        "that differs between the runs, seeds excepted",
    )
    p.add_argument("--out", type=Path, default=None, help="output dir (default DIR/compare)")
    p.add_argument(
        "--baseline",
        default=None,
        help="row the differences refer to (default: the baseline stage, else the first row)",
    )
    p.add_argument("--n-boot", type=int, default=4000, help="bootstrap replicates")
    p.add_argument("--mlflow-uri", default=os.environ.get("MLFLOW_TRACKING_URI", ""))
    p.add_argument("--mlflow-experiment", default="compare", help="MLflow experiment name")


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``compare``'s arguments (for callers other than the CLI)."""
    p = argparse.ArgumentParser(prog="python -m weighted_mtp compare", description=HELP)
    add_arguments(p)
    return p.parse_args(argv)


def score_arrays(rows: list[Row]) -> tuple[dict[str, np.ndarray], list[str], int]:
    """{metric: x[row, seed, problem]} over the metrics and problems every run has, and
    the largest k."""
    names = list(rows[0].entries[0].scores)
    common: set[str] | None = None
    for r in rows:
        for e in r.entries:
            names = [n for n in names if n in e.scores]
            for n in names:
                common = set(e.scores[n]) if common is None else common & set(e.scores[n])
    problems = sorted(common or [])
    if not names or not problems:
        raise UserError("the runs share no evaluated problem: compare runs of one test split")
    x = {
        n: np.array([[[e.scores[n][p] for p in problems] for e in r.entries] for r in rows])
        for n in names
    }
    return x, problems, max(int(n.split("@")[1]) for n in names)


def _spread(values: list[float]) -> tuple[float, float, float]:
    return float(np.mean(values)), min(values), max(values)


def head_ce(row: Row) -> list[tuple[float, float, float]]:
    """(mean, min, max) over seeds of each head's final validation CE ([] if a run has
    none)."""
    n = min(len(e.head_ce) for e in row.entries)
    return [_spread([e.head_ce[h] for e in row.entries]) for h in range(n)]


def training_rows(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Rows of training jobs: each final metric's (mean, min, max) over the group's runs."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        keys = set.intersection(*(set(e.final) for e in r.entries))
        t: dict[str, Any] = {k: _spread([e.final[k] for e in r.entries]) for k in sorted(keys)}
        out[r.name] = t | {"n_runs": len(r.entries), "val_head_ce": head_ce(r)}
    return out


def _default_baseline(names: list[str]) -> str:
    named = [n for n in names if n == "baseline" or n.endswith("/baseline")]
    return named[0] if named else names[0]


def compare(
    units: list[Unit], baseline: str | None, n_boot: int, by: list[str] | None = None
) -> dict[str, Any]:
    keys, all_rows = group(units, by)
    rows = [r for r in all_rows if r.entries[0].scores]
    result: dict[str, Any] = {
        "runs": [str(u.path) for u in units],
        "by": keys,
        "groups": {},
        "n_boot": n_boot,
        "stages": {},
        "training": training_rows([r for r in all_rows if not r.entries[0].scores]),
    }
    for r in all_rows:
        g = result["groups"].setdefault(r.group, {"runs": []})
        g["runs"] += [str(p) for p in r.runs if str(p) not in g["runs"]]
    if not rows:
        return result | {"baseline": None, "n_seeds": 0, "n_problems": 0, "k": None}
    sizes = {r.name: len(r.entries) for r in rows}
    if len(set(sizes.values())) > 1:
        raise UserError(
            "rows with different numbers of runs cannot be paired ("
            + ", ".join(f"{n}: {k}" for n, k in sizes.items())
            + "): compare groups of equal size, or choose the grouping with --by key[,key]"
        )
    names = [r.name for r in rows]
    baseline = baseline or _default_baseline(names)
    if baseline not in names:
        raise UserError(f"--baseline {baseline}: not a row every run evaluated ({names})")
    metrics, problems, k = score_arrays(rows)
    result |= {
        "n_seeds": len(rows[0].entries),
        "n_problems": len(problems),
        "k": k,
        "baseline": baseline,
    }
    result["stages"] = {n: {"metrics": {}, "diff_to_baseline": {}} for n in names}
    for name, x in metrics.items():
        per_row, diffs = intervals(x, names.index(baseline), n_boot)
        for n, iv, d in zip(names, per_row, diffs, strict=True):
            result["stages"][n]["metrics"][name] = vars(iv)
            result["stages"][n]["diff_to_baseline"][name] = vars(d)
    for r in rows:
        result["stages"][r.name]["val_head_ce"] = head_ce(r)
    result["weighting_effect"] = weighting_effects(metrics, names, n_boot)
    spec = {
        r.name: [e.spec_rows[p] for e in r.entries for p in problems if p in e.spec_rows]
        for r in rows
    }
    result["speculative"] = speculative_table(spec, n_boot)
    return result


def weighting_effects(
    metrics: dict[str, np.ndarray], stages: list[str], n_boot: int
) -> dict[str, dict[str, Any]]:
    """{stage: {"control": name, "metrics": {metric: interval}}}: stage - its control row,
    paired (the same resampled problems and seeds for both), for every stage whose control
    was evaluated."""
    out: dict[str, dict[str, Any]] = {}
    for s in stages:
        control = s + CONTROL_SUFFIX
        if control not in stages:
            continue
        pair = [stages.index(control), stages.index(s)]
        out[s] = {"control": control, "metrics": {}}
        for name, x in metrics.items():
            _, diffs = intervals(x[pair], 0, n_boot)
            out[s]["metrics"][name] = vars(diffs[1])
    return out


def run(args: argparse.Namespace) -> int:
    if args.n_boot < 100:
        raise UserError(f"--n-boot {args.n_boot}: use at least 100 replicates")
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    res = compare(find_units(args.dirs), args.baseline, args.n_boot, by)
    out = args.out or args.dirs[0] / "compare"
    out.mkdir(parents=True, exist_ok=True)
    md = table(res)
    (out / "compare.md").write_text(md)
    (out / "compare.json").write_text(json.dumps(res, indent=2) + "\n")
    written = ["compare.md", "compare.json"]
    if res["stages"] and importlib.util.find_spec("matplotlib") is None:
        print("compare.png skipped: matplotlib is not installed (pip install -e '.[compare]')")
    elif res["stages"]:
        plot(res, out / "compare.png")
        written.append("compare.png")
    if args.mlflow_uri:
        log_mlflow(res, out, args.mlflow_uri, args.mlflow_experiment)
    print(md + f"written: {out}/" + ", ".join(written))
    return 0
