"""Checkpoints: SIGKILL + resume equals an uninterrupted run (bit-exact, CPU); atomic
writes survive a kill mid-save; a NaN loss stops the run and leaves checkpoints intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from weighted_mtp import app
from weighted_mtp.errors import TrainingDiverged
from weighted_mtp.training import checkpoint as ckpt
from weighted_mtp.weighting import UniformWeighting, WeightingInputs

THIS = "tests.integration.test_resume"


class KillAtCall(UniformWeighting):
    """Uniform weights; SIGKILLs its own process at the given call (0: never)."""

    def __init__(self, kill_at: int = 0) -> None:
        self.kill_at, self.calls = kill_at, 0

    def weights(self, inputs: WeightingInputs) -> Tensor:
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().weights(inputs)


class NanFromCall(UniformWeighting):
    def __init__(self, nan_from: int) -> None:
        self.nan_from, self.calls = nan_from, 0

    def weights(self, inputs: WeightingInputs) -> Tensor:
        self.calls += 1
        w = super().weights(inputs)
        return w * float("nan") if self.calls >= self.nan_from else w


def train_subprocess(cfg, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    f = tmp_path / f"{name}.yaml"
    f.write_text(OmegaConf.to_yaml(cfg))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-m", "weighted_mtp", "train", "--config", str(f)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def final_weights(save_dir: str) -> dict[str, Tensor]:
    return ckpt.load(Path(save_dir) / "checkpoint_final")["modules"]["policy"]


@pytest.mark.parametrize("stage", ["baseline", "critic"])
def test_sigkill_then_resume_equals_uninterrupted(make_cfg, tmp_path, stage) -> None:
    common = [
        "data_sampling.n_samples=24",
        "training.n_epochs=1",
        "training.learning_rate=1e-3",
        "training.warmup_ratio=0.2",
        "checkpoint.save_checkpoint_every=0.25",  # every 3 steps of 12
        "checkpoint.save_total_limit=1",
    ]
    if stage == "baseline":
        common.append(f"weighting._target_={THIS}.KillAtCall")
        plug = ["+weighting.kill_at=8"]
    else:
        plug = []
    ref = make_cfg(stage, *common, f"checkpoint.save_dir={tmp_path}/ref")
    assert train_subprocess(ref, tmp_path, "ref").returncode == 0

    run = make_cfg(stage, *common, *plug, f"checkpoint.save_dir={tmp_path}/run")
    if stage == "baseline":
        killed = train_subprocess(run, tmp_path, "run")
        assert killed.returncode == -signal.SIGKILL
    else:  # kill from outside, once a periodic checkpoint exists
        f = tmp_path / "run.yaml"
        f.write_text(OmegaConf.to_yaml(run))
        proc = subprocess.Popen([sys.executable, "-m", "weighted_mtp", "train", "--config", str(f)])
        deadline = time.time() + 300
        while not list(Path(run.checkpoint.save_dir).glob("checkpoint_step*")):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (Path(run.checkpoint.save_dir) / "checkpoint_final").exists()
    periodic = ckpt.periodic_checkpoints(Path(run.checkpoint.save_dir))
    assert len(periodic) == 1  # save_total_limit

    resumed = make_cfg(
        stage, *common, f"checkpoint.save_dir={tmp_path}/run", "checkpoint.resume=auto"
    )
    result = app.run(resumed)
    assert result["step"] == 12
    key = "policy" if stage == "baseline" else "value_head"
    a = ckpt.load(Path(ref.checkpoint.save_dir) / "checkpoint_final")["modules"][key]
    b = ckpt.load(Path(run.checkpoint.save_dir) / "checkpoint_final")["modules"][key]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-exact


def test_kill_during_save_never_leaves_a_valid_looking_file(tmp_path) -> None:
    target = tmp_path / "state.json"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from weighted_mtp.fileio import atomic_write_bytes
        big = b"x" * (256 << 20)
        while True:
            atomic_write_bytes(Path({str(target)!r}), big)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if target.exists():  # a complete earlier write, never a torn one
        assert target.stat().st_size == 256 << 20
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert all(p.name.startswith(".state.json.") for p in leftovers)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(make_cfg) -> None:
    cfg = make_cfg(
        "baseline",
        f"weighting._target_={THIS}.NanFromCall",
        "+weighting.nan_from=6",
        "checkpoint.save_checkpoint_every=0.25",  # step 2, 4, ... of 8
    )
    with pytest.raises(TrainingDiverged, match="loss is nan at step 6"):
        app.run(cfg)
    save_dir = Path(cfg.checkpoint.save_dir)
    assert not (save_dir / "checkpoint_final").exists()
    last = ckpt.periodic_checkpoints(save_dir)[-1]
    assert last.name == "checkpoint_step4"
    state = ckpt.load(last)
    assert all(torch.isfinite(v).all() for v in state["modules"]["policy"].values())
