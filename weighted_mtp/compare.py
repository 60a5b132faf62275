"""``python -m weighted_mtp compare RUN_OR_SWEEP_DIR ...``: stages compared over seeds.

Each argument is a demo run dir (``results.json`` + ``eval/<stage>/{greedy,sampled}/``,
written by ``make demo`` or one seed of ``make experiment``) or a folder holding several
(searched recursively); every run is one seed. Per policy stage it reports, over the
held-out problems that every run evaluated:

- greedy pass@1, sampled pass@1 and pass@k: mean with a 95% bootstrap interval over
  problems and seeds (:mod:`weighted_mtp.evaluation.bootstrap`);
- the paired difference to the baseline stage with its interval (same resampled
  problems and seeds for both stages);
- validation CE per head (``val/head{k}_ce`` at the end of training): mean and spread
  (min..max) over seeds;
- the **weighting effect** of every stage ``S`` that has a control row ``S_control``
  (``verifiable_control``, ``rho1_control``: the same stage with only the weighting
  changed): ``S - S_control``, paired over problems and seeds, with its interval
  (``weighting_effect`` in compare.json);
- the MTP heads' self-speculative decoding on the greedy evaluation's prompts, where it was
  measured (``speculative_drafts``): acceptance, tokens per forward (95% interval over
  problems) and the share of outputs identical to greedy (``speculative`` in compare.json).

Writes ``compare.md`` (the table), ``compare.json`` and ``compare.png`` into ``--out``
(default ``<first dir>/compare``) and, with ``--mlflow-uri`` (default
``$MLFLOW_TRACKING_URI``), logs the numbers and files as one MLflow run.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from weighted_mtp.errors import UserError
from weighted_mtp.evaluation.bootstrap import Interval, intervals
from weighted_mtp.evaluation.spec_summary import speculative_table

CONTROL_SUFFIX = "_control"  # stage S's control row is S + CONTROL_SUFFIX

HELP = "compare stages over seeds: pass@k with 95-percent bootstrap intervals, paired to baseline"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR")
    p.add_argument("--out", type=Path, default=None, help="output dir (default DIR/compare)")
    p.add_argument(
        "--baseline",
        default=None,
        help="stage the differences refer to (default: baseline, or the first stage evaluated "
        "when the runs have no baseline row)",
    )
    p.add_argument("--n-boot", type=int, default=4000, help="bootstrap replicates")
    p.add_argument("--mlflow-uri", default=os.environ.get("MLFLOW_TRACKING_URI", ""))
    p.add_argument("--mlflow-experiment", default="compare", help="MLflow experiment name")


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``compare``'s arguments (for callers other than the CLI)."""
    p = argparse.ArgumentParser(prog="python -m weighted_mtp compare", description=HELP)
    add_arguments(p)
    return p.parse_args(argv)


def find_runs(dirs: list[Path]) -> list[Path]:
    """Run dirs (holding a demo ``results.json``) under ``dirs``, sorted, without repeats."""
    runs: set[Path] = set()
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"{d}: not a directory (give demo run dirs or a folder of them)")
        for f in [d / "results.json", *d.rglob("*/results.json")]:
            if f.is_file() and "rows" in json.loads(f.read_text()):
                runs.add(f.parent.resolve())
    if not runs:
        raise UserError(f"no demo run (results.json with rows) under {', '.join(map(str, dirs))}")
    return sorted(runs)


