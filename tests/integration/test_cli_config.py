"""The two command lines, through subprocesses: exit codes, messages, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

WMTP = [str(Path(sys.executable).with_name("wmtp"))]
SEED = [sys.executable, "-m", "weighted_mtp"]


def run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def write_seed_file(tmp_path: Path, args: list[str]) -> Path:
    out = run([*WMTP, *args, "--cfg", "job"])
    assert out.returncode == 0, out.stderr
    f = tmp_path / "config.yaml"
    f.write_text(out.stdout)
    return f


def test_seed_cli_help_lists_commands() -> None:
    out = run([*SEED, "--help"])
    assert out.returncode == 0
    for command in ("train", "validate-config"):
        assert command in out.stdout


def test_validate_config_success_prints_summary(tmp_path, path_overrides) -> None:
    f = write_seed_file(tmp_path, ["stage=rho1", "profile=vessl"])
    out = run([*SEED, "validate-config", "--config", str(f), *_as_seed(path_overrides)])
    assert out.returncode == 0, out.stderr
    assert f"Config valid: {f}" in out.stdout
    for line in ("Experiment: rho1-weighted", "Stage: rho1", "Dataset: codecontests"):
        assert line in out.stdout


def test_validate_config_failure_exit_2_without_traceback(tmp_path, path_overrides) -> None:
    f = write_seed_file(tmp_path, ["stage=verifiable"])
    out = run(
        [
            *SEED,
            "validate-config",
            "--config",
            str(f),
            *_as_seed(path_overrides),
            "--override",
            "training.beta=0",
            "--override",
            "data_sampling.curriculum_schedule[0].difficulty_weights.low=0.8",
        ]
    )
    assert out.returncode == 2
    assert "training.beta = 0" in out.stderr and "must sum to 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_train_malformed_override(tmp_path) -> None:
    f = write_seed_file(tmp_path, [])
    out = run([*SEED, "train", "--config", str(f), "--override", "experiment.name test"])
    assert out.returncode == 2
    assert "the form is key=value" in out.stderr and "Traceback" not in out.stderr


def test_seed_cli_missing_config_file(tmp_path) -> None:
    out = run([*SEED, "validate-config", "--config", str(tmp_path / "none.yaml")])
    assert out.returncode == 2 and "config file not found" in out.stderr


def test_wmtp_user_errors_exit_2(tmp_path) -> None:
    for args, needle in (
        (["training.batch_sz=8"], "batch_sz"),
        (["training.batch_size=abc"], "training.batch_size"),
        (["experiment.name", "x"], "key=value"),
        ([], "path does not exist"),
    ):
        out = run([*WMTP, *args], cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr


def test_wmtp_help_lists_groups_and_cfg_prints_config() -> None:
    out = run([*WMTP, "--help"])
    assert out.returncode == 0
    assert "stage: baseline, critic, rho1, verifiable" in out.stdout
    assert "profile: local, vessl" in out.stdout
    out = run([*WMTP, "stage=critic", "data_sampling.seed=7", "--cfg", "job"])
    assert "stage: critic" in out.stdout and "seed: 7" in out.stdout


def _as_seed(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--override", o)]
