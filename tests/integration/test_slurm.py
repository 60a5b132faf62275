"""A real Slurm run: a one-node cluster on 127.0.0.1, a 2-job sweep submitted by
``wmtp -m hydra/launcher=slurm_local`` (hydra-submitit-launcher -> sbatch array).

Slow (installs slurm-wlm + munge with apt-get when missing): ``make test-slurm``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SWEEP_TINY, storage_overrides
from tests.helpers.servers import OFFLINE_ENV
from tests.helpers.slurm import LocalSlurm, SlurmUnavailable

pytestmark = pytest.mark.slow

WMTP = str(Path(sys.executable).with_name("wmtp"))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs Linux and root")
    try:
        cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
        cluster.__enter__()
    except SlurmUnavailable as exc:
        pytest.skip(f"no local Slurm: {exc}")
    try:
        yield cluster
    finally:
        cluster.__exit__(None, None, None)


def test_sweep_on_slurm(slurm: LocalSlurm, micro_storage: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            WMTP,
            "-m",
            "hydra/launcher=slurm_local",
            "stage=baseline",
            "training.learning_rate=1e-4,2e-4",
            *SWEEP_TINY,
            *storage_overrides(micro_storage),
        ],
        cwd=tmp_path,
        env={**slurm.env, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - t0
    print(f"\nslurm sweep (2 jobs, submit to summary): {elapsed:.1f}s")
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{slurm.logs()}"

    (sweep_dir,) = [p.parent for p in (tmp_path / "multirun").glob("*/*/multirun.yaml")]
    sbatch = sorted((sweep_dir / ".submitit").rglob("*_submission.sh"))
    assert sbatch, "submitit wrote no sbatch script"
    script = sbatch[0].read_text()
    assert "#SBATCH --partition=debug" in script and "scontrol show hostnames" in script

    results = [json.loads((sweep_dir / str(i) / "result.json").read_text()) for i in (0, 1)]
    for i, (res, lr) in enumerate(zip(results, ("0.0001", "0.0002"), strict=True)):
        assert res["status"] == "ok", res
        assert res["experiment"] == f"baseline-mtp_{i}_training.learning_rate={lr}"
        save_dir = Path(res["save_dir"])
        assert save_dir.parent == tmp_path.resolve() / "storage" / "checkpoints" / "baseline"
        assert (save_dir / "checkpoint_final" / "manifest.json").is_file()
        assert (save_dir / "checkpoint_best" / "manifest.json").is_file()
        env = res["env"]  # the job ran under Slurm, with the preset's setup lines
        assert env["SLURM_ARRAY_TASK_ID"] == str(i) and env["SLURM_PROCID"] == "0"
        assert env["MASTER_ADDR"] == slurm.node and env["MASTER_PORT"].isdigit()
    assert results[0]["save_dir"] != results[1]["save_dir"]

    with (sweep_dir / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok")]
    for row in rows:
        assert float(row["train_loss"]) > 0 and float(row["val_loss"]) > 0
    assert "job  status  train_loss  val_loss  overrides" in out.stdout
