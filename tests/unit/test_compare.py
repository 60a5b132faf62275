"""``compare``: bootstrap intervals over problems and seeds, paired differences, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from weighted_mtp.__main__ import main
from weighted_mtp.evaluation.bootstrap import intervals, replicate_means


def test_replicates_resample_problems_and_seeds() -> None:
    x = np.arange(2 * 3 * 5, dtype=float).reshape(2, 3, 5)
    reps = replicate_means(x, 500, seed=1)
    assert reps.shape == (2, 500)
    assert reps.min() >= x.min() and reps.max() <= x.max()
    assert abs(reps.mean() - x.mean()) < 0.5  # centred on the mean
    same = replicate_means(np.ones((1, 3, 5)), 50)
    assert np.allclose(same, 1.0)


def test_intervals_cover_and_pair() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((3, 200)) < 0.3  # 3 seeds x 200 problems of a 30% solver
    better = base | (rng.random((3, 200)) < 0.2)  # solves everything base does, and more
    x = np.stack([base, better, base]).astype(float)
    per_stage, diffs = intervals(x, baseline=0, n_boot=2000)
    for iv in per_stage:
        assert iv.lo <= iv.mean <= iv.hi and iv.hi - iv.lo < 0.2
    assert diffs[0].lo == diffs[0].hi == diffs[2].hi == 0.0  # a stage vs itself / a copy
    assert diffs[1].lo > 0  # paired: the gain is significant although the intervals overlap
    assert per_stage[1].lo < per_stage[0].hi + 0.1


def fake_run(root: Path, seed: int, gain: float) -> Path:
    run = root / f"seed{seed}"
    rng = np.random.default_rng(seed)
    rows = [{"stage": "critic", "val/loss": 0.2}]
    stages = [("baseline", 0.3), ("rho1", 0.3 + gain), ("verifiable", 0.3)]
    stages += [("rho1_control", 0.3), ("verifiable_control", 0.3)]
    for stage, p in stages:
        for kind in ("greedy", "sampled"):
            d = run / "eval" / stage / kind
            d.mkdir(parents=True)
            with (d / "results.jsonl").open("w") as fh:
                for i in range(40):
                    c = int(rng.random() < p)
                    row = {"problem_id": f"p{i}", "n": 1, "c": c, "pass@1": float(c)}
                    if kind == "sampled":
                        row["pass@5"] = float(max(c, rng.random() < p))
                    else:  # 3 drafts, 2 forwards: the prefill, then one with 2 of 3 accepted
                        row |= {"spec_forwards": 2, "spec_proposed": 3, "spec_accepted": 2}
                        row |= {"spec_tokens": 4, "spec_identical": True}
                    fh.write(json.dumps(row) + "\n")
        rows.append(
            {"stage": stage, "greedy_pass@1": p, "val/head0_ce": 1.0 + seed, "val/head1_ce": 2.0}
        )
    (run / "results.json").write_text(json.dumps({"rows": rows, "seed": seed}))
    return run


def test_compare_command_writes_table_plot_and_mlflow(tmp_path: Path, capsys) -> None:
    for seed in range(3):
        fake_run(tmp_path / "exp", seed, gain=0.4)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "exp"), "--out", str(out), "--mlflow-uri", uri]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["n_seeds"] == 3 and res["n_problems"] == 40 and res["k"] == 5
    assert set(res["stages"]) == {
        "baseline", "rho1", "verifiable", "rho1_control", "verifiable_control"
    }  # fmt: skip
    effects = res["weighting_effect"]
    assert set(effects) == {"rho1", "verifiable"}
    assert effects["rho1"]["control"] == "rho1_control"
    assert effects["rho1"]["metrics"]["pass@1"]["lo"] > 0  # rho1's gain is its weighting's
    assert (
        effects["verifiable"]["metrics"]["pass@1"]["lo"]
        < 0
        < effects["verifiable"]["metrics"]["pass@1"]["hi"]
    )  # same solve rate as its control: an interval around 0
    spec = res["speculative"]["rho1"]
    assert spec["acceptance"] == 2 / 3 and spec["tokens_per_forward"] == 2.0
    assert spec["identical_fraction"] == 1.0
    rho1 = res["stages"]["rho1"]
    assert rho1["diff_to_baseline"]["pass@1"]["lo"] > 0
    assert rho1["val_head_ce"][0] == [2.0, 1.0, 3.0]  # mean, min, max over seeds
    md = (out / "compare.md").read_text()
    assert "| rho1 |" in md and "pass@5 - baseline" in md and "[" in md
    assert "| rho1 | rho1_control |" in md and "Weighting effect" in md
    assert "tokens per forward" in md
    assert (out / "compare.png").stat().st_size > 0
    assert "compare.md" in capsys.readouterr().out
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("compare").experiment_id])
    assert run.data.metrics["compare/rho1/pass_at_1_diff_lo"] > 0
    assert run.data.metrics["compare/rho1/weighting_effect_pass_at_1_lo"] > 0
    assert run.data.metrics["compare/rho1/speculative_tokens_per_forward"] == 2.0
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"compare.md", "compare.png"}


def test_compare_errors_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    assert "no demo run" in capsys.readouterr().err
    fake_run(tmp_path, 0, 0.0)
    assert main(["compare", str(tmp_path), "--baseline", "nope"]) == 2
    assert "--baseline nope" in capsys.readouterr().err


def test_compare_needs_enough_replicates(tmp_path: Path) -> None:
    fake_run(tmp_path, 0, 0.0)
    assert main(["compare", str(tmp_path), "--n-boot", "10"]) == 2


def test_runs_without_a_baseline_row_refer_to_their_first_stage(tmp_path: Path) -> None:
    """A study of one stage and its control (``--rows verifiable verifiable_control``)."""
    run = fake_run(tmp_path, 0, 0.0)
    data = json.loads((run / "results.json").read_text())
    data["rows"] = [r for r in data["rows"] if r["stage"] in ("verifiable", "verifiable_control")]
    (run / "results.json").write_text(json.dumps(data))
    assert main(["compare", str(tmp_path), "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert res["baseline"] == "verifiable" and set(res["weighting_effect"]) == {"verifiable"}
