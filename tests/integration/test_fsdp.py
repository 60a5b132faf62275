"""runtime.distributed=fsdp: 2 gloo processes on CPU (FSDP2) == 1 process; resume; one
reduce-scatter per unit per optimizer step; the final checkpoint loads in one process.

Run as a script (``torchrun ... test_fsdp.py OUT``) this module is the worker of
``test_one_reduce_scatter_per_step``.
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

from weighted_mtp.training import checkpoint as ckpt  # noqa: E402

TORCHRUN = [
    str(Path(sys.executable).with_name("torchrun")),
    "--nproc_per_node=2",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(cfg, launcher: list[str], tmp_path: Path, name: str) -> None:
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
        "training.learning_rate=1e-3",
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
    _train(cfg("single", "training.batch_size=4"), [sys.executable], tmp_path, "single")
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


def test_one_reduce_scatter_per_step(tmp_path: Path) -> None:
    out = tmp_path / "counts.json"
    cmd = [*TORCHRUN, f"--master_port={free_port()}", __file__, str(out)]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for amp, r in json.loads(out.read_text()).items():
        # per rank: no collective reduction in any backward pass, then exactly one
        # reduce-scatter per FSDP unit at the end of each optimizer step
        assert r["during_backward"] == [[0, 0], [0, 0]], amp
        assert r["per_step"] == [[r["units"]] * 2] * 2, amp
        assert r["all_gathers_equal"], amp
        # gradients == one process on the whole global batch (bf16: rounding of the
        # all-gathered bf16 weights vs autocast of fp32 ones)
        assert r["max_grad_diff"] < (1e-6 if amp == "fp32" else 3e-2), (amp, r)
    # after 2 AdamW steps (lr 1e-2; Adam's normalised update magnifies 1e-8 differences)
    assert out and json.loads(out.read_text())["fp32"]["max_param_diff"] < 1e-5


# --- worker (torchrun) ---------------------------------------------------------------------


def _batch(ids: torch.Tensor, labels: torch.Tensor):
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
    """4 sequences per step (rank r, micro-batch m -> sequence 2*m + r); the last one has a
    single labelled token, so heads 1.. have no target there (skipped on that rank only)."""
    g = torch.Generator().manual_seed(step)
    out = []
    for i in range(4):
        ids = torch.randint(0, vocab, (1, 10), generator=g)
        labels = ids.clone()
        if i == 3:
            labels[:, 2:] = -100
        out.append(_batch(ids, labels))
    return out


def _worker(out_path: str) -> None:
    import torch.distributed as tdist

    from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
    from weighted_mtp.training import fsdp
    from weighted_mtp.training.runtime import autocast
    from weighted_mtp.training.task import Task, denominators, micro_step
    from weighted_mtp.weighting.uniform import UniformWeighting

    tdist.init_process_group("gloo")
    rank, ws = tdist.get_rank(), tdist.get_world_size()
    counts = {"rs": 0, "ag": 0}
    rs, ag = tdist.reduce_scatter_single, tdist.all_gather_into_tensor

    def count_rs(*a, **k):
        counts["rs"] += 1
        return rs(*a, **k)

    def count_ag(*a, **k):
        counts["ag"] += 1
        return ag(*a, **k)

    tdist.reduce_scatter_single, tdist.all_gather_into_tensor = count_rs, count_ag
    results = {}
    args = ModelArgs(dim=32, n_layers=5, n_heads=4, vocab_size=64, n_future_tokens=3)
    base = MTPTransformer(args)
    base.init_weights(torch.Generator().manual_seed(0))
    task = Task(train_policy=True, weighting=UniformWeighting())
    cpu = torch.device("cpu")
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        model, ref = copy.deepcopy(base), copy.deepcopy(base)
        model.set_activation_checkpointing(True)
        fsdp.shard(model, cpu, ws, amp)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
        during, per_step, ags, grad_diff = [], [], [], 0.0
        for step in range(2):
            batches = _global_batches(step, args.vocab_size)
            den = denominators(task, batches, args.n_future_tokens)
            counts["rs"] = 0
            fsdp.begin_step(model)
            for m in range(2):
                with autocast(cpu, amp):
                    micro_step(task, model, batches[2 * m + rank], den, backward=True)
            during.append(counts["rs"])
            fsdp.reduce_gradients(model)
            per_step.append(counts["rs"])
            for b in batches:
                with autocast(cpu, amp):
                    micro_step(task, ref, b, den, backward=True)
            grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
            grad_diff = max(
                grad_diff,
                max((grads[n] - p.grad).abs().max().item() for n, p in ref.named_parameters()),
            )
            fsdp.clip_grad_norm_(model.parameters(), 1.0)
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
            opt.step()
            ref_opt.step()
            opt.zero_grad(set_to_none=True)
            ref_opt.zero_grad(set_to_none=True)
        ags = [None] * ws
        tdist.all_gather_object(ags, counts["ag"])
        param_diff = max(
            (p.full_tensor() - q).abs().max().item()
            for p, q in zip(model.parameters(), ref.parameters(), strict=True)
        )
        all_during, all_steps = [None] * ws, [None] * ws
        tdist.all_gather_object(all_during, during)
        tdist.all_gather_object(all_steps, per_step)
        results[name] = {
            "units": len(fsdp.units(model)),
            "during_backward": all_during,
            "per_step": [list(x) for x in zip(*all_steps, strict=True)],
            "all_gathers_equal": len(set(ags)) == 1,
            "max_grad_diff": grad_diff,
            "max_param_diff": param_diff,
        }
    if rank == 0:
        Path(out_path).write_text(json.dumps(results, indent=1))
    tdist.barrier()  # no rank tears gloo down while another still talks to it
    tdist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
