"""``compare``'s outputs: ``compare.md`` (the tables), ``compare.png`` and the MLflow run,
from the result :func:`weighted_mtp.compare.compare` returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from weighted_mtp.evaluation.bootstrap import Interval


def _spread(mean: float, lo: float, hi: float) -> str:
    return f"{mean:.3f} ({lo:.3f}-{hi:.3f})"


def _groups_note(res: dict[str, Any]) -> list[str]:
    if not res.get("by"):
        return []
    lines = [f"Rows grouped by {', '.join(res['by'])}; runs per group:", ""]
    for label, g in res["groups"].items():
        lines.append(f"- {label or '(all)'}: {len(g['runs'])} run(s)")
    return ["", *lines]


def pass_table(res: dict[str, Any]) -> list[str]:
    names = list(next(iter(res["stages"].values()))["metrics"])
    cols = ["row", *names, *(f"{n} - {res['baseline']}" for n in names), "val CE per head"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for stage, r in res["stages"].items():
        cells = [stage]
        cells += [Interval(**r["metrics"][n]).fmt() for n in names]
        cells += [
            "-" if stage == res["baseline"] else Interval(**r["diff_to_baseline"][n]).fmt("+.3f")
            for n in names
        ]
        ce = " / ".join(_spread(m, lo, hi) for m, lo, hi in r["val_head_ce"])
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
    return lines


def training_table(training: dict[str, dict[str, Any]]) -> list[str]:
    names = [
        k
        for k in ("train/loss", "val/loss", "val/mtp_ce")
        if all(k in t for t in training.values())
    ]
    lines = [
        "Training (final metrics of each wmtp -m job; mean (min-max) over runs):",
        "",
        "| run | runs | " + " | ".join(names) + " | val CE per head |",
        "|" + "---|" * (3 + len(names)),
    ]
    for row, t in training.items():
        cells = [row, str(t["n_runs"]), *(_spread(*t[n]) for n in names)]
        cells.append(" / ".join(_spread(*c) for c in t["val_head_ce"]) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def table(res: dict[str, Any]) -> str:
    lines: list[str] = []
    if res["stages"]:
        lines += pass_table(res)
    if res.get("training"):
        lines += (
            ["", *training_table(res["training"])] if lines else training_table(res["training"])
        )
    lines += _groups_note(res)
    if not res["stages"]:
        return "\n".join(lines) + "\n"
    note = (
        f"\n\nMean [95% bootstrap interval] over {res['n_problems']} held-out problems x "
        f"{res['n_seeds']} seed(s) ({res['n_boot']} replicates, problems and seeds resampled); "
        f"differences are paired (same draw for both rows). Validation CE per head: mean "
        f"(min-max) over seeds."
    )
    if res.get("weighting_effect"):
        note += (
            " Weighting effect: a stage minus its control, which differs from it only in the "
            "weighting (verifiable_control: every weight 1; rho1_control: a random k% of the "
            "tokens), so data, steps, critic and normalisation cancel."
        )
    if res.get("speculative"):
        note += (
            " Speculative: drafts from the extra heads, accepted while they equal head 0's "
            "greedy choice; the interval resamples problems."
        )
    return "\n".join(lines) + note + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(res["stages"])
    names = list(res["stages"][stages[0]]["metrics"])
    fig, axes = plt.subplots(1, 2, figsize=(max(12, 1.5 * len(stages)), 4))
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
        panel.set_xticks(range(len(stages)), stages, rotation=20 if len(stages) > 4 else 0)
        panel.axhline(0, color="black", linewidth=0.8)
        panel.set_title(title)
        panel.legend(fontsize=8)
    fig.suptitle(f"{res['n_seeds']} seed(s) x {res['n_problems']} problems")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _tag(name: str) -> str:
    return name.replace(" ", "_").replace("@", "_at_")


def mlflow_metrics(res: dict[str, Any]) -> dict[str, float]:
    """Flat metric names (``compare/<row>/<metric>_{mean,lo,hi}`` ...)."""
    metrics = {}
    for stage, r in res["stages"].items():
        for key in ("metrics", "diff_to_baseline"):
            for name, iv in r[key].items():
                pre = f"compare/{stage}/{_tag(name)}" + ("_diff" if key != "metrics" else "")
                metrics |= {f"{pre}_{p}": iv[p] for p in ("mean", "lo", "hi")}
        for h, (m, _, _) in enumerate(r["val_head_ce"]):
            metrics[f"compare/{stage}/val_head{h}_ce"] = m
    for stage, e in res.get("weighting_effect", {}).items():
        for name, iv in e["metrics"].items():
            pre = f"compare/{stage}/weighting_effect_{_tag(name)}"
            metrics |= {f"{pre}_{p}": iv[p] for p in ("mean", "lo", "hi")}
    for stage, t in res.get("speculative", {}).items():
        for key in ("acceptance", "tokens_per_forward", "identical_fraction"):
            metrics[f"compare/{stage}/speculative_{key}"] = t[key]
    for row, t in res.get("training", {}).items():
        for name in ("train/loss", "val/loss", "val/mtp_ce"):
            if name in t:
                metrics[f"compare/{row}/final_{name.replace('/', '_')}"] = t[name][0]
    # MLflow names allow [A-Za-z0-9_-./ ]: a group label's "=" and "," become "_"
    return {
        "".join(c if c.isalnum() or c in "_-./ " else "_" for c in k): v for k, v in metrics.items()
    }


def log_mlflow(res: dict[str, Any], out: Path, uri: str, experiment: str) -> None:
    from weighted_mtp.tracking import create_tracker

    tracker = create_tracker(
        {
            "mlflow": {"tracking_uri": uri, "experiment": experiment},
            "experiment": {"name": "compare", "stage": "compare", "tags": ["compare"]},
            "compare": {"runs": res["runs"], "baseline": res["baseline"], "n_boot": res["n_boot"]},
        }
    )
    with tracker:
        tracker.log_metrics(mlflow_metrics(res), step=0)
        for name in ("compare.md", "compare.json", "compare.png"):
            if (out / name).is_file():
                tracker.log_artifact(out / name)
