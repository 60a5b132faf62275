"""runtime.distributed=fsdp: 2 gloo processes on CPU (FSDP2) == 1 process; resume; one
reduce-scatter per unit per micro-batch, the same collectives on every rank; the final
checkpoint loads in one process.

Run as a script (``torchrun ... test_fsdp.py OUT``) this module is the worker of
``test_reduce_scatter_per_micro_batch``; ``torchrun ... test_fsdp.py train FILE...`` trains
each config file in turn in one launch (``test_every_stage_fsdp_equals_one_process``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import free_port, losses  # noqa: E402

from weighted_mtp import app  # noqa: E402
from weighted_mtp.training import checkpoint as ckpt  # noqa: E402

TORCHRUN = [
    str(Path(sys.executable).with_name("torchrun")),
    "--nproc_per_node=2",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(cfg, launcher: list[str], tmp_path: Path, name: str) -> None:
    """Train ``cfg`` under ``launcher`` (torchrun), or in this process when it is empty."""
    if not launcher:
        app.run(cfg)
        return
    f = tmp_path / f"{name}.yaml"
    f.write_text(OmegaConf.to_yaml(cfg))
    out = subprocess.run(
        [*launcher, "-m", "weighted_mtp", "train", "--config", str(f)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_fsdp_equals_one_process_resumes_and_loads(make_cfg, tmp_path: Path) -> None:
    common = [
        "data_sampling.n_samples=16",
        "training.n_epochs=2",  # 4 steps; a periodic checkpoint after steps 1, 2, 3
        "checkpoint.save_checkpoint_every=0.5",
        # AdamW moves a weight by ~lr whatever its gradient's size, so summation-order
        # noise in tiny gradients shows at ~lr scale: 5e-4 keeps it under the 1e-5 bound
        # (1.1e-5 at 1e-3 on the micro policy) while weights move 50x the bound per step
        "training.learning_rate=5e-4",
        "training.gradient_accumulation_steps=2",
        "training.eval_samples=6",
        "training.activation_checkpointing=true",
        "mlflow.experiment=dist",
    ]

    def cfg(name: str, *extra: str):
        return make_cfg(
            "baseline",
            *common,
            f"checkpoint.save_dir={tmp_path}/{name}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/{name}.db",
            *extra,
        )

    fsdp = ["training.batch_size=2", "runtime.distributed=fsdp"]
    _train(cfg("single", "training.batch_size=4"), [], tmp_path, "single")
    torchrun = [*TORCHRUN, f"--master_port={free_port()}"]
    _train(cfg("fsdp", *fsdp), torchrun, tmp_path, "fsdp")

    # layout: checkpoint directories with per-rank shards, nothing temporary left
    run = tmp_path / "fsdp"
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint_best",
        "checkpoint_final",
        "checkpoint_step2",
        "checkpoint_step3",
    ]
    assert sorted(p.name for p in (run / "checkpoint_final").iterdir()) == [
        "config.yaml",
        "manifest.json",
        "optimizer-00000-of-00002.safetensors",
        "optimizer-00001-of-00002.safetensors",
        "rng.safetensors",
        "state.json",
        "weights-00000-of-00002.safetensors",
        "weights-00001-of-00002.safetensors",
    ]

    # == one process with the same global batch
    a = ckpt.load(tmp_path / "single" / "checkpoint_final")
    b = ckpt.load(run / "checkpoint_final")
    assert a["step"] == b["step"] == 4
    assert _max_diff(a["modules"]["policy"], b["modules"]["policy"]) < 1e-5
    la, lb = losses(f"sqlite:///{tmp_path}/single.db"), losses(f"sqlite:///{tmp_path}/fsdp.db")
    assert len(la) == len(lb) == 4
    assert all(abs(x - y) < 1e-5 for x, y in zip(la, lb, strict=True))
    assert abs(a["val"]["val/mtp_ce"] - b["val"]["val/mtp_ce"]) < 1e-5

    # the final checkpoint as a policy in this (single, non-distributed) process
    model, _ = ckpt.load_policy(run / "checkpoint_final")
    assert _max_diff(model.state_dict(), b["modules"]["policy"]) == 0.0

    # stopped after the step-2 checkpoint: resume=auto reaches the same final weights
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(run / "checkpoint_step2", resumed / "checkpoint_step2")
    torchrun = [*TORCHRUN, f"--master_port={free_port()}"]
    _train(cfg("resumed", *fsdp, "checkpoint.resume=auto"), torchrun, tmp_path, "resumed")
    c = ckpt.load(resumed / "checkpoint_final")
    assert c["step"] == 4
    assert _max_diff(b["modules"]["policy"], c["modules"]["policy"]) == 0.0
    assert losses(f"sqlite:///{tmp_path}/resumed.db") == lb[2:]


def test_every_stage_fsdp_equals_one_process(make_cfg, tmp_path: Path) -> None:
    """critic (frozen sharded policy, replicated value head), verifiable (value head trained
    next to the sharded policy) and rho1 (reference scored up front, then released): 2
    ranks under fsdp == 1 process; 5 validation records, so
    one rank pads."""
    common = [
        "data_sampling.n_samples=8",
        # AdamW moves every weight by ~lr per step whatever its gradient's size, so
        # float-summation-order noise in tiny gradients shows up at ~lr scale: 5e-4 keeps
        # that floor below the 1e-5 bound (rho1 at 1e-3 on the balanced synthetic data:
        # 1.2e-5) while every weight still moves by ~5e-4 per step, 50x the bound
        "training.learning_rate=5e-4",
        "training.eval_samples=5",
        "mlflow.experiment=dist",
    ]

    def cfg(stage: str, name: str, *extra: str):
        size = ["training.batch_size=4"]
        if name.endswith("fsdp"):
            size = ["training.batch_size=2", "runtime.distributed=fsdp"]
        return make_cfg(
            stage,
            *common,
            *size,
            f"checkpoint.save_dir={tmp_path}/{name}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/{name}.db",
            f"models.reference.cache_dir={tmp_path}/{name}-cache",
            *extra,
        )

    def result(name: str) -> dict:
        state = ckpt.load(tmp_path / name / "checkpoint_final")
        return {**state, "losses": losses(f"sqlite:///{tmp_path}/{name}.db")}

    critic_ckpt = f"experiment.critic_checkpoint={tmp_path}/critic/checkpoint_final"
    # rho1's default selection scope is the whole step over all ranks: 1 process is a peer
    no_cache = ["training.frozen_trunk_cache_mb=0"]  # the local critic recipe's: replicated only
    stages = (("critic", no_cache), ("verifiable", [critic_ckpt]), ("rho1", []))
    for stage, extra in stages:
        app.run(cfg(stage, stage, *extra))
    # the three 2-rank runs in one torchrun launch (`train` for each, in order)
    files = []
    for stage, extra in stages:
        files.append(tmp_path / f"{stage}-fsdp.yaml")
        files[-1].write_text(OmegaConf.to_yaml(cfg(stage, f"{stage}-fsdp", *extra)))
    cmd = [*TORCHRUN, f"--master_port={free_port()}", __file__, "train", *map(str, files)]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for stage, _ in stages:
        a, b = result(stage), result(f"{stage}-fsdp")
        assert a["step"] == b["step"] == 2, stage
        assert a["modules"].keys() == b["modules"].keys(), stage
        for name in a["modules"]:
            diff = _max_diff(a["modules"][name], b["modules"][name])
            print(f"{stage} {name}: max |weight diff| {diff:.2e}")  # pytest -s shows it
            assert diff < 1e-5, (stage, name)
        assert len(a["losses"]) == len(b["losses"]) == 2, stage
        loss_diff = max(abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=True))
        print(f"{stage}: max |loss diff| {loss_diff:.2e}")
        assert loss_diff < 1e-5, stage
        assert a["val"].keys() == b["val"].keys(), stage
        for k, v in a["val"].items():
            assert abs(v - b["val"][k]) < 1e-5 or v != v and b["val"][k] != b["val"][k], (k, stage)


def test_reduce_scatter_per_micro_batch(tmp_path: Path) -> None:
    out = tmp_path / "counts.json"
    cmd = [*TORCHRUN, f"--master_port={free_port()}", __file__, str(out)]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results.pop("foreach_mixed") == {"steps": True, "one_mixed_group_fails": True}
    # LoRA (frozen base, replicated adapters) under ddp and fsdp == 1 process, 2 steps
    lora = results.pop("lora")
    assert all(d < 1e-5 for d in lora.values()), lora
    for amp, r in results.items():
        # per rank and micro-batch: every unit's gradient reduce-scattered once, during
        # that micro-batch's backward (sharded gradients afterwards, nothing unreduced);
        # the same sequence of collectives on both ranks, although rank 1's data has
        # heads without targets and another number of logits chunks
        assert r["per_micro_batch"] == [[r["units"]] * 4] * 2, amp
        assert r["sharded_grads_after_micro_batch"], amp
        assert r["same_collectives"], amp
        # gradients == one process on the whole global batch (bf16: rounding of the
        # all-gathered bf16 weights vs autocast of fp32 ones)
        assert r["max_grad_diff"] < (1e-6 if amp == "fp32" else 3e-2), (amp, r)
    # after 2 AdamW steps (lr 1e-2; Adam's normalised update magnifies 1e-8 differences)
    assert json.loads(out.read_text())["fp32"]["max_param_diff"] < 1e-5


# --- worker (torchrun) ---------------------------------------------------------------------


def plain_batch(ids: torch.Tensor, labels: torch.Tensor):
    """A Batch of ``ids``/``labels`` rows: correct records, no padding, unknown ids."""
    from weighted_mtp.data.collate import Batch

    b, s = ids.shape
    return Batch(
        input_ids=ids,
        attention_mask=torch.ones(b, s, dtype=torch.bool),
        labels=labels,
        response_mask=labels != -100,
        reward=torch.ones(b),
        is_correct=torch.ones(b, dtype=torch.bool),
        difficulty=torch.zeros(b, dtype=torch.long),
        record_ids=torch.full((b,), -1),
        task_ids=["t"] * b,
    )


def _global_batches(step: int, vocab: int) -> list:
    """4 sequences per step (rank r, micro-batch m -> sequence 2*m + r); rank 1's have
    fewer labelled tokens (fewer logits chunks), its last a single one (heads 1.. without
    targets)."""
    g = torch.Generator().manual_seed(step)
    out = []
    for i in range(4):
        ids = torch.randint(0, vocab, (1, 10), generator=g)
        labels = ids.clone()
        if i % 2:
            labels[:, 2 if i == 3 else 6 :] = -100
        out.append(plain_batch(ids, labels))
    return out


def _worker(out_path: str) -> None:
    import contextlib

    import torch.distributed as tdist

    from weighted_mtp.distributed import DistInfo, env_info
    from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
    from weighted_mtp.training import fsdp
    from weighted_mtp.training.optim import build_optimizer
    from weighted_mtp.training.parallel import Replicated, Sharded
    from weighted_mtp.training.step import optimizer_step
    from weighted_mtp.training.task import Task
    from weighted_mtp.weighting.uniform import UniformWeighting

    tdist.init_process_group("gloo")
    rank, ws = tdist.get_rank(), tdist.get_world_size()
    calls: list[tuple[str, int]] = []
    rs, ag = tdist.reduce_scatter_single, tdist.all_gather_into_tensor

    def count_rs(*a, **k):
        calls.append(("rs", (k.get("input") if "input" in k else a[1]).numel()))
        return rs(*a, **k)

    def count_ag(*a, **k):
        calls.append(("ag", (a[1] if len(a) > 1 else k["input_tensor"]).numel()))
        return ag(*a, **k)

    tdist.reduce_scatter_single, tdist.all_gather_into_tensor = count_rs, count_ag
    per_micro: list[int] = []
    sharded_grads = []

    class Counting(Sharded):
        @contextlib.contextmanager
        def micro_batch(self, model):
            before = sum(op == "rs" for op, _ in calls)
            with super().micro_batch(model):
                yield
            per_micro.append(sum(op == "rs" for op, _ in calls) - before)
            sharded_grads.append(all(fsdp.is_dtensor(p.grad) for p in model.parameters()))

    results = {}
    args = ModelArgs(dim=32, n_layers=5, n_heads=4, vocab_size=64, n_future_tokens=3)
    base = MTPTransformer(args)
    base.init_weights(torch.Generator().manual_seed(0))
    task = Task(train_policy=True, weighting=UniformWeighting(), chunk_size=3)
    cpu = torch.device("cpu")
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        calls.clear()
        per_micro.clear()
        sharded_grads.clear()
        model, ref = copy.deepcopy(base), copy.deepcopy(base)
        model.set_activation_checkpointing(True)
        par, ref_par = Counting(env_info(), cpu, amp), Replicated(DistInfo(), cpu, amp)
        par.prepare(model)
        opt = build_optimizer(model.parameters(), 1e-2, 0.0, foreach=True)
        ref_opt = build_optimizer(ref.parameters(), 1e-2, 0.0, foreach=True)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        grad_diff = 0.0
        for step in range(2):
            batches = _global_batches(step, args.vocab_size)
            mine = [batches[2 * m + rank] for m in range(2)]
            grads = {}

            def keep_grads(par=par, model=model, grads=grads):
                grads.update({n: p.grad.full_tensor() for n, p in model.named_parameters()})

            par.clip_grad_norm_ = _before(par.clip_grad_norm_, keep_grads)
            optimizer_step(mine, task, model, par, opt, scaler, list(model.parameters()), 1.0,
                           cpu, amp)  # fmt: skip
            ref_grads = {}

            def keep_ref(ref=ref, ref_grads=ref_grads):
                ref_grads.update({n: p.grad.clone() for n, p in ref.named_parameters()})

            ref_par.clip_grad_norm_ = _before(ref_par.clip_grad_norm_, keep_ref)
            optimizer_step(batches, task, ref, ref_par, ref_opt, scaler, list(ref.parameters()),
                           1.0, cpu, amp)  # fmt: skip
            diffs = [(grads[n] - ref_grads[n]).abs().max().item() for n in grads]
            grad_diff = max(grad_diff, *diffs)
        param_diff = max(
            (p.full_tensor() - q).abs().max().item()
            for p, q in zip(model.parameters(), ref.parameters(), strict=True)
        )
        seqs, micro = [None] * ws, [None] * ws
        tdist.all_gather_object(seqs, calls)
        tdist.all_gather_object(micro, per_micro)
        results[name] = {
            "units": len(fsdp.units(model)),
            "per_micro_batch": micro,
            "sharded_grads_after_micro_batch": all(sharded_grads),
            "same_collectives": all(s == seqs[0] for s in seqs),
            "max_grad_diff": grad_diff,
            "max_param_diff": param_diff,
        }
    results["foreach_mixed"] = _foreach_mixed(model, build_optimizer)
    results["lora"] = _lora_parallel(base, task, rank)
    if rank == 0:
        Path(out_path).write_text(json.dumps(results, indent=1))
    tdist.barrier()  # no rank tears gloo down while another still talks to it
    tdist.destroy_process_group()


def _foreach_mixed(model, build_optimizer) -> dict[str, bool]:
    """AdamW's foreach path (CUDA's default) over sharded policy parameters (DTensor) and a
    replicated value head (Tensor): build_optimizer's groups step; one mixed group fails."""
    head = torch.nn.Linear(model.args.dim, 1)
    params = [*model.parameters(), *head.parameters()]
    for p in params:
        p.grad = torch.ones_like(p)
    before = head.weight.detach().clone()
    build_optimizer(params, 1e-2, 0.1, foreach=True).step()
    try:
        torch.optim.AdamW(params, lr=1e-2, foreach=True).step()
        mixed_fails = False
    except Exception:
        mixed_fails = True
    return {"steps": not torch.equal(before, head.weight), "one_mixed_group_fails": mixed_fails}