def _read_rows(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{path}: missing; re-run that stage's evaluation")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["problem_id"]: r for r in rows}


def load_run(run: Path) -> dict[str, Any]:
    """{stage: {"greedy": rows, "sampled": rows, "row": results.json row}} of one run."""
    data = json.loads((run / "results.json").read_text())
    out = {}
    for row in data["rows"]:
        stage = row["stage"]
        if "greedy_pass@1" not in row:
            continue  # critic: no policy to evaluate
        out[stage] = {
            "greedy": _read_rows(run / "eval" / stage / "greedy" / "results.jsonl"),
            "sampled": _read_rows(run / "eval" / stage / "sampled" / "results.jsonl"),
            "row": row,
        }
    return out


def score_arrays(runs: list[dict[str, Any]], stages: list[str]) -> tuple[dict, list[str], int]:
    """{metric: x[stage, seed, problem]} over the problems every run evaluated, and k."""
    common = None
    for r in runs:
        for s in stages:
            ids = set(r[s]["greedy"]) & set(r[s]["sampled"])
            common = ids if common is None else common & ids
    problems = sorted(common or [])
    if not problems:
        raise UserError("the runs share no evaluated problem: compare runs of one test split")
    ks = [
        int(key.split("@")[1])
        for key in runs[0][stages[0]]["sampled"][problems[0]]
        if key.startswith("pass@")
    ]
    k = max(ks)

    def grid(kind: str, key: str) -> np.ndarray:
        return np.array(
            [[[r[s][kind][p][key] for p in problems] for r in runs] for s in stages], dtype=float
        )

    metrics = {
        "greedy pass@1": grid("greedy", "pass@1"),
        "pass@1": grid("sampled", "pass@1"),
        f"pass@{k}": grid("sampled", f"pass@{k}"),
    }
    return metrics, problems, k


def head_ce(runs: list[dict[str, Any]], stage: str) -> list[tuple[float, float, float]]:
    """(mean, min, max) over seeds of each head's final validation CE."""
    rows = [r[stage]["row"] for r in runs]
    n = len([key for key in rows[0] if key.startswith("val/head") and key.endswith("_ce")])
    out = []
    for h in range(n):
        v = [float(row[f"val/head{h}_ce"]) for row in rows]
        out.append((float(np.mean(v)), min(v), max(v)))
    return out


def compare(run_dirs: list[Path], baseline: str | None, n_boot: int) -> dict[str, Any]:
    runs = [load_run(r) for r in run_dirs]
    stages = [s for s in runs[0] if all(s in r for r in runs)]
    if baseline is None and stages:
        baseline = "baseline" if "baseline" in stages else stages[0]
    if baseline not in stages:
        raise UserError(f"--baseline {baseline}: not a stage every run evaluated ({stages})")
    metrics, problems, k = score_arrays(runs, stages)
    result: dict[str, Any] = {
        "runs": [str(r) for r in run_dirs],
        "n_seeds": len(runs),
        "n_problems": len(problems),
        "k": k,
        "baseline": baseline,
        "n_boot": n_boot,
        "stages": {s: {"metrics": {}, "diff_to_baseline": {}} for s in stages},
    }
    for name, x in metrics.items():
        per_stage, diffs = intervals(x, stages.index(baseline), n_boot)
        for s, iv, d in zip(stages, per_stage, diffs, strict=True):
            result["stages"][s]["metrics"][name] = vars(iv)
            result["stages"][s]["diff_to_baseline"][name] = vars(d)
    for s in stages:
        result["stages"][s]["val_head_ce"] = head_ce(runs, s)
    result["weighting_effect"] = weighting_effects(metrics, stages, n_boot)
    greedy = {s: [r[s]["greedy"][p] for r in runs for p in problems] for s in stages}
    result["speculative"] = speculative_table(greedy, n_boot)
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


def table(res: dict[str, Any]) -> str:
    names = list(next(iter(res["stages"].values()))["metrics"])
    cols = ["stage", *names, *(f"{n} - {res['baseline']}" for n in names), "val CE per head"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for stage, r in res["stages"].items():
        cells = [stage]
        cells += [Interval(**r["metrics"][n]).fmt() for n in names]
        cells += [
            "-" if stage == res["baseline"] else Interval(**r["diff_to_baseline"][n]).fmt("+.3f")
            for n in names
        ]
        ce = " / ".join(f"{m:.3f} ({lo:.3f}-{hi:.3f})" for m, lo, hi in r["val_head_ce"])
        cells.append(ce or "-")  # the pretrained row: not trained, not validated
        lines.append("| " + " | ".join(cells) + " |")
    effects = res.get("weighting_effect", {})
    if effects:
        lines += ["", "Weighting effect (stage - its control, paired):", ""]
        lines += [
            "| stage | control | " + " | ".join(names) + " |",
            "|" + "---|" * (2 + len(names)),
        ]
        for stage, e in effects.items():
            cells = [Interval(**e["metrics"][n]).fmt("+.3f") for n in names]
            lines.append(f"| {stage} | {e['control']} | " + " | ".join(cells) + " |")
    spec = res.get("speculative", {})
    if spec:
        lines += ["", "Self-speculative decoding with the MTP heads (greedy prompts):", ""]
        lines += ["| stage | acceptance | tokens per forward | identical to greedy |"]
        lines += ["|---|---|---|---|"]
        for stage, t in spec.items():
            tpf = Interval(**t["tokens_per_forward_ci"]).fmt(".2f")
            lines.append(
                f"| {stage} | {t['acceptance']:.3f} | {tpf} | {t['identical_fraction']:.3f} |"
            )
    note = (
        f"\n\nMean [95% bootstrap interval] over {res['n_problems']} held-out problems x "
        f"{res['n_seeds']} seed(s) ({res['n_boot']} replicates, problems and seeds resampled); "
        f"differences are paired (same draw for both stages). Validation CE per head: mean "
        f"(min-max) over seeds. Weighting effect: a stage minus its control, which differs "
        f"from it only in the weighting (verifiable_control: every weight 1; rho1_control: a "
        f"random k% of the tokens), so data, steps, critic and normalisation cancel. "
        f"Speculative: drafts from the extra heads, accepted while they equal head 0's "
        f"greedy choice; the interval resamples problems.\n"
    )
    return "\n".join(lines) + note


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(res["stages"])
    names = list(res["stages"][stages[0]]["metrics"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(names)
    for panel, key, title in (
        (axes[0], "metrics", "held-out pass rates (95% CI)"),
        (axes[1], "diff_to_baseline", f"paired difference to {res['baseline']} (95% CI)"),
    ):
        for j, name in enumerate(names):
            ivs = [res["stages"][s][key][name] for s in stages]
            xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(stages))]
            err = [[iv["mean"] - iv["lo"] for iv in ivs], [iv["hi"] - iv["mean"] for iv in ivs]]
            panel.bar(xs, [iv["mean"] for iv in ivs], width, yerr=err, capsize=3, label=name)
        panel.set_xticks(range(len(stages)), stages)
        panel.axhline(0, color="black", linewidth=0.8)
        panel.set_title(title)
        panel.legend(fontsize=8)
    fig.suptitle(f"{res['n_seeds']} seed(s) x {res['n_problems']} problems")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_mlflow(res: dict[str, Any], out: Path, uri: str, experiment: str) -> None:
    from weighted_mtp.tracking import create_tracker

    tracker = create_tracker(
        {
            "mlflow": {"tracking_uri": uri, "experiment": experiment},
            "experiment": {"name": "compare", "stage": "compare", "tags": ["compare"]},
            "compare": {"runs": res["runs"], "baseline": res["baseline"], "n_boot": res["n_boot"]},
        }
    )
    metrics = {}
    for stage, r in res["stages"].items():
        for key in ("metrics", "diff_to_baseline"):
            for name, iv in r[key].items():
                tag = name.replace(" ", "_").replace("@", "_at_")
                pre = f"compare/{stage}/{tag}" + ("_diff" if key == "diff_to_baseline" else "")
                metrics |= {f"{pre}_{p}": iv[p] for p in ("mean", "lo", "hi")}
        for h, (m, _, _) in enumerate(r["val_head_ce"]):
            metrics[f"compare/{stage}/val_head{h}_ce"] = m
    for stage, e in res.get("weighting_effect", {}).items():
        for name, iv in e["metrics"].items():
            tag = name.replace(" ", "_").replace("@", "_at_")
            pre = f"compare/{stage}/weighting_effect_{tag}"
            metrics |= {f"{pre}_{p}": iv[p] for p in ("mean", "lo", "hi")}
    for stage, t in res.get("speculative", {}).items():
        for key in ("acceptance", "tokens_per_forward", "identical_fraction"):
            metrics[f"compare/{stage}/speculative_{key}"] = t[key]
    with tracker:
        tracker.log_metrics(metrics, step=0)
        for name in ("compare.md", "compare.json", "compare.png"):
            tracker.log_artifact(out / name)


def run(args: argparse.Namespace) -> int:
    if args.n_boot < 100:
        raise UserError(f"--n-boot {args.n_boot}: use at least 100 replicates")
    runs = find_runs(args.dirs)
    res = compare(runs, args.baseline, args.n_boot)
    out = args.out or args.dirs[0] / "compare"
    out.mkdir(parents=True, exist_ok=True)
    md = table(res)
    (out / "compare.md").write_text(md)
    (out / "compare.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, out / "compare.png")
    if args.mlflow_uri:
        log_mlflow(res, out, args.mlflow_uri, args.mlflow_experiment)
    print(md + f"written: {out}/compare.md, compare.json, compare.png")
    return 0
