"""training.compile: every stage and weighting computes the same step compiled as eager.

Each case builds the stage's task with the stage's own builder on the micro assets, applies
the training options (:func:`weighted_mtp.training.compile.apply`) to one policy copy with
``compile`` on and one with it off, and runs one step's forward/backward (the step-wide
pass, denominators, micro-steps) on the same micro-batch: the loss terms and every
gradient (policy and value head) agree. The ``aot_eager`` backend (the internal knob
WEIGHTED_MTP_COMPILE_BACKEND) traces the same block graphs as inductor without its C++
code generation, which would take minutes on a small CPU; tests/unit/test_compile.py runs
inductor itself once.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.utils import counters

from weighted_mtp.data.collate import Collator
from weighted_mtp.data.dataset import ProcessedDataset
from weighted_mtp.models.formats import load_model
from weighted_mtp.models.mtp import MTPTransformer
from weighted_mtp.models.tokenizer import load_tokenizer
from weighted_mtp.models.value_head import ValueHead
from weighted_mtp.training import compile as speed
from weighted_mtp.training.task import Task, denominators, micro_step

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import free_port  # noqa: E402
from test_fsdp import plain_batch  # noqa: E402

TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

CASES = [
    ("baseline", "uniform", []),
    ("critic", None, []),
    ("verifiable", "td_error", []),
    ("verifiable", "verifiable_control", []),
    ("rho1", "rho1", []),
    ("rho1", "rho1_control", []),
    ("baseline", "uniform", ["training.activation_checkpointing=true"]),
]


@pytest.fixture(autouse=True)
def _aot_eager(monkeypatch):
    monkeypatch.setattr("weighted_mtp.models.mtp.COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _task(cfg, stage: str, model: MTPTransformer, tok, monkeypatch) -> Task:
    if stage == "verifiable":  # a critic's value head without training a critic first
        head = ValueHead(model.args.dim)
        with torch.no_grad():
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) * 0.1)
        monkeypatch.setattr("weighted_mtp.training.checkpoint.load_value_head", lambda _p: head)
        monkeypatch.setattr("weighted_mtp.training.checkpoint.file_sha256", lambda _p: "x")
    builder = importlib.import_module(f"weighted_mtp.stages.{stage}").build_task
    return builder(cfg, model, tok, "cpu")


def _step(cfg, stage, compiled: bool, batches, tok, monkeypatch):
    torch.manual_seed(0)
    model = load_model(cfg.models.policy.path)
    model.set_activation_checkpointing(cfg.training.activation_checkpointing)
    task = _task(cfg, stage, model, tok, monkeypatch)
    speed.apply(SimpleNamespace(compile=compiled, loss_chunk_size=7), model, task)
    assert model.compiled is compiled and task.chunk_size == 7
    if not task.train_policy:
        model.requires_grad_(False)
    if task.prepare is not None:
        task.prepare(iter(batches))
    task.begin_step(model, batches)
    den = denominators(task, batches, model.n_future_tokens)
    losses = [micro_step(task, model, b, den, backward=True)["loss"] for b in batches]
    grads = {
        f"{name}.{n}": p.grad.clone()
        for name, m in task.trainable_modules(model).items()
        for n, p in m.named_parameters()
        if p.grad is not None
    }
    return torch.stack(losses), grads


@pytest.mark.parametrize("stage,weighting,extra", CASES)
def test_compiled_step_equals_eager(make_cfg, monkeypatch, stage, weighting, extra) -> None:
    overrides = [*extra, "training.k_percent=0.5"] if stage == "rho1" else list(extra)
    if weighting is not None:
        overrides.append(f"weighting={weighting}")
    cfg = make_cfg(stage, *overrides)
    tok = load_tokenizer(cfg.models.policy.tokenizer_path)
    ds = ProcessedDataset(cfg.dataset.train)
    collator = Collator(tok, cfg.dataset.max_length)
    batches = [collator(ds.records([0, 1, 2]))]
    loss_e, grads_e = _step(cfg, stage, False, batches, tok, monkeypatch)
    loss_c, grads_c = _step(cfg, stage, True, batches, tok, monkeypatch)
    assert counters["stats"]["unique_graphs"] >= 1  # the blocks did run compiled
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert grads_e and grads_c.keys() == grads_e.keys()
    for k in grads_e:
        torch.testing.assert_close(grads_c[k], grads_e[k], rtol=1e-4, atol=1e-6, msg=k)


def test_the_loop_applies_compile_and_loss_chunk_size(make_cfg, monkeypatch) -> None:
    """app.run honours training.compile (the policy's blocks run compiled, from the first
    step on) and training.loss_chunk_size (every MTP loss call uses it)."""
    from weighted_mtp import app
    from weighted_mtp.training import task as task_module

    sizes, real = [], task_module.mtp_loss

    def spy(*a, **k):
        sizes.append(k["chunk_size"])
        return real(*a, **k)

    monkeypatch.setattr(task_module, "mtp_loss", spy)
    cfg = make_cfg(
        "baseline", "training.compile=true", "training.loss_chunk_size=5",
        "data_sampling.n_samples=4", "training.eval_samples=2",
    )  # fmt: skip
    app.run(cfg)
    assert sizes and set(sizes) == {5}
    assert counters["stats"]["unique_graphs"] >= 1


def test_fsdp_compiled_with_checkpointing_equals_one_process_eager(tmp_path) -> None:
    """2 gloo processes on CPU: the policy compiled (before sharding, as the loop applies
    it), activation-checkpointed and sharded with FSDP2; its gradients of one step ==
    one eager process on the global batch."""
    out = tmp_path / "fsdp.json"
    port = free_port()
    cmd = [*TORCHRUN, f"--master_port={port}", __file__, str(out)]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["graphs"] >= 1 and r["sharded"], r
    assert r["max_grad_diff"] < 1e-6 and r["loss_diff"] < 1e-6, r


def _fsdp_worker(out_path: str) -> None:
    import torch.distributed as tdist

    from weighted_mtp.distributed import DistInfo, env_info
    from weighted_mtp.models import mtp
    from weighted_mtp.models.mtp import ModelArgs
    from weighted_mtp.training import fsdp
    from weighted_mtp.training.parallel import Replicated, Sharded
    from weighted_mtp.training.step import optimizer_step
    from weighted_mtp.weighting.uniform import UniformWeighting

    mtp.COMPILE_BACKEND = "aot_eager"
    tdist.init_process_group("gloo")
    rank = tdist.get_rank()
    args = ModelArgs(dim=32, n_layers=5, n_heads=4, vocab_size=64, n_future_tokens=3)
    base = MTPTransformer(args)
    base.init_weights(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    batches = []
    for i in range(4):  # rank r, micro-batch m -> sequence 2m + r
        ids = torch.randint(0, 64, (1, 10), generator=g)
        labels = ids.clone()
        labels[:, 7 if i % 2 else 10 :] = -100
        batches.append(plain_batch(ids, labels))
    cpu = torch.device("cpu")
    results = {}
    for name, compiled, par in (
        ("sharded", True, Sharded(env_info(), cpu, None)),
        ("ref", False, Replicated(DistInfo(), cpu, None)),
    ):
        model = copy.deepcopy(base)
        model.set_activation_checkpointing(True)
        task = Task(train_policy=True, weighting=UniformWeighting())
        speed.apply(SimpleNamespace(compile=compiled, loss_chunk_size=3), model, task)
        par.prepare(model)
        mine = [batches[2 * m + rank] for m in range(2)] if compiled else batches
        grads: dict[str, torch.Tensor] = {}

        def keep(params, max_norm, model=model, grads=grads, clip=par.clip_grad_norm_):
            for n, p in model.named_parameters():
                grads[n] = p.grad.full_tensor() if fsdp.is_dtensor(p.grad) else p.grad.clone()
            return clip(params, max_norm)

        par.clip_grad_norm_ = keep
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        res = optimizer_step(
            mine, task, model, par, opt, scaler, list(model.parameters()), 1e9, cpu, None
        )
        results[name] = (grads, res.totals["loss"], fsdp.is_sharded(model))
    (g_s, loss_s, sharded), (g_r, loss_r, _) = results["sharded"], results["ref"]
    if rank == 0:
        Path(out_path).write_text(
            json.dumps(
                {
                    "graphs": counters["stats"]["unique_graphs"],
                    "sharded": sharded,
                    "max_grad_diff": max((g_s[n] - g_r[n]).abs().max().item() for n in g_r),
                    "loss_diff": abs(loss_s - loss_r),
                }
            )
        )
    tdist.barrier()
    tdist.destroy_process_group()


if __name__ == "__main__":
    _fsdp_worker(sys.argv[1])
