"""torchrun with 2 gloo processes on CPU == 1 process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from weighted_mtp import app
from weighted_mtp.training import checkpoint as ckpt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(uri: str) -> list[float]:
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dist").experiment_id])
    return [
        m.value
        for m in sorted(
            client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step
        )
    ]


def test_two_process_ddp_equals_one_process(make_cfg, tmp_path: Path) -> None:
    common = [
        "data_sampling.n_samples=16",
        # AdamW moves a weight by ~lr whatever its gradient's size, so summation-order
        # noise in tiny gradients shows at ~lr scale: 5e-4 keeps it under the 1e-5 bound
        # (1.1e-5 at 1e-3 on the micro policy) while weights move 50x the bound per step
        "training.learning_rate=5e-4",
        "training.gradient_accumulation_steps=2",
        "training.eval_samples=6",
        "mlflow.experiment=dist",
    ]
    single = make_cfg(
        "baseline",
        *common,
        "training.batch_size=4",
        f"checkpoint.save_dir={tmp_path}/single",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/1.db",
    )
    double = make_cfg(
        "baseline",
        *common,
        "training.batch_size=2",
        f"checkpoint.save_dir={tmp_path}/double",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/2.db",
    )
    a, b = launch(single, tmp_path), launch(double, tmp_path, nproc=2)
    assert a["step"] == b["step"] == 2
    worst = max(
        (a["modules"]["policy"][k] - b["modules"]["policy"][k]).abs().max().item()
        for k in a["modules"]["policy"]
    )
    assert worst < 1e-5
    la, lb = losses(f"sqlite:///{tmp_path}/1.db"), losses(f"sqlite:///{tmp_path}/2.db")
    assert len(la) == len(lb) == 2
    assert all(abs(x - y) < 1e-5 for x, y in zip(la, lb, strict=True))
    assert abs(a["val"]["val/mtp_ce"] - b["val"]["val/mtp_ce"]) < 1e-5
    # only rank 0 wrote checkpoints and logs: one file set, one MLflow run
    assert sorted(p.name for p in Path(double.checkpoint.save_dir).iterdir()) == [
        "checkpoint_best",
        "checkpoint_final",
    ]
    assert torch.is_tensor(b["modules"]["policy"]["output.weight"])


def launch(cfg, tmp_path: Path, nproc: int = 1) -> dict:
    """Train ``cfg`` in ``nproc`` processes (torchrun + gloo) or, with ``nproc=1``, in this
    one (one intra-op thread, as the torchrun ranks); the final checkpoint."""
    if nproc == 1:
        app.run(cfg)
    else:
        f = tmp_path / f"{Path(cfg.checkpoint.save_dir).name}.yaml"
        f.write_text(OmegaConf.to_yaml(cfg))
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        launcher = [torchrun, f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
        out = subprocess.run(
            [*launcher, "-m", "weighted_mtp", "train", "--config", str(f)],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
    return ckpt.load(Path(cfg.checkpoint.save_dir) / "checkpoint_final")


def test_rho1_step_scope_batch_equals_accumulation_equals_ranks(make_cfg, tmp_path: Path) -> None:
    """Rho-1's default scope ranks every token of the optimizer step: one process with
    batch 4, 2 micro-batches of 2, and 2 ranks of 2 keep the same tokens."""
    common = [
        "data_sampling.n_samples=8",
        # AdamW moves a weight by ~lr whatever its gradient's size, so summation-order
        # noise in tiny gradients shows at ~lr scale: 5e-4 keeps it under the 1e-5 bound
        # (1.1e-5 at 1e-3 on the micro policy) while weights move 50x the bound per step
        "training.learning_rate=5e-4",
        "training.k_percent=0.3",
        "training.eval_samples=4",
    ]
    runs = {
        "batch": (["training.batch_size=4", "training.gradient_accumulation_steps=1"], 1),
        "accum": (["training.batch_size=2", "training.gradient_accumulation_steps=2"], 1),
        "ranks": (["training.batch_size=2", "training.gradient_accumulation_steps=1"], 2),
    }
    states = {}
    for name, (extra, nproc) in runs.items():
        cfg = make_cfg("rho1", *common, *extra, f"checkpoint.save_dir={tmp_path}/{name}")
        states[name] = launch(cfg, tmp_path, nproc)
    assert states["batch"]["step"] == states["accum"]["step"] == states["ranks"]["step"] == 2
    ref = states["batch"]["modules"]["policy"]
    for name in ("accum", "ranks"):
        other = states[name]["modules"]["policy"]
        worst = max((ref[k] - other[k]).abs().max().item() for k in ref)
        assert worst < 1e-5, (name, worst)


def test_step_wide_control_and_td_normalisation_equal_across_layouts(
    make_cfg, tmp_path: Path
) -> None:
    """The other step-wide weightings: rho1_control's random k% and the TD weighting's
    per-step advantage normalisation see the whole step, so batch 4, 2 micro-batches of 2
    and 2 ranks of 2 train the same weights."""
    critic = make_cfg(
        "critic",
        "training.learning_rate=1e-2",
        "models.value_head.type=linear",
        f"checkpoint.save_dir={tmp_path}/c",
    )
    app.run(critic)
    common = [
        "data_sampling.n_samples=8",
        "training.learning_rate=5e-4",  # see test_two_process_ddp_equals_one_process
        "training.eval_samples=4",
    ]
    layouts = {
        "batch": (["training.batch_size=4", "training.gradient_accumulation_steps=1"], 1),
        "accum": (["training.batch_size=2", "training.gradient_accumulation_steps=2"], 1),
        "ranks": (["training.batch_size=2", "training.gradient_accumulation_steps=1"], 2),
    }
    cases = {
        "rho1_control": ("rho1", ["weighting=rho1_control", "training.k_percent=0.3"]),
        "td_step": (
            "verifiable",
            [
                f"experiment.critic_checkpoint={critic.checkpoint.save_dir}/checkpoint_final",
                "training.advantage_norm=step",
                "training.beta=0.5",
            ],
        ),
    }
    for case, (stage, extra_case) in cases.items():
        states = {}
        for name, (extra, nproc) in layouts.items():
            cfg = make_cfg(
                stage, *common, *extra_case, *extra, f"checkpoint.save_dir={tmp_path}/{case}{name}"
            )
            states[name] = launch(cfg, tmp_path, nproc)
        ref = states["batch"]["modules"]["policy"]
        for name in ("accum", "ranks"):
            other = states[name]["modules"]["policy"]
            worst = max((ref[k] - other[k]).abs().max().item() for k in ref)
            assert worst < 1e-5, (case, name, worst)
