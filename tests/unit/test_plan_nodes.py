"""The plan on several nodes: HSDP (shard within a node, replicate across nodes) keeps one
node's per-GPU memory and global batch, adds the cross-node gradient all-reduce, and
shortens the run; the flags are checked (exit 2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from weighted_mtp.__main__ import main
from weighted_mtp.config.loader import compose
from weighted_mtp.errors import UserError
from weighted_mtp.plan.build import Machine, make_plan
from weighted_mtp.plan.command import add_plan_arguments, machine_from

TINY = dict(dim=64, n_layers=6, n_heads=4, vocab_size=512, multiple_of=16, n_future_tokens=4)
# batch 2 x 4 accumulation per GPU on one node of 2 GPUs; 64 samples
FIELDS = [
    "profile=local",
    "stage=baseline",
    "dataset.max_length=64",
    "training.batch_size=2",
    "training.gradient_accumulation_steps=4",
    "data_sampling.n_samples=64",
    "training.n_epochs=1",
]


@pytest.fixture(scope="module")
def shape(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("tiny-mtp")
    (d / "params.json").write_text(json.dumps(TINY))
    return str(d)


def _plan(shape: str, nodes: int, distributed: str = "hsdp", *extra: str, **machine: object):
    cfg = compose([*FIELDS, *extra])
    cfg.runtime.distributed = distributed  # hsdp: set on the composed config
    # a slow GPU (1 GFLOPS): the tiny model's compute outweighs its communication, as a
    # 7B model's does on A100s
    kw = {"peak_tflops": 1e-3} | machine
    m = Machine(gpus=2 * nodes, gpus_per_node=2, nodes=nodes, gpu_memory_gb=80, **kw)
    return make_plan(cfg, m, shape, fix=False)


def test_hsdp_over_nodes(shape: str) -> None:
    plans = [_plan(shape, n) for n in (1, 2, 4)]
    # memory per GPU: FSDP's over one node's 2 GPUs at the same micro-batches; fewer
    # accumulation steps hold no more (the shared units' unsharded gradients accumulate)
    same = _plan(shape, 1, "fsdp", "training.gradient_accumulation_steps=2")
    assert plans[1].per_gpu_peak_gb == pytest.approx(same.per_gpu_peak_gb, rel=1e-3)
    peaks = [p.per_gpu_peak_gb for p in plans]
    assert peaks[0] >= peaks[1] >= peaks[2] > 0.8 * peaks[0]
    assert {p.distributed for p in plans} == {"hsdp"}
    # the same global batch and optimizer steps; each GPU takes 1/N of the share
    assert [p.micro_batch for p in plans] == [(2, 4), (2, 2), (2, 1)]
    assert len({p.tokens_per_step for p in plans}) == 1
    assert len({p.optimizer_steps for p in plans}) == 1
    assert plans[0].optimizer_steps == 64 // (2 * 4 * 2)
    # the cross-node all-reduce of the node's gradient shard, ring 2(N-1)/N, 25 GB/s
    assert plans[0].inter_node_time_s == 0
    for p, n in zip(plans[1:], (2, 4), strict=True):
        grad_shard = sum(b for k, b in p.components.items() if k == "parameters") * 1e9
        expected = 2 * (n - 1) / n * grad_shard / 25e9
        assert p.inter_node_time_s == pytest.approx(expected, rel=0.05)
        assert p.communicators == 3
    # compute halves with each doubling; step time and hours fall
    per_gpu = [p.flops_per_step / p.gpus for p in plans]
    assert per_gpu[1] == pytest.approx(per_gpu[0] / 2, rel=0.05)
    assert per_gpu[2] == pytest.approx(per_gpu[0] / 4, rel=0.05)
    computes = [p.compute_time_s for p in plans]
    assert computes[0] > computes[1] > computes[2]
    assert plans[0].step_time_s > plans[1].step_time_s > plans[2].step_time_s
    assert plans[0].run_hours >= plans[1].run_hours >= plans[2].run_hours
    # a slow network shows in the step time
    slow = _plan(shape, 2, "hsdp", inter_node_gbps=0.001)
    assert slow.step_time_s > plans[1].step_time_s
    assert "between nodes" in plans[1].to_text() and "2 node(s) x 2 GPU(s)" in plans[1].to_text()


def test_fsdp_over_nodes_shards_over_every_gpu(shape: str) -> None:
    one, two = _plan(shape, 1, "fsdp"), _plan(shape, 2, "fsdp")
    assert two.components["parameters"] < one.components["parameters"]
    assert two.inter_node_time_s > 0 and two.communicators == 1


def _machine(*flags: str, cfg: dict | None = None) -> Machine:
    p = argparse.ArgumentParser()
    add_plan_arguments(p)
    conf = OmegaConf.create(cfg or {"runtime": {"gpu_memory_gb": None}})
    return machine_from(p.parse_args(list(flags)), conf)


def test_machine_from_flags_and_runtime_nodes() -> None:
    assert (_machine().nodes, _machine().gpus_per_node, _machine().gpus) == (1, 4, 4)
    m = _machine("--nodes", "2", "--gpus-per-node", "8", "--inter-node-gbps", "400")
    assert (m.nodes, m.gpus, m.inter_node_gbps) == (2, 16, 400)
    assert _machine("--gpus", "2").gpus_per_node == 2  # the one-node form
    runtime = {"runtime": {"gpu_memory_gb": 80, "nodes": 4}}
    assert _machine(cfg=runtime).gpus == 16 and _machine(cfg=runtime).gpu_memory_gb == 80
    assert _machine("--nodes", "1", cfg=runtime).nodes == 1  # the flag wins
    for flags in (
        ["--nodes", "0"],
        ["--gpus-per-node", "0"],
        ["--inter-node-gbps", "0"],
        ["--gpus", "6", "--nodes", "4"],
        ["--mfu", "1.5"],
    ):
        with pytest.raises(UserError):
            _machine(*flags)
    with pytest.raises(UserError, match="runtime.nodes"):
        _machine(cfg={"runtime": {"gpu_memory_gb": None, "nodes": 0}})


def test_plan_command_exits_2_on_bad_flags(tmp_path: Path, shape: str, capsys) -> None:
    cfg = compose(FIELDS)
    cfg.models.policy.path = shape
    f = tmp_path / "c.yaml"
    OmegaConf.save(cfg, f)
    for flags in (["--nodes", "0"], ["--nodes", "3"], ["--inter-node-gbps", "-1"]):
        assert main(["plan", "--config", str(f), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert flags[0] in err
    assert main(["plan", "--config", str(f), "--nodes", "2", "--gpus-per-node", "2"]) == 0
    assert "2 node(s) x 2 GPU(s)" in capsys.readouterr().out