def _lora_parallel(base, task, rank: int) -> dict[str, float]:
    """Adapters after 2 steps on 2 ranks (ddp: Replicated, fsdp: Sharded) vs 1 process on
    the global batch: max |difference| per mode."""
    from weighted_mtp.distributed import DistInfo, env_info
    from weighted_mtp.models import lora
    from weighted_mtp.training.optim import build_optimizer
    from weighted_mtp.training.parallel import Replicated, Sharded
    from weighted_mtp.training.step import optimizer_step

    cpu, scaler = torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False)
    config = lora.lora_config(4, 8, 0.0, ["wq", "w2", "output"])
    runs = {}
    for name, par in (("one", Replicated(DistInfo(), cpu, None)),
                      ("ddp", Replicated(env_info(), cpu, None)),
                      ("fsdp", Sharded(env_info(), cpu, None))):  # fmt: skip
        model = copy.deepcopy(base).requires_grad_(False)
        par.prepare(model)
        lora.apply(model, config, seed=0)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = build_optimizer(params, 1e-2, 0.0, foreach=True)
        for step in range(2):
            batches = _global_batches(step, model.args.vocab_size)
            mine = batches if name == "one" else [batches[2 * m + rank] for m in range(2)]
            optimizer_step(mine, task, model, par, opt, scaler, params, 1.0, cpu, None)
        runs[name] = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    return {
        name: max((runs["one"][k] - t).abs().max().item() for k, t in runs[name].items())
        for name in ("ddp", "fsdp")
    }


def _before(fn, hook):
    def wrapped(*a, **k):
        hook()
        return fn(*a, **k)

    return wrapped


def _train_each(configs: list[str]) -> None:
    """``train --config FILE`` for each file, in one process group (torchrun's): the
    stage runs tear nothing down between them, the last one ends the group."""
    import torch.distributed as tdist

    from weighted_mtp import distributed
    from weighted_mtp.__main__ import main

    tdist.init_process_group("gloo")
    shutdown, distributed.shutdown = distributed.shutdown, lambda: None
    for f in configs:
        assert main(["train", "--config", f]) == 0, f
    shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "train":
        _train_each(sys.argv[2:])
    else:
        _worker(sys.argv[1])
