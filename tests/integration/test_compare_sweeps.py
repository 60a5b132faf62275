"""`compare` over real sweeps, end to end on the micro assets: ``wmtp -m stage=rho1
training.k_percent=0.4,0.8`` (tiny steps), ``wmtp-eval -m`` over its two checkpoints (few
problems and samples), then ``python -m weighted_mtp compare`` on the eval sweep dir: one
row per k_percent with intervals; on the training sweep dir: its final metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import SWEEP_TINY, storage_overrides
from tests.helpers.servers import OFFLINE_ENV
from weighted_mtp.__main__ import main

BIN = Path(sys.executable).parent


def _run(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    return out


def _one(pattern: str, root: Path) -> Path:
    (found,) = [p.parent for p in root.glob(pattern)]
    return found


def test_compare_a_training_sweep_and_its_eval_sweep(micro_storage: Path, tmp_path: Path):
    _run(
        tmp_path,
        str(BIN / "wmtp"),
        "-m",
        "stage=rho1",
        "training.k_percent=0.4,0.8",
        *SWEEP_TINY,
        *storage_overrides(micro_storage),
        "mlflow.tracking_uri=",
    )
    train_sweep = _one("multirun/*/*/multirun.yaml", tmp_path)
    ckpts = [
        json.loads((train_sweep / str(j) / "result.json").read_text())["save_dir"]
        + "/checkpoint_final"
        for j in (0, 1)
    ]
    data = micro_storage / "datasets" / "synthetic" / "processed" / "test.jsonl"
    _run(
        tmp_path,
        str(BIN / "wmtp-eval"),
        "-m",
        "evaluation.checkpoint=" + ",".join(f"'{c}'" for c in ckpts),  # paths hold "="
        f"evaluation.data={data}",
        "evaluation.ks=[1,2]",
        "evaluation.n_samples=2",
        "evaluation.temperature=0.8",
        "evaluation.max_new_tokens=8",
        "evaluation.limit=4",
    )
    eval_sweep = _one("multirun/eval/*/*/multirun.yaml", tmp_path)

    out = tmp_path / "cmp"
    assert main(["compare", str(eval_sweep), "--out", str(out), "--n-boot", "200"]) == 0
    res = json.loads((out / "compare.json").read_text())
    lo, hi = "training.k_percent=0.4", "training.k_percent=0.8"
    assert res["by"] == ["training.k_percent"] and list(res["stages"]) == [lo, hi]
    assert res["baseline"] == lo and res["n_problems"] == 4 and res["k"] == 2
    for row in res["stages"].values():
        for name in ("pass@1", "pass@2"):
            iv = row["metrics"][name]
            assert 0.0 <= iv["lo"] <= iv["mean"] <= iv["hi"] <= 1.0
        assert len(row["val_head_ce"]) == 4  # the checkpoint's final validation, per head
    d = res["stages"][hi]["diff_to_baseline"]["pass@1"]
    assert d["lo"] <= d["mean"] <= d["hi"]
    md = (out / "compare.md").read_text()
    assert f"| {lo} |" in md and f"| {hi} |" in md and f"pass@2 - {lo}" in md
    assert (out / "compare.png").stat().st_size > 0

    # both sweeps at once, grouped explicitly: pass rates and final training metrics
    both = tmp_path / "both"
    argv = ["compare", str(train_sweep), str(eval_sweep), "--out", str(both)]
    assert main([*argv, "--by", "training.k_percent", "--n-boot", "200"]) == 0
    res = json.loads((both / "compare.json").read_text())
    assert list(res["stages"]) == [lo, hi] and list(res["training"]) == [lo, hi]
    result0 = json.loads((train_sweep / "0" / "result.json").read_text())
    assert res["training"][lo]["val/loss"][0] == result0["metrics"]["val/loss"]
