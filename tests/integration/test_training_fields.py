"""Every training-related config field has the effect its name promises."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from weighted_mtp import app
from weighted_mtp.models.formats import load_model
from weighted_mtp.training import checkpoint as ckpt
from weighted_mtp.training.optim import build_optimizer, lr_factor


def run(cfg) -> tuple[dict, dict]:
    result = app.run(cfg)
    state = ckpt.load(Path(cfg.checkpoint.save_dir) / "checkpoint_final")
    return result, state


def delta(cfg, state: dict) -> float:
    before = load_model(cfg.models.policy.path).state_dict()
    after = state["modules"]["policy"]
    return sum((after[k].float() - before[k].float()).abs().sum().item() for k in after)


def train_lrs(result: dict) -> list[float]:
    return [h["train/lr"] for h in result["history"] if "train/lr" in h]


@pytest.mark.parametrize(
    ("overrides", "steps"),
    [
        ([], 8),  # 16 samples x 1 epoch / batch 2
        (["training.n_epochs=0.5"], 4),
        (["training.batch_size=4"], 4),
        (["training.gradient_accumulation_steps=2"], 4),
    ],
)
def test_steps_follow_epochs_batch_and_accumulation(make_cfg, overrides, steps) -> None:
    assert app.run(make_cfg("baseline", *overrides))["step"] == steps


def test_log_interval(make_cfg, capsys) -> None:
    result = app.run(make_cfg("baseline", "training.log_interval=3"))
    assert [h["step"] for h in result["history"] if "train/loss" in h] == [3, 6]
    # stderr is not a terminal here (as in a Slurm log): no bar redraws, one line per interval
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("baseline ")]
    assert [line.split()[1] for line in lines] == ["3/8", "6/8", "8/8"]
    assert all(" loss=" in line and " tok_s=" in line for line in lines)


def test_lr_schedule_fields(make_cfg) -> None:
    cfg = make_cfg(
        "baseline",
        "training.learning_rate=1e-3",
        "training.warmup_ratio=0.25",
        "training.lr_scheduler=linear",
        "training.min_lr_ratio=0.1",
    )
    lrs = train_lrs(app.run(cfg))
    # the lr logged at step i is the one that step trained with
    expected = [1e-3 * lr_factor(i, 8, 2, "linear", 0.1) for i in range(8)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == pytest.approx(5e-4) and lrs[-1] == pytest.approx(1e-4)


def test_lr_factor_shapes() -> None:
    assert [lr_factor(s, 10, 2, "constant", 0.0) for s in range(4)] == [0.5, 1, 1, 1]
    assert lr_factor(2, 10, 2, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(9, 10, 2, "cosine", 0.2) == pytest.approx(0.2)
    assert lr_factor(9, 10, 0, "linear", 0.0) == pytest.approx(0.0)
    mid = lr_factor(5, 11, 0, "cosine", 0.0)
    assert mid == pytest.approx(0.5)


def test_max_grad_norm_limits_the_update(make_cfg, tmp_path) -> None:
    free = make_cfg("baseline", "training.learning_rate=1e-3")
    clipped = make_cfg(
        "baseline",
        "training.learning_rate=1e-3",
        "training.max_grad_norm=1e-9",
        f"checkpoint.save_dir={tmp_path}/clipped",
    )
    assert delta(clipped, run(clipped)[1]) < 0.5 * delta(free, run(free)[1])


def test_weight_decay_shrinks_matrices_only(make_cfg, tmp_path) -> None:
    plain = make_cfg("baseline", "training.learning_rate=1e-2")
    decayed = make_cfg(
        "baseline",
        "training.learning_rate=1e-2",
        "training.weight_decay=5.0",
        f"checkpoint.save_dir={tmp_path}/decayed",
    )
    a, b = run(plain)[1]["modules"]["policy"], run(decayed)[1]["modules"]["policy"]
    assert b["output.weight"].norm() < a["output.weight"].norm()
    model = load_model(plain.models.policy.path)
    opt = build_optimizer(model.parameters(), 1e-3, 5.0)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 5.0 for p in g["params"]}
    for name, p in model.named_parameters():  # matrices decay; norm gains do not
        assert (id(p) in decay) == (p.ndim >= 2), name


def test_activation_checkpointing_changes_nothing_but_memory(make_cfg, tmp_path) -> None:
    a = run(make_cfg("baseline", "training.learning_rate=1e-3"))[1]["modules"]["policy"]
    cfg = make_cfg(
        "baseline",
        "training.learning_rate=1e-3",
        "training.activation_checkpointing=true",
        f"checkpoint.save_dir={tmp_path}/ac",
    )
    b = run(cfg)[1]["modules"]["policy"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_eval_samples(make_cfg) -> None:
    from weighted_mtp.training.task import Task
    from weighted_mtp.training.validator import Validator

    cfg = make_cfg("baseline", "training.eval_samples=3")
    v = Validator(cfg, Task(train_policy=True), None, None, torch.device("cpu"), None)
    assert len(v.records) == 3 and all(r.is_correct for r in v.records)


@pytest.mark.parametrize("loss_type", ["mse", "huber", "mae"])
def test_critic_loss_types(make_cfg, tmp_path, loss_type) -> None:
    cfg = make_cfg(
        "critic",
        f"training.loss_type={loss_type}",
        "training.learning_rate=1e-2",
        f"checkpoint.save_dir={tmp_path}/{loss_type}",
    )
    result, state = run(cfg)
    assert math.isfinite(result["val/value_loss"])
    assert state["config"]["training"]["loss_type"] == loss_type


def test_critic_gamma_lam_and_mlp_head(make_cfg, tmp_path) -> None:
    heads = []
    for lam in (1.0, 0.0):
        cfg = make_cfg(
            "critic",
            "models.value_head.type=mlp",
            "models.value_head.hidden_dim=16",
            "training.gamma=0.9",
            f"training.lam={lam}",
            "training.learning_rate=1e-2",
            f"checkpoint.save_dir={tmp_path}/lam{lam}",
        )
        state = run(cfg)[1]
        assert state["value_head_config"] == {"dim": 128, "type": "mlp", "hidden_dim": 16}
        heads.append(state["modules"]["value_head"])
    assert not torch.equal(heads[0]["net.2.weight"], heads[1]["net.2.weight"])


def test_frozen_trunk_cache_changes_nothing_but_time(make_cfg, tmp_path) -> None:
    """The critic with its frozen trunk cached trains the same value head as without."""
    heads, results = [], []
    for mb in (0, 64):
        cfg = make_cfg(
            "critic",
            "training.n_epochs=3",
            "training.learning_rate=1e-2",
            f"training.frozen_trunk_cache_mb={mb}",
            "checkpoint.save_checkpoint_every=0.5",  # validations: the same records again
            f"checkpoint.save_dir={tmp_path}/cache{mb}",
        )
        result, state = run(cfg)
        heads.append(state["modules"]["value_head"])
        results.append(result)
    assert "train/trunk_cache_hit_rate" not in results[0]
    assert results[1]["train/trunk_cache_hit_rate"] > 0.1
    assert results[1]["train/trunk_cache_mb"] > 0
    for k, v in heads[0].items():
        torch.testing.assert_close(heads[1][k], v, atol=1e-5, rtol=1e-4)
    assert abs(results[0]["val/value_loss"] - results[1]["val/value_loss"]) < 1e-5


def test_runtime_seed_sets_value_head_init(make_cfg, tmp_path) -> None:
    inits = []
    for seed in (1, 2):
        cfg = make_cfg(
            "critic",
            "models.value_head.type=mlp",
            "training.learning_rate=1e-9",
            f"runtime.seed={seed}",
            f"checkpoint.save_dir={tmp_path}/seed{seed}",
        )
        inits.append(run(cfg)[1]["modules"]["value_head"]["net.0.weight"])
    assert not torch.allclose(inits[0], inits[1])


@pytest.fixture
def critic_ckpt(make_cfg, tmp_path) -> str:
    cfg = make_cfg("critic", "training.learning_rate=1e-2", f"checkpoint.save_dir={tmp_path}/c")
    app.run(cfg)
    return f"{tmp_path}/c/checkpoint_final"


def test_verifiable_clip_and_value_coef(make_cfg, critic_ckpt, tmp_path) -> None:
    cfg = make_cfg(
        "verifiable",
        f"experiment.critic_checkpoint={critic_ckpt}",
        "training.weight_clip_min=0.5",
        "training.weight_clip_max=1.0",
        "training.beta=0.01",
        "training.value_coef=0",
    )
    result, state = run(cfg)
    assert result["train/weight/min"] >= 0.5 and result["train/weight/max"] <= 1.0
    assert result["train/weight/clipped_min"] + result["train/weight/clipped_max"] > 0
    critic_head = ckpt.load_value_head(critic_ckpt).state_dict()
    assert all(torch.equal(critic_head[k], v) for k, v in state["modules"]["value_head"].items())
    cfg = make_cfg(
        "verifiable",
        f"experiment.critic_checkpoint={critic_ckpt}",
        "training.value_coef=1.0",
        "training.learning_rate=1e-2",
        f"checkpoint.save_dir={tmp_path}/coef",
    )
    moved = run(cfg)[1]["modules"]["value_head"]
    assert not all(torch.equal(critic_head[k], v) for k, v in moved.items())


def test_rho1_k_percent_and_reference_cache(make_cfg, tmp_path) -> None:
    cfg = make_cfg("rho1", "training.k_percent=0.3", "training.learning_rate=1e-3")
    a = run(cfg)[1]["modules"]["policy"]
    cache = next(Path(cfg.models.reference.cache_dir).iterdir())
    size = (cache / "ce-rank0.bin").stat().st_size
    cfg2 = make_cfg(
        "rho1",
        "training.k_percent=0.9",
        "training.learning_rate=1e-3",
        f"checkpoint.save_dir={tmp_path}/k9",
    )
    b = run(cfg2)[1]["modules"]["policy"]
    assert not torch.equal(a["output.weight"], b["output.weight"])
    assert (cache / "ce-rank0.bin").stat().st_size == size  # second run: all cache hits
    cfg3 = make_cfg("rho1", "dataset.max_length=150", f"checkpoint.save_dir={tmp_path}/ml")
    app.run(cfg3)
    cfg4 = make_cfg("rho1", "training.temperature=2.0", f"checkpoint.save_dir={tmp_path}/t")
    app.run(cfg4)
    assert len(list(Path(cfg.models.reference.cache_dir).iterdir())) == 3  # new keys


def test_reference_temperature_scales_the_reference_loss(make_cfg) -> None:
    from weighted_mtp.data.collate import Collator
    from weighted_mtp.data.dataset import ProcessedDataset
    from weighted_mtp.models.reference import load_reference
    from weighted_mtp.models.tokenizer import load_tokenizer
    from weighted_mtp.stages.rho1 import token_ce

    cfg = make_cfg("rho1")
    tok = load_tokenizer(cfg.models.policy.tokenizer_path)
    ref = load_reference(cfg.models.reference.path, "float32", tok)
    b = Collator(tok, 160)(ProcessedDataset(cfg.dataset.train).records(range(2)))
    ce1 = token_ce(ref, 1.0, b.input_ids, b.attention_mask, b.labels)
    ce_hot = token_ce(ref, 1000.0, b.input_ids, b.attention_mask, b.labels)
    mask = b.response_mask.clone()
    mask[:, 0] = False
    assert (ce1[~mask] == 0).all()
    # a very high temperature flattens the reference: its CE tends to log(V)
    assert torch.allclose(
        ce_hot[mask], torch.full_like(ce_hot[mask], math.log(tok.vocab_size)), atol=0.02
    )
    assert not torch.allclose(ce1[mask], ce_hot[mask])


def test_checkpoint_fields(make_cfg) -> None:
    cfg = make_cfg(
        "baseline",
        "checkpoint.save_checkpoint_every=0.25",  # every 2 of 8 steps
        "checkpoint.save_total_limit=2",
        "checkpoint.save_best=false",
    )
    app.run(cfg)
    names = sorted(p.name for p in Path(cfg.checkpoint.save_dir).iterdir())
    assert names == ["checkpoint_final", "checkpoint_step4", "checkpoint_step6"]
    cfg = make_cfg("critic", "checkpoint.save_final=false", "checkpoint.save_best=true")
    app.run(cfg)
    assert sorted(p.name for p in Path(cfg.checkpoint.save_dir).iterdir()) == ["checkpoint_best"]


def test_resume_from_an_explicit_path_continues(make_cfg, tmp_path) -> None:
    cfg = make_cfg("baseline", "checkpoint.save_checkpoint_every=0.5")
    app.run(cfg)
    step4 = Path(cfg.checkpoint.save_dir) / "checkpoint_step4"
    again = make_cfg(
        "baseline",
        f"checkpoint.resume={step4}",
        f"checkpoint.save_dir={tmp_path}/again",
    )
    result = app.run(again)
    assert [h["step"] for h in result["history"] if "train/loss" in h] == [5, 6, 7, 8]


@pytest.mark.parametrize("amp", ["bfloat16", "float16"])
def test_mixed_precision(make_cfg, tmp_path, amp) -> None:
    ref = app.run(make_cfg("baseline"))
    cfg = make_cfg(
        "baseline",
        "runtime.mixed_precision=true",
        f"runtime.amp_dtype={amp}",
        f"checkpoint.save_dir={tmp_path}/{amp}",
    )
    result, state = run(cfg)
    assert abs(result["val/mtp_ce"] - ref["val/mtp_ce"]) < 0.1
    assert state["scaler"].get("scale") is not None if amp == "float16" else True
    assert state["modules"]["policy"]["output.weight"].dtype == torch.float32


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_policy_dtype_and_device(make_cfg, tmp_path, dtype) -> None:
    # a trained policy is loaded in `dtype` and trained as float32 master weights (AdamW
    # on fp16 weights turns them to inf at the first step); a frozen one stays in `dtype`
    cfg = make_cfg(
        "baseline",
        f"models.policy.dtype={dtype}",
        "runtime.device=cpu",
        "training.learning_rate=1e-5",
    )
    result, state = run(cfg)
    weights = state["modules"]["policy"]
    assert weights["output.weight"].dtype == torch.float32
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert math.isfinite(result["val/mtp_ce"])
    critic = make_cfg("critic", f"models.policy.dtype={dtype}", f"checkpoint.save_dir={tmp_path}/c")
    assert math.isfinite(app.run(critic)["val/value_loss"])


def test_weighting_needs_its_inputs(make_cfg) -> None:
    from weighted_mtp.errors import UserError

    cfg = make_cfg(
        "baseline",
        "weighting._target_=weighted_mtp.weighting.TDErrorWeighting",
        "+weighting.beta=1.0",
        "+weighting.clip_min=0.1",
        "+weighting.clip_max=5.0",
    )
    with pytest.raises(UserError, match="needs a value head"):
        app.run(cfg)
    cfg = make_cfg(
        "baseline",
        "weighting._target_=weighted_mtp.weighting.Rho1Weighting",
        "+weighting.k_percent=0.5",
    )
    with pytest.raises(UserError, match="needs a reference model"):
        app.run(cfg)


def test_no_step_fits_is_a_user_error(make_cfg) -> None:
    from weighted_mtp.errors import UserError

    cfg = make_cfg(
        "baseline",
        "data_sampling.n_samples=4",
        "training.batch_size=4",
        "training.gradient_accumulation_steps=2",
    )
    with pytest.raises(UserError, match="no optimizer step fits"):
        app.run(cfg)


def test_mlflow_tracking_of_a_run(make_cfg, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = make_cfg("baseline", f"mlflow.tracking_uri={uri}", "mlflow.experiment=wmtp-test")
    app.run(cfg)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("wmtp-test")
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.run_name == "baseline-mtp" and r.info.status == "FINISHED"
    assert r.data.tags["stage"] == "baseline"
    assert r.data.params["training.batch_size"] == "2"
    assert len(client.get_metric_history(r.info.run_id, "train/loss")) == 8
    # the weight diagnostics, every step (baseline trains on correct records only)
    shares = client.get_metric_history(r.info.run_id, "train/token/incorrect_share")
    assert len(shares) == 8 and all(m.value == 0.0 for m in shares)
    assert r.data.metrics["train/weight/mean_correct"] == 1.0
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "final_checkpoint.json", "weight_summary.json"} <= arts
