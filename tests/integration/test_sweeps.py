"""`wmtp -m` sweeps through real Hydra launchers (basic, submitit_local), as subprocesses:
per-job names and checkpoint dirs, result.json per job, summary.csv, failed jobs shown."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from tests.conftest import REPO, SWEEP_TINY, storage_overrides
from tests.helpers.servers import OFFLINE_ENV
from weighted_mtp.config import CONF_DIR
from weighted_mtp.config.schema import register_schema
from weighted_mtp.sweep import naming, summary
from weighted_mtp.sweep import results as job_results

WMTP = str(Path(sys.executable).with_name("wmtp"))


def run_sweep(cwd: Path, storage: Path, *args: str, timeout: int = 240):
    """Run ``wmtp -m <args> <tiny overrides>`` in ``cwd``; return (process, sweep dir)."""
    env = {**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [WMTP, "-m", *args, *SWEEP_TINY, *storage_overrides(storage)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    dirs = [p.parent for p in (cwd / "multirun").glob("*/*/multirun.yaml")]
    assert len(dirs) == 1, (dirs, out.stdout, out.stderr)
    return out, dirs[0]


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / summary.SUMMARY_FILE).open(newline="") as f:
        return list(csv.DictReader(f))


def read_result(job_dir: Path) -> dict:
    return json.loads((job_dir / job_results.RESULT_FILE).read_text())


def assert_ok_jobs(sweep_dir: Path, values: list[str], out) -> list[dict]:
    """Both jobs ok, each with its own name, checkpoint dir and summary row."""
    results = [read_result(sweep_dir / str(i)) for i in range(len(values))]
    for i, (res, value) in enumerate(zip(results, values, strict=True)):
        assert res["status"] == "ok", res
        assert res["job"] == i
        assert res["experiment"] == f"baseline-mtp_{i}_training.learning_rate={value}"
        save_dir = Path(res["save_dir"])
        assert (
            save_dir.parent
            == sweep_dir.parents[2].resolve() / "storage" / "checkpoints" / "baseline"
        )
        assert (save_dir / "checkpoint_final" / "manifest.json").is_file()
        assert res["metrics"]["step"] == 4 and res["metrics"]["val/loss"] > 0
        assert (sweep_dir / str(i) / job_results.HISTORY_FILE).is_file()
    assert len({r["save_dir"] for r in results}) == len(values)
    rows = read_summary(sweep_dir)
    assert [r["job"] for r in rows] == [str(i) for i in range(len(values))]
    for row, res in zip(rows, results, strict=True):
        assert row["status"] == "ok"
        assert float(row["train_loss"]) == pytest.approx(res["metrics"]["train/loss"])
        assert float(row["val_loss"]) == pytest.approx(res["metrics"]["val/loss"])
        assert row["save_dir"] == res["save_dir"]
    assert "job  status  train_loss  val_loss  overrides" in out.stdout
    return results


def test_basic_launcher_sweep(micro_storage: Path, tmp_path: Path) -> None:
    mlruns = tmp_path / "mlruns"
    out, sweep_dir = run_sweep(
        tmp_path,
        micro_storage,
        "stage=baseline",
        "training.learning_rate=1e-4,2e-4",
        f"mlflow.tracking_uri={mlruns}",
    )
    assert out.returncode == 0, out.stderr
    assert_ok_jobs(sweep_dir, ["0.0001", "0.0002"], out)
    # one MLflow run per job, named after the job's experiment.name
    names = sorted(yaml.safe_load(p.read_text())["run_name"] for p in mlruns.glob("*/*/meta.yaml"))
    assert names == [
        "baseline-mtp_0_training.learning_rate=0.0001",
        "baseline-mtp_1_training.learning_rate=0.0002",
    ]


def test_submitit_local_sweep(micro_storage: Path, tmp_path: Path) -> None:
    out, sweep_dir = run_sweep(
        tmp_path,
        micro_storage,
        "hydra/launcher=submitit_local",
        "stage=baseline",
        "training.learning_rate=1e-4,2e-4",
    )
    assert out.returncode == 0, out.stderr
    assert (sweep_dir / ".submitit").is_dir()
    results = assert_ok_jobs(sweep_dir, ["0.0001", "0.0002"], out)
    assert all(r["job_id"] for r in results)  # submitit's job ids


def test_failed_job_shows_in_summary(micro_storage: Path, tmp_path: Path) -> None:
    out, sweep_dir = run_sweep(
        tmp_path, micro_storage, "stage=baseline", "training.learning_rate=1e-4,2.0"
    )
    assert out.returncode == 2, out.stderr  # every failure is a user error
    assert "Traceback" not in out.stderr
    assert "must satisfy 0 < learning_rate <= 1" in out.stderr
    rows = read_summary(sweep_dir)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "failed")]
    assert rows[0]["val_loss"] and not rows[1]["val_loss"]
    assert "ConfigValidationError" in rows[1]["error"]
    assert "training.learning_rate = 2.0" in rows[1]["error"]
    failed = read_result(sweep_dir / "1")
    assert failed["user_error"] is True and failed["metrics"] == {}
    assert "1    failed" in out.stdout and "1 of 2 sweep jobs failed" in out.stderr


def test_killed_submitit_jobs_are_listed(micro_storage: Path, tmp_path: Path) -> None:
    """Jobs killed at once (timeout 0) leave no result.json: still one row each, exit 1."""
    out, sweep_dir = run_sweep(
        tmp_path,
        micro_storage,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=0",
        "stage=baseline",
        "training.learning_rate=1e-4,2e-4",
    )
    assert out.returncode == 1, out.stderr
    rows = read_summary(sweep_dir)
    assert [r["job"] for r in rows] == ["0", "1"]
    assert {r["status"] for r in rows} <= {"missing", "crashed"}, rows
    assert rows[1]["overrides"].endswith("training.learning_rate=0.0002") or (
        "training.learning_rate=0.0002" in rows[1]["overrides"]
    )
    assert "missing" in out.stdout or "crashed" in out.stdout


def test_crashed_job_without_result_is_listed(tmp_path: Path) -> None:
    """A job dir with Hydra's .hydra/ but no result.json (the process died) is 'crashed'."""
    ok, dead = tmp_path / "0", tmp_path / "1"
    for d in (ok, dead):
        (d / ".hydra").mkdir(parents=True)
    (dead / ".hydra" / "overrides.yaml").write_text("- training.beta=0.5\n")
    (dead / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    num: 1\n")
    (ok / job_results.RESULT_FILE).write_text(
        json.dumps(
            {
                "job": 0,
                "status": "ok",
                "overrides": ["training.beta=0.9"],
                "metrics": {"train/loss": 1.5, "val/loss": 2.5, "step": 3},
            }
        )
    )
    (tmp_path / ".submitit" / "123").mkdir(parents=True)  # not a job dir
    rows = summary.write_summary(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [(0, "ok"), (1, "crashed")]
    assert rows[1]["overrides"] == "training.beta=0.5"
    csv_rows = read_summary(tmp_path)
    assert csv_rows[0]["train_loss"] == "1.5" and csv_rows[1]["status"] == "crashed"
    table = summary.format_table(rows)
    assert "training.beta=0.9" in table and "no result.json" in table


def test_job_suffix_is_file_name_safe() -> None:
    assert naming.job_suffix(3, "") == "3"
    assert naming.job_suffix(0, "training.beta=0.5") == "0_training.beta=0.5"
    assert naming.job_suffix(1, "dataset.train=/a b/c.jsonl") == "1_dataset.train=_a_b_c.jsonl"
    long = naming.job_suffix(2, "x" * 300)
    assert len(long) == naming.MAX_SUFFIX and long != naming.job_suffix(2, "x" * 301)


def test_swept_keys_from_multirun_yaml(tmp_path: Path) -> None:
    (tmp_path / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "overrides": {"task": ["stage=rho1", "training.k_percent=0.4,0.6"]},
                    "sweeper": {
                        "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                        "params": {"training.temperature": "0.5,1.0"},
                    },
                }
            }
        )
    )
    assert naming.swept_keys(tmp_path) == {"training.k_percent", "training.temperature"}
    assert naming.swept_keys(tmp_path / "none") is None
    assert naming.expected_jobs(tmp_path) == [
        ["training.temperature=0.5", "stage=rho1", "training.k_percent=0.4"],
        ["training.temperature=0.5", "stage=rho1", "training.k_percent=0.6"],
        ["training.temperature=1.0", "stage=rho1", "training.k_percent=0.4"],
        ["training.temperature=1.0", "stage=rho1", "training.k_percent=0.6"],
    ]


