"""runtime.distributed=hsdp (FSDP2 over a (replicate, shard) mesh): 2 "nodes" x 2
processes, gloo on CPU, == 1 process for every stage; a checkpoint saved under hsdp
resumes; runtime.nodes, node detection from torchrun's and Slurm's environment, and the
validation of both.

The 2 nodes are two torchrun launches on this machine (``--nnodes 2 --node-rank 0/1``,
one master address and port), each starting 2 workers: torchrun sets WORLD_SIZE=4 and
LOCAL_WORLD_SIZE=2, so runtime.nodes=null finds 2 nodes, and every node's 2 ranks form a
shard group. The workers are test_fsdp.py's ``train FILE...`` (one process group, each
config trained in turn).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import free_port, losses  # noqa: E402
from test_fsdp import ENV, _max_diff  # noqa: E402

from weighted_mtp import app  # noqa: E402
from weighted_mtp import distributed as dist  # noqa: E402
from weighted_mtp.config.validate import ConfigValidationError, validate  # noqa: E402
from weighted_mtp.errors import UserError  # noqa: E402
from weighted_mtp.training import checkpoint as ckpt  # noqa: E402
from weighted_mtp.training import parallel  # noqa: E402

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
WORKER = str(Path(__file__).with_name("test_fsdp.py"))


def launch_two_nodes(files: list[Path], timeout: int = 900) -> None:
    """``torchrun --nnodes 2 --nproc-per-node 2`` as two launches (node ranks 0 and 1)
    sharing one master address and port, each training ``files`` in turn."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                TORCHRUN,
                "--nnodes=2",
                "--nproc-per-node=2",
                f"--node-rank={node}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                WORKER,
                "train",
                *map(str, files),
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for node, (p, (_, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"node {node}:\n{err[-4000:]}"


def test_every_stage_hsdp_on_two_nodes_equals_one_process(make_cfg, tmp_path: Path) -> None:
    """baseline (with a periodic checkpoint), critic (frozen sharded policy, replicated value
    head), verifiable, rho1 (step-wide selection over all 4 ranks): 2 nodes x 2 ranks,
    batch 1 each == 1 process, batch 4, after 2 steps; 5 validation records, so ranks pad.
    Then the baseline's step-1 checkpoint (saved under hsdp) resumes to the same final
    weights, in the same launch."""
    common = [
        "data_sampling.n_samples=8",
        # as test_fsdp: AdamW's ~lr move per weight makes summation-order noise show at lr
        # scale; 5e-4 keeps it under 1e-5 while weights move 50x that per step
        "training.learning_rate=5e-4",
        "training.eval_samples=5",
        "mlflow.experiment=dist",
    ]

    def cfg(stage: str, name: str, *extra: str):
        size = ["training.batch_size=4"]
        if "hsdp" in name:
            size = ["training.batch_size=1", "runtime.distributed=hsdp"]
        return make_cfg(
            stage,
            *common,
            *size,
            f"checkpoint.save_dir={tmp_path}/{name}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/{name}.db",
            f"models.reference.cache_dir={tmp_path}/{name}-cache",
            *extra,
        )

    critic_ckpt = f"experiment.critic_checkpoint={tmp_path}/critic/checkpoint_final"
    periodic = ["checkpoint.save_checkpoint_every=0.5"]  # after step 1 of 2
    stages = (
        ("baseline", periodic),
        (
            "critic",
            ["training.frozen_trunk_cache_mb=0"],
        ),  # the local recipe's cache: replicated only
        ("verifiable", [critic_ckpt]),
        ("rho1", []),
    )
    for stage, extra in stages:
        app.run(cfg(stage, stage, *extra))
    files = []
    for stage, extra in stages:
        files.append(tmp_path / f"{stage}-hsdp.yaml")
        files[-1].write_text(OmegaConf.to_yaml(cfg(stage, f"{stage}-hsdp", *extra)))
    # resumed from the hsdp baseline's step-1 checkpoint, written in the run before it
    resume = f"checkpoint.resume={tmp_path}/baseline-hsdp/checkpoint_step1"
    files.append(tmp_path / "resumed-hsdp.yaml")
    resumed = cfg("baseline", "resumed-hsdp", *periodic)
    resumed.checkpoint.resume = resume.split("=", 1)[1]
    files[-1].write_text(OmegaConf.to_yaml(resumed))
    launch_two_nodes(files)

    def result(name: str) -> dict:
        state = ckpt.load(tmp_path / name / "checkpoint_final")
        return {**state, "losses": losses(f"sqlite:///{tmp_path}/{name}.db")}

    for stage, _ in stages:
        a, b = result(stage), result(f"{stage}-hsdp")
        assert a["step"] == b["step"] == 2, stage
        assert b["world_size"] == 4 and b["sharded"] == (stage != "critic"), stage
        assert a["modules"].keys() == b["modules"].keys(), stage
        for name in a["modules"]:
            diff = _max_diff(a["modules"][name], b["modules"][name])
            print(f"{stage} {name}: max |weight diff| {diff:.2e}")  # pytest -s shows it
            assert diff < 1e-5, (stage, name, diff)
        assert len(a["losses"]) == len(b["losses"]) == 2, stage
        loss_diff = max(abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=True))
        assert loss_diff < 1e-5, (stage, loss_diff)
        for k, v in a["val"].items():
            assert abs(v - b["val"][k]) < 1e-5 or v != v and b["val"][k] != b["val"][k], (k, stage)

    # the sharded checkpoint: one file per rank, the second node's without chunks (copies)
    final = tmp_path / "baseline-hsdp" / "checkpoint_final"
    names = sorted(p.name for p in final.iterdir())
    assert [n for n in names if n.startswith("weights")] == [
        f"weights-0000{r}-of-00004.safetensors" for r in range(4)
    ]
    for r in (2, 3):  # the second node holds copies of the first node's shards
        with safe_open(str(final / f"weights-0000{r}-of-00004.safetensors"), "pt") as f:
            assert not list(f.keys()), r
    model, _ = ckpt.load_policy(final)  # assembled in one process
    b = ckpt.load(final)
    assert _max_diff(model.state_dict(), b["modules"]["policy"]) == 0.0
    # resumed at step 1 under hsdp: the same final weights and last loss
    c = ckpt.load(tmp_path / "resumed-hsdp" / "checkpoint_final")
    assert c["step"] == 2
    assert _max_diff(b["modules"]["policy"], c["modules"]["policy"]) == 0.0
    lb = losses(f"sqlite:///{tmp_path}/baseline-hsdp.db")
    assert losses(f"sqlite:///{tmp_path}/resumed-hsdp.db") == lb[1:]


# --- nodes: the environment, runtime.nodes, validation ---------------------------------


@pytest.mark.parametrize(
    ("env", "info"),
    [
        # torchrun --nnodes 2 --nproc-per-node 4, node 1's second worker
        (
            {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"},
            dist.DistInfo(5, 8, 1, 2),
        ),
        # torchrun without LOCAL_WORLD_SIZE (an older launcher): nodes unknown
        ({"RANK": "0", "WORLD_SIZE": "8", "LOCAL_RANK": "0"}, dist.DistInfo(0, 8, 0, None)),
        # a Slurm task of a 2-node x 4-task job (the multinode preset)
        (
            {"SLURM_PROCID": "6", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2", "SLURM_NNODES": "2"},
            dist.DistInfo(6, 8, 2, 2),
        ),
        # Slurm without SLURM_NNODES: SLURM_NTASKS / SLURM_NTASKS_PER_NODE
        (
            {"SLURM_PROCID": "1", "SLURM_NTASKS": "12", "SLURM_NTASKS_PER_NODE": "4"},
            dist.DistInfo(1, 12, 0, 3),
        ),
        ({}, dist.DistInfo()),
    ],
)
def test_env_info_nodes(monkeypatch, env: dict[str, str], info: dist.DistInfo) -> None:
    for key in list(os.environ):
        if key.startswith("SLURM_") or key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert dist.env_info() == info


def test_node_count() -> None:
    assert dist.node_count(dist.DistInfo(0, 8, 0, 2)) == 2
    assert dist.node_count(dist.DistInfo(0, 8, 0, 2), 4) == 4  # runtime.nodes wins
    assert dist.node_count(dist.DistInfo()) == 1  # one process
    assert dist.node_count(dist.DistInfo(0, 8, 0, None)) == 1  # unknown (the plan's): one


def test_build_hsdp_nodes() -> None:
    cpu = torch.device("cpu")
    p = parallel.build("hsdp", dist.DistInfo(0, 8, 0, 2), cpu, None)
    assert isinstance(p, parallel.HybridSharded) and p.sharded and p.nodes == 2
    assert parallel.build("hsdp", dist.DistInfo(0, 8, 0, 2), cpu, None, nodes=4).nodes == 4
    assert parallel.build("hsdp", dist.DistInfo(0, 8, 0, 8), cpu, None, nodes=1).nodes == 1
    assert type(parallel.build("hsdp", dist.DistInfo(), cpu, None)) is parallel.Replicated
    for nodes in (3, 0):
        with pytest.raises(UserError, match=f"runtime.nodes={nodes}"):
            parallel.build("hsdp", dist.DistInfo(0, 8, 0, 2), cpu, None, nodes=nodes)


def _torchrun_env(monkeypatch, world: int, local: int) -> None:
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))


def test_validation_of_nodes(make_cfg, monkeypatch) -> None:
    """runtime.nodes >= 1 always; under hsdp with several ranks the world size must split
    evenly over the nodes (configured, or from the environment): exit 2, naming the fix."""
    with pytest.raises(ConfigValidationError, match=r"runtime\.nodes") as exc:
        validate(make_cfg("baseline", "runtime.nodes=0"))
    assert isinstance(exc.value, UserError)  # exit 2 (errors.USER_ERROR_EXIT_CODE)
    _torchrun_env(monkeypatch, 6, 3)
    validate(make_cfg("baseline", "runtime.distributed=hsdp"))  # 2 nodes of 3
    validate(make_cfg("baseline", "runtime.distributed=hsdp", "runtime.nodes=3"))
    with pytest.raises(ConfigValidationError, match=r"runtime\.nodes.*split evenly"):
        validate(make_cfg("baseline", "runtime.distributed=hsdp", "runtime.nodes=4"))
    validate(make_cfg("baseline", "runtime.distributed=fsdp", "runtime.nodes=4"))  # unused
    monkeypatch.delenv("LOCAL_WORLD_SIZE")  # nodes unknown: say so
    with pytest.raises(ConfigValidationError, match=r"does not tell how many nodes"):
        validate(make_cfg("baseline", "runtime.distributed=hsdp"))
    with pytest.raises(ConfigValidationError, match=r"training.frozen_trunk_cache_mb.*hsdp"):
        validate(make_cfg("critic", "runtime.distributed=hsdp", "runtime.nodes=2",
                          "training.frozen_trunk_cache_mb=64"))  # fmt: skip
