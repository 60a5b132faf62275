"""The memory/time plan: the command, the validation hook, and that the plan follows the
config fields because it runs the training code (tiny shapes on fake tensors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from weighted_mtp.__main__ import main
from weighted_mtp.config.loader import compose
from weighted_mtp.config.validate import ConfigValidationError, validate
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
from weighted_mtp.plan.simulate import simulate_rank

TINY = dict(dim=64, n_layers=6, n_heads=4, vocab_size=512, multiple_of=16, n_future_tokens=4)
FIELDS = ["profile=local", "dataset.max_length=64", "training.batch_size=2"]


@pytest.fixture
def shape_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tiny-mtp"
    d.mkdir()
    (d / "params.json").write_text(json.dumps(TINY))
    return d


def _cfg(*overrides: str, policy: Path | None = None):
    cfg = compose([*FIELDS, *overrides])
    if policy is not None:
        cfg.models.policy.path = str(policy)
    return cfg


def test_plan_command_json(tmp_path: Path, shape_dir: Path, capsys) -> None:
    f = tmp_path / "config.yaml"
    OmegaConf.save(_cfg("stage=verifiable", policy=shape_dir), f)
    code = main(["plan", "--config", str(f), "--gpus", "2", "--gpu-memory-gb", "1000", "--json"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 0 and out["fits"] is True and out["gpu_memory_gb"] == 1000
    assert "plan: simulating one rank of stage verifiable on 2 GPU(s)" in captured.err
    assert "file a bug" not in captured.err
    for key in ("per_gpu_peak_gb", "host_ram_gb_per_node", "tokens_per_step", "step_time_s"):
        assert out[key] > 0
    assert out["tokens_per_step"] == 2 * 1 * 2 * 64  # batch x accumulation x gpus x length
    assert out["flops_per_step"] > 0
    # (no "logits chunks": the chunk's one in-place CE buffer is freed before the trunk's
    # backward, this tiny model's peak; test_plan_memory.py checks the totals vs a real run)
    for name in ("parameters", "gradients", "optimizer state", "value head"):
        assert out["components"][name] > 0, name


def test_validation_fails_with_a_fix_when_the_run_does_not_fit(shape_dir: Path) -> None:
    cfg = _cfg("stage=baseline", "runtime.gpu_memory_gb=0.001", policy=shape_dir)
    with pytest.raises(ConfigValidationError) as err:
        validate(cfg, check_paths=False)
    msg = str(err.value)
    assert "runtime.gpu_memory_gb = 0.001" in msg and "GB per GPU" in msg and "Fix:" in msg
    cfg.runtime.gpu_memory_gb = None  # unset: not planned
    validate(cfg, check_paths=False)


def _sim(*overrides: str, gpus: int = 1):
    return simulate_rank(_cfg("stage=baseline", *overrides), ModelArgs(**TINY), None, gpus)


def test_plan_follows_activation_checkpointing_blocks() -> None:
    """Fewer stored activations and more recompute with each checkpointed block."""
    ac = "training.activation_checkpointing"
    runs = [_sim(f"{ac}=false"), _sim(f"{ac}=true", f"{ac}_blocks=1"), _sim(f"{ac}=true")]
    acts = [r.categories.get("Activation", 0) for r in runs]
    assert acts[0] > acts[1] > acts[2]
    assert runs[0].flops < runs[1].flops < runs[2].flops


def test_plan_follows_distributed() -> None:
    ddp, fsdp = _sim(gpus=2), _sim("runtime.distributed=fsdp", gpus=2)
    assert fsdp.sharded and not ddp.sharded
    assert fsdp.module_bytes["policy"] * 2 == ddp.module_bytes["policy"]
    assert fsdp.categories.get("OptState", 0) < ddp.categories["Optstate"]


def test_selective_checkpointing_same_gradients() -> None:
    """Checkpointing N blocks changes which blocks recompute, never the gradients."""
    torch.manual_seed(0)
    args = ModelArgs(**TINY)
    ids = torch.randint(0, 512, (2, 16))
    grads = []
    for blocks in (None, 2, 0):
        torch.manual_seed(0)
        m = MTPTransformer(args)
        m.set_activation_checkpointing(True, blocks)
        assert len(m._checkpointed) == {None: 6, 2: 2, 0: 0}[blocks]  # 2 trunk + 4 head blocks
        m(ids).float().logsumexp(-1).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])


def test_plan_rho1_step_scope_on_several_ranks(tmp_path: Path, shape_dir: Path, capsys) -> None:
    """Rho-1's step-wide selection gathers rows from every rank: planned as the worst case
    (every rank as many rows), with the reference's scoring pass planned on its own."""
    ref = tmp_path / "tiny-ref"
    ref.mkdir()
    (ref / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "num_hidden_layers": 2,
                "vocab_size": 512,
                "rms_norm_eps": 1e-5,
            }
        )
    )
    f = tmp_path / "config.yaml"
    cfg = _cfg("stage=rho1", "training.selection_scope=step", policy=shape_dir)
    cfg.models.reference.path = str(ref)
    OmegaConf.save(cfg, f)
    code = main(["plan", "--config", str(f), "--gpus", "2", "--gpu-memory-gb", "1000", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["fits"] is True
    assert out["components"]["reference model (scoring pass only)"] > 0


def test_sharded_optimizer_step_holds_no_global_size_transient() -> None:
    """DTensor's sharding propagation builds global-shape tensors (metadata only, never
    storage on a device): the tracker must not count them, on a cold propagation cache
    (a shape seen for the first time) as on a warm one."""
    from torch.distributed.fsdp import fully_shard

    from weighted_mtp.plan.fake import fake_world, real_mesh
    from weighted_mtp.plan.tracker import ShardedTracker, peak
    from weighted_mtp.training import fsdp
    from weighted_mtp.training.optim import build_optimizer

    with fake_world(0, 4):
        model = torch.nn.Sequential(torch.nn.Linear(1236, 52, bias=False))  # unseen shape
        fully_shard(model, mesh=real_mesh(fsdp.init_device_mesh)("cpu", (4,)))
        params = list(model.parameters())
        opt = build_optimizer(params, 1e-3, 0.0, torch.device("cuda"))  # fused, as on GPUs
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()  # the moments exist
        shard = 1236 * 52 // 4 * 4  # bytes of one float32 shard
        for _ in range(2):
            tracker = ShardedTracker(512, model, opt)
            tracker.track_external(model, opt)
            with tracker:
                fsdp.clip_grad_norm_(params, 1.0)
                opt.step()
            total, _ = peak(tracker)
            # parameter, gradient and two moments, plus scalars: not one more shard
            assert total < 4 * shard + 4096, total


def test_plan_is_the_same_when_run_twice() -> None:
    """Every simulation in a process (the plan, then find_fix's candidates) gives the same
    figures: nothing cached by the first run changes the second."""
    args = ModelArgs(**dict(TINY, dim=80, n_heads=5))  # shapes no other test plans
    cfg = _cfg("stage=baseline", "runtime.distributed=fsdp", "runtime.mixed_precision=true")
    first, second = (simulate_rank(cfg, args, None, 4) for _ in range(2))
    assert first.peak_bytes == second.peak_bytes
    assert first.categories == second.categories


def test_find_fix_names_the_fewest_checkpointed_blocks() -> None:
    """The checkpointing search lands on the fewest blocks whose plan fits, whether its
    first estimate from none-vs-all is too high or too low (stub plans, no simulation)."""
    from types import SimpleNamespace

    from weighted_mtp.plan.build import Machine, least_checkpointing

    machine = Machine(gpu_memory_gb=100)

    def search(peak_of_blocks) -> int:  # noqa: ANN001
        def plan_of(change: dict) -> SimpleNamespace:
            on = change["training.activation_checkpointing"]
            n = change.get("training.activation_checkpointing_blocks") if on else 0
            peak = peak_of_blocks(10 if n is None else n)
            return SimpleNamespace(
                per_gpu_peak_gb=peak, fits=peak <= 90, n_blocks=10, usable_gb=90.0
            )

        found, _ = least_checkpointing(None, machine, {}, plan_of)
        return found["training.activation_checkpointing_blocks"]

    # linear: 100 GB without, 2 GB saved per block -> 5 blocks; the estimate is exact
    assert search(lambda n: 100 - 2 * n) == 5
    # the first blocks save more than the average (estimate too high): step down to 3
    assert search(lambda n: 100 - (4 * n if n <= 3 else 12 + (n - 3) * 0.5)) == 3
    # the first blocks save less (estimate too low): step up to 8
    assert search(lambda n: 100 - (0.5 * n if n <= 7 else 3.5 + (n - 7) * 6.5)) == 8


@pytest.mark.parametrize("kind", [{"fused": True}, {"foreach": True}])
def test_adamw_step_memory_is_the_same_on_fake_and_real_tensors(kind: dict) -> None:
    """The optimizer step the plan simulates allocates what the real one does: fused
    AdamW (the CUDA choice) updates in place, foreach adds one parameter-sized temporary."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from weighted_mtp.plan.tracker import PlainTracker, peak

    def step_peak(fake: bool) -> int:
        with FakeTensorMode() if fake else torch.no_grad():
            p = torch.nn.Parameter(torch.zeros(256, 64))
            opt = torch.optim.AdamW([p], lr=1e-3, **kind)
            p.grad = torch.zeros_like(p)
            opt.step()  # the moments exist
            tracker = PlainTracker(512)
            tracker.track_external(p, opt)
            with tracker:
                opt.step()
            return peak(tracker)[0]

    size = 256 * 64 * 4
    real = step_peak(False)
    assert step_peak(True) == real
    # tracked: the parameter and its two moments (+ step counters), plus foreach's temporary
    tensors = 4 if "foreach" in kind else 3
    assert tensors * size <= real < tensors * size + 1024, real


def test_no_grad_forward_memory_is_the_same_on_fake_and_real_tensors() -> None:
    """A no-grad forward (validation, the critic's frozen trunk) frees each temporary after
    its last use on fake tensors as a real run does: the simulated machine keeps no fake
    tensor alive (e.g. in FakeTensorMode's memo of converted tensors)."""
    from weighted_mtp.plan.fake import fake_world
    from weighted_mtp.plan.tracker import PlainTracker, peak

    def forward_peak(fake: bool) -> int:
        with fake_world(0, 1) if fake else torch.no_grad():
            torch.manual_seed(0)
            with torch.device("meta"):
                model = MTPTransformer(ModelArgs(**TINY), torch.bfloat16)
            model.to_empty(device="cpu").requires_grad_(False)
            ids = torch.randint(0, 512, (2, 64))
            tracker = PlainTracker(512)
            tracker.track_external(model)
            with tracker, torch.no_grad():
                model.head_hidden(0, model.trunk(ids))
            return peak(tracker)[0]

    assert forward_peak(True) == forward_peak(False)


def test_fit_rule_is_stated_against_the_cards_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    """An "80 GB" card is 80 GiB; the CUDA context, NCCL's buffers and the allocator's
    reserved/allocated ratio (expandable segments unless the user chose otherwise) come off."""
    from dataclasses import MISSING, fields, replace

    from weighted_mtp.plan import report

    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert report.capacity_bytes(80) == 80 * 2**30 == 85_899_345_920
    assert report.allocator_ratio() == pytest.approx(72.98 / 71.21)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:False")
    assert report.allocator_ratio() == pytest.approx(84.81 / 71.55)
    plan = report.Plan(
        **{f.name: 0 for f in fields(report.Plan) if f.default is MISSING},
    )
    plan = replace(plan, gpu_memory_gb=80, communicators=1, allocator_ratio=1.025, stage="x")
    usable = (80 * 2**30 - 2**30 - 2**29) / 1.025 / 1e9
    assert plan.usable_gb == pytest.approx(usable) and 82 < usable < 83
    assert replace(plan, per_gpu_peak_gb=usable - 0.01).fits
    assert not replace(plan, per_gpu_peak_gb=usable + 0.01).fits
    assert replace(plan, communicators=3).usable_gb < usable  # HSDP: two more groups
    rule = plan.fit_rule()
    assert "85.9 GB (80 GiB card)" in rule and "1.025" in rule and "CUDA context" in rule
    assert replace(plan, gpu_memory_gb=None).fits is None


def test_plan_text_prints_the_rule(tmp_path: Path, shape_dir: Path, capsys) -> None:
    f = tmp_path / "config.yaml"
    OmegaConf.save(_cfg("stage=baseline", policy=shape_dir), f)
    code = main(["plan", "--config", str(f), "--gpus", "1", "--gpu-memory-gb", "40"])
    out = capsys.readouterr().out
    assert code == 0 and "fits:" in out
    assert "rule: fits when peak x 1.025" in out and "42.9 GB (40 GiB card)" in out
    assert "0 communicator(s)" in out  # one GPU: no NCCL
