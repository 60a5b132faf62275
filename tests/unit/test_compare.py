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


def fake_run(root: Path, seed: int, gain: float, args: dict | None = None) -> Path:
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
    data = {"rows": rows, "seed": seed} | ({"args": args} if args is not None else {})
    (run / "results.json").write_text(json.dumps(data))
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
    err = capsys.readouterr().err
    assert "nothing to compare" in err and "results.jsonl + summary.json" in err
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


def test_demo_runs_of_different_settings_are_rows_of_their_own(tmp_path: Path) -> None:
    """Two experiments (different --override), two seeds each: same-named stages of the two
    are separate rows, prefixed with the setting that differs, and paired over seeds."""
    for seed in range(2):
        args = {"override": ["training.advantage_norm=step"], "out": "a", "seeds": [0, 1]}
        fake_run(tmp_path / "a", seed, gain=0.4, args=args)
        args = {"override": ["training.advantage_norm=none"], "out": "b", "seeds": [seed]}
        fake_run(tmp_path / "b", seed + 10, gain=0.0, args=args)
    out = tmp_path / "cmp"
    argv = ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]
    assert main([*argv, "--n-boot", "500"]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["by"] == ["training.advantage_norm"] and res["n_seeds"] == 2
    step, none = "training.advantage_norm=step", "training.advantage_norm=none"
    assert set(res["stages"]) == {f"{g}/{s}" for g in (step, none) for s in (
        "baseline", "rho1", "verifiable", "rho1_control", "verifiable_control"
    )}  # fmt: skip
    assert res["baseline"] == f"{none}/baseline"  # groups sorted by value: none < step
    assert len(res["groups"][step]["runs"]) == 2
    assert set(res["weighting_effect"]) == {f"{g}/{s}" for g in (step, none) for s in (
        "rho1", "verifiable"
    )}  # fmt: skip
    assert res["weighting_effect"][f"{step}/rho1"]["metrics"]["pass@1"]["lo"] > 0
    md = (out / "compare.md").read_text()
    assert f"| {step}/rho1 |" in md and "Rows grouped by training.advantage_norm" in md
    # --by a key all runs share: one group, the four runs its seeds
    assert main([*argv, "--by", "nope"]) == 2
    assert main([*argv, "--by", "training.advantage_norm", "--baseline", f"{step}/rho1"]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["baseline"] == f"{step}/rho1"
    assert res["stages"][f"{step}/baseline"]["diff_to_baseline"]["pass@1"]["hi"] < 0


def fake_eval(d: Path, ckpt: Path, k_percent: float, seed: int, p: float) -> None:
    """A wmtp-eval job dir evaluating a checkpoint trained with ``k_percent``."""
    ckpt.mkdir(parents=True, exist_ok=True)
    name = f"rho1-weighted_{seed}_training.k_percent={k_percent}"
    (ckpt / "config.yaml").write_text(
        f"experiment:\n  name: {name}\ntraining:\n  k_percent: {k_percent}\n"
        f"runtime:\n  seed: {seed}\ncheckpoint:\n  save_dir: ckpts/{name}\n"
        f"weighting:\n  k_percent: {k_percent}\n"
    )
    (ckpt / "state.json").write_text(json.dumps({"val": {"val/head0_ce": 1.0 + seed}}))
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(
        f"- evaluation.checkpoint='{ckpt}'\n- evaluation.ks=[1,2]\n"
    )
    rng = np.random.default_rng(seed)
    with (d / "results.jsonl").open("w") as fh:
        for i in range(60):
            c = int(rng.random() < p)
            fh.write(json.dumps({"problem_id": f"p{i}", "pass@1": c, "pass@2": c}) + "\n")
    (d / "summary.json").write_text(json.dumps({"checkpoint": str(ckpt)}))


def test_eval_sweep_rows_named_by_the_training_setting(tmp_path: Path) -> None:
    """wmtp-eval -m over four checkpoints (k_percent 0.4 / 0.8 x seeds 0 / 1): one row per
    k_percent, the seeds its replicates; a training sweep's result.json: final metrics."""
    sweep = tmp_path / "multirun" / "eval" / "2026-01-01" / "00-00-00"
    for j, (kp, seed) in enumerate([(0.4, 0), (0.8, 0), (0.4, 1), (0.8, 1)]):
        ckpt = tmp_path / "ckpts" / f"{kp}-{seed}" / "checkpoint_final"
        fake_eval(sweep / str(j), ckpt, kp, seed, 0.2 if kp == 0.4 else 0.7)
    out = tmp_path / "cmp"
    assert main(["compare", str(sweep), "--out", str(out), "--n-boot", "500"]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["by"] == ["training.k_percent"] and res["n_seeds"] == 2 and res["k"] == 2
    lo, hi = "training.k_percent=0.4", "training.k_percent=0.8"
    assert list(res["stages"]) == [lo, hi] and res["baseline"] == lo
    assert res["stages"][hi]["diff_to_baseline"]["pass@1"]["lo"] > 0
    assert res["stages"][lo]["val_head_ce"] == [[1.5, 1.0, 2.0]]  # from state.json
    train = tmp_path / "multirun" / "2026-01-01" / "00-00-00"
    for j, kp in enumerate((0.4, 0.8)):
        (train / str(j)).mkdir(parents=True)
        rec = {"status": "ok", "overrides": ["stage=rho1", f"training.k_percent={kp}"]}
        rec["metrics"] = {"val/loss": kp, "train/loss": 2.0, "val/head0_ce": 3.0}
        (train / str(j) / "result.json").write_text(json.dumps(rec))
    (train / "2").mkdir()
    (train / "2" / "result.json").write_text(json.dumps({"status": "failed", "error": "x"}))
    out = tmp_path / "cmp-train"
    assert main(["compare", str(train), "--out", str(out)]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["stages"] == {} and list(res["training"]) == [lo, hi]
    assert res["training"][hi]["val/loss"] == [0.8, 0.8, 0.8]
    assert "| training.k_percent=0.8 | 1 |" in (out / "compare.md").read_text()
    assert not (out / "compare.png").exists()  # no pass rates to plot


def test_groups_of_unequal_size_exit_2(tmp_path: Path, capsys) -> None:
    for j, (kp, seed) in enumerate([(0.4, 0), (0.8, 0), (0.4, 1)]):
        ckpt = tmp_path / "ckpts" / f"{kp}-{seed}"
        fake_eval(tmp_path / "sweep" / str(j), ckpt, kp, seed, 0.5)
    assert main(["compare", str(tmp_path / "sweep")]) == 2
    assert "different numbers of runs" in capsys.readouterr().err


def test_a_stage_missing_from_one_seed_is_left_out(tmp_path: Path, capsys) -> None:
    for seed in range(2):
        fake_run(tmp_path, seed, 0.0)
    data = json.loads((tmp_path / "seed1" / "results.json").read_text())
    data["rows"] = [r for r in data["rows"] if r["stage"] != "rho1"]
    (tmp_path / "seed1" / "results.json").write_text(json.dumps(data))
    assert main(["compare", str(tmp_path), "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert "rho1" not in res["stages"] and res["n_seeds"] == 2
    assert "leaving out rho1" in capsys.readouterr().out
