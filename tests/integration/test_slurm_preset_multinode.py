"""hydra/launcher=slurm_a100_multinode: the sbatch script hydra-submitit-launcher would
submit (nodes, tasks and GPUs per node, the rendezvous setup lines), written by submitit
offline, and the job config it runs (runtime.distributed=hsdp, nodes from Slurm); the
VESSL multi-node spec (deploy/vessl/run_multinode.yaml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import submitit
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from tests.conftest import REPO
from weighted_mtp import distributed as dist
from weighted_mtp.config import CONF_DIR
from weighted_mtp.config.schema import register_schema


def _compose(*overrides: str):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def sbatch_script(launcher_cfg, folder: Path) -> str:
    """The sbatch text of one job, with the launcher's own mapping of its fields onto
    submitit's (hydra_submitit_launcher.submitit_launcher.BaseSubmititLauncher.launch)."""
    launcher = instantiate(launcher_cfg)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {
        (k if k in base else f"slurm_{k}"): v
        for k, v in launcher.params.items()
        if k not in ("submitit_folder", "max_num_timeout")
    }
    executor = submitit.AutoExecutor(cluster="slurm", folder=folder)
    executor.update_parameters(**params)
    return executor._executor._make_submission_file_text("python -m job", "uid")


def test_multinode_preset_sbatch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLURM_PARTITION", "a100q")
    cfg = _compose(
        "hydra/launcher=slurm_a100_multinode",
        "hydra.launcher.nodes=4",
        "hydra.sweep.dir=" + str(tmp_path),
        "profile=vessl",
        "runtime.distributed=hsdp",
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (4, 4, 4)
    assert cfg.runtime.distributed == "hsdp" and cfg.runtime.nodes is None
    script = sbatch_script(launcher, tmp_path)
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --partition=a100q",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
    ):
        assert line in script, line
    # setup before srun, which starts the 16 tasks
    assert script.index("MASTER_ADDR") < script.index("srun")
    # the default: 2 nodes; the one-node preset is unchanged
    two = _compose("hydra/launcher=slurm_a100_multinode").hydra.launcher
    assert (two.nodes, two.tasks_per_node, two.gpus_per_node) == (2, 4, 4)
    assert list(two.setup) == list(_compose("hydra/launcher=slurm_a100").hydra.launcher.setup)
    assert _compose("hydra/launcher=slurm_a100").hydra.launcher.nodes == 1


def test_slurm_task_env_maps_to_hsdp(monkeypatch: pytest.MonkeyPatch) -> None:
    """What each of the preset's tasks sees (4 nodes x 4 tasks): rank, world size, local
    rank and node count for torch.distributed and hsdp's (4, 4) mesh."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    env = {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
           "SLURM_NNODES": "4", "SLURM_NTASKS_PER_NODE": "4"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    info = dist.env_info()
    assert info == dist.DistInfo(rank=9, world_size=16, local_rank=1, nodes=4)
    assert dist.node_count(info) == 4


def test_vessl_multinode_spec(tmp_path: Path) -> None:
    """deploy/vessl/run_multinode.yaml: torchrun's node flags from VESSL's variables (node
    1 of 2 here), and the job it starts composes with runtime.distributed=hsdp."""
    spec = yaml.safe_load((REPO / "deploy" / "vessl" / "run_multinode.yaml").read_text())
    assert {"name", "resources", "image", "run"} <= set(spec)
    (line,) = [ln for ln in spec["run"][0]["command"].splitlines() if "torchrun" in ln]
    launcher, job = line.strip().split(" -m weighted_mtp.cli ")
    env = {**os.environ, **{k: str(v) for k, v in spec["env"].items()}}
    env |= {"NUM_NODES": "2", "RANK": "1", "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "2345",
            "NUM_TRAINERS": "4", "WMTP_OVERRIDES": "training.k_percent=0.4"}  # fmt: skip
    flags = subprocess.run(
        ["bash", "-c", launcher.replace("torchrun", "echo", 1)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert flags == ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.7",
                     "--master_port", "2345", "--nproc_per_node", "4"]  # fmt: skip
    out = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m weighted_mtp.cli {job} --cfg job"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["runtime"]["distributed"] == "hsdp" and cfg["runtime"]["nodes"] is None
    assert cfg["experiment"]["stage"] == spec["env"]["STAGE"]
    assert cfg["training"]["k_percent"] == 0.4
