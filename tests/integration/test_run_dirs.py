"""A run never overwrites another run's checkpoints; the end of a run says where its
results went; ``checkpoint verify`` on a save dir lists the checkpoints inside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import storage_overrides

WMTP = [str(Path(sys.executable).with_name("wmtp"))]
SEED = [sys.executable, "-m", "weighted_mtp"]
TINY = [
    "data_sampling.n_samples=4",
    "training.n_epochs=1",
    "training.batch_size=2",
    "training.eval_samples=2",
    "dataset.max_length=64",
    "checkpoint.save_checkpoint_every=0",
    "runtime.device=cpu",
]


def wmtp(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*WMTP, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def first_run(micro_storage, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("runs")
    args = ["experiment.name=same-name", *TINY, *storage_overrides(micro_storage)]
    out = wmtp(cwd, *args, "hydra.run.dir=run1")
    assert out.returncode == 0, out.stderr
    return cwd, args, out


def test_end_of_run_says_where_results_are(first_run) -> None:
    cwd, _, out = first_run
    save_dir = cwd / "storage" / "checkpoints" / "baseline" / "same-name"
    assert f"checkpoints: {save_dir.relative_to(cwd)}" in out.stdout
    assert "(final: " in out.stdout and "checkpoint_final" in out.stdout
    assert "MLflow: not tracked (mlflow.tracking_uri is empty)" in out.stdout
    assert f"run dir: {cwd / 'run1'} (log, result.json, .hydra/config.yaml)" in out.stdout
    assert json.loads((cwd / "run1" / "result.json").read_text())["status"] == "ok"


def test_a_different_config_is_refused_not_overwritten(first_run) -> None:
    cwd, args, _ = first_run
    final = cwd / "storage" / "checkpoints" / "baseline" / "same-name" / "checkpoint_final"
    before = (final / "manifest.json").read_bytes()
    out = wmtp(cwd, *args, "training.learning_rate=3e-4", "hydra.run.dir=run2")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    err = out.stderr
    assert "already holds the checkpoints of another run" in err
    assert "whose config differs: training.learning_rate: 1e-05 -> 0.0003" in err
    assert "experiment.name=same-name-2" in err and "checkpoint.resume=auto" in err
    assert "--override" not in err  # wmtp's syntax
    assert (final / "manifest.json").read_bytes() == before


def test_checkpoint_verify_on_a_save_dir_lists_its_checkpoints(first_run) -> None:
    cwd, _, _ = first_run
    save_dir = cwd / "storage" / "checkpoints" / "baseline" / "same-name"
    out = subprocess.run(
        [*SEED, "checkpoint", "verify", str(save_dir)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "a save dir with 2 checkpoint(s)" in out.stdout
    assert "ok: checkpoint_best" in out.stdout and "ok: checkpoint_final" in out.stdout
    assert "a write was cut" not in out.stdout + out.stderr


def test_resume_of_the_same_run_is_allowed(first_run) -> None:
    cwd, args, _ = first_run
    out = wmtp(cwd, *args, "checkpoint.resume=auto", "hydra.run.dir=run3")
    assert out.returncode == 0, out.stderr
