"""Fixes read in the syntax of the command line that printed them (issue 24, item 6):
``wmtp``'s ``key=value``, the seed CLI's ``--override key=value``; unknown keys name the
closest field; ``~key`` resets a field; the verifiable stage says to train the critic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, storage_overrides

WMTP = [str(Path(sys.executable).with_name("wmtp"))]
SEED = [sys.executable, "-m", "weighted_mtp"]


def run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def user_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    return out.stderr


def seed_file(tmp_path: Path, *args: str) -> Path:
    """The flat config ``wmtp ... --cfg job`` prints (paths: pass storage_overrides)."""
    out = run([*WMTP, *args, "--cfg", "job"])
    assert out.returncode == 0, out.stderr
    f = tmp_path / "config.yaml"
    f.write_text(out.stdout)
    return f


def test_unknown_key_names_the_field_in_each_cli(tmp_path) -> None:
    err = user_error(run([*WMTP, "training.lr=0.1", "--cfg", "job"]))
    assert "did you mean training.learning_rate?" in err
    assert "Fix: training.learning_rate=<value>" in err
    assert "+training.lr" not in err and "--override" not in err  # Hydra's '+' would fail too

    f = seed_file(tmp_path)
    err = user_error(
        run([*SEED, "validate-config", "--config", str(f), "--override", "training.lr=1"])
    )
    assert "did you mean training.learning_rate?" in err
    assert "Fix: --override training.learning_rate=<value>" in err


def test_validation_fixes_in_each_cli(tmp_path) -> None:
    hydra_dir = f"hydra.run.dir={tmp_path}/run"
    err = user_error(run([*WMTP, "data_sampling.n_samples=0", hydra_dir], cwd=tmp_path))
    assert "Fix: data_sampling.n_samples=1000" in err
    assert "--override" not in err
    assert "training.batch_size=0" not in err  # not a fix: n_samples is what is wrong

    f = seed_file(tmp_path)
    out = run([*SEED, "validate-config", "--config", str(f), "--override", "training.batch_size=0"])
    assert "Fix: --override training.batch_size=8" in user_error(out)


def test_tilde_resets_a_field_to_its_default(tmp_path, micro_storage) -> None:
    out = run([*WMTP, "~checkpoint.save_total_limit", "--cfg", "job"])
    assert out.returncode == 0, out.stderr
    assert "save_total_limit: 2" in out.stdout  # the schema's default
    err = user_error(run([*WMTP, "~training.n_epochs", "--cfg", "job"]))
    assert "training.n_epochs is required" in err and "Fix: set it instead" in err

    f = seed_file(tmp_path, "checkpoint.save_total_limit=5", *storage_overrides(micro_storage))
    out = run(
        [*SEED, "validate-config", "--config", str(f), "--override", "~training.log_interval"]
    )
    assert out.returncode == 0, out.stderr


def test_sweep_with_cfg_is_a_user_error() -> None:
    err = user_error(run([*WMTP, "-m", "stage=rho1", "training.k_percent=0.4,0.6", "--cfg", "job"]))
    assert "-m (a sweep) and --cfg cannot be combined" in err


def test_verifiable_without_critic_says_train_the_critic(tmp_path, micro_storage) -> None:
    missing = f"experiment.critic_checkpoint={tmp_path}/no-critic"
    paths = storage_overrides(micro_storage)
    out = run(
        [*WMTP, "stage=verifiable", missing, *paths, f"hydra.run.dir={tmp_path}/run"], cwd=REPO
    )
    err = user_error(out)
    assert "train the critic first: wmtp stage=critic" in err
    assert "setup" not in err

    f = seed_file(tmp_path, "stage=verifiable", *paths)
    err = user_error(run([*SEED, "validate-config", "--config", str(f), "--override", missing]))
    assert "train the critic first: python -m weighted_mtp train --config" in err