def _hydra_cfg(*overrides: str):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_slurm_presets_compose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_PARTITION", "a100q")
    launcher = _hydra_cfg("hydra/launcher=slurm_a100").hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (1, 4, 4)
    assert launcher.partition == "a100q"
    setup = "\n".join(launcher.setup)
    assert "scontrol show hostnames" in setup and "MASTER_PORT=" in setup
    local = _hydra_cfg("hydra/launcher=slurm_local").hydra.launcher
    assert (local.gpus_per_node, local.tasks_per_node, local.partition) == (None, 1, "debug")
    assert list(local.setup) == list(launcher.setup)
    callbacks = _hydra_cfg().hydra.callbacks
    assert callbacks.sweep_summary._target_ == "weighted_mtp.sweep.summary.SweepSummary"


def test_python_m_cli_entrypoint() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "weighted_mtp.cli", "stage=rho1", "--cfg", "job"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "stage: rho1" in out.stdout


def test_vessl_run_spec_command_composes() -> None:
    """deploy/vessl/run.yaml's torchrun line, run as python -m weighted_mtp.cli --cfg job."""
    spec = yaml.safe_load((REPO / "deploy" / "vessl" / "run.yaml").read_text())
    assert {"name", "resources", "image", "run"} <= set(spec)
    (line,) = [ln for ln in spec["run"][0]["command"].splitlines() if "torchrun" in ln]
    assert "--nproc_per_node 4 -m weighted_mtp.cli" in line and "profile=vessl" in line
    cmd = line.strip().replace(
        "torchrun --standalone --nproc_per_node 4 -m weighted_mtp.cli",
        f"{sys.executable} -m weighted_mtp.cli",
    )
    env = {**os.environ, **{k: str(v) for k, v in spec["env"].items()}}
    env["WMTP_OVERRIDES"] = "training.k_percent=0.4"
    out = subprocess.run(
        ["bash", "-c", f"{cmd} --cfg job"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    job = yaml.safe_load(out.stdout)
    assert job["experiment"]["stage"] == spec["env"]["STAGE"]
    assert job["checkpoint"]["save_dir"] == f"/output/checkpoints/{spec['env']['STAGE']}"
    assert job["training"]["k_percent"] == 0.4 and job["runtime"]["device"] == "cuda"
