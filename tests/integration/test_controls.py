"""Controls change the weighting and nothing else; the TD knobs change the training; the
weight diagnostics are logged every step and summarised per run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from weighted_mtp import app
from weighted_mtp.training import checkpoint as ckpt


def policy(cfg) -> dict[str, torch.Tensor]:
    return ckpt.load(Path(cfg.checkpoint.save_dir) / "checkpoint_final")["modules"]["policy"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def critic(make_cfg) -> str:
    cfg = make_cfg("critic", "training.learning_rate=1e-2")
    app.run(cfg)
    return f"experiment.critic_checkpoint={cfg.checkpoint.save_dir}/checkpoint_final"


def test_verifiable_control_is_verifiable_with_every_weight_one(make_cfg, critic, tmp_path):
    """beta -> infinity makes every TD weight exactly 1: that run and the control train
    the same bits, so the control changes only the weighting."""
    common = [critic, "training.learning_rate=1e-3"]
    control = make_cfg(
        "verifiable", *common, "weighting=verifiable_control",
        f"checkpoint.save_dir={tmp_path / 'control'}",
    )  # fmt: skip
    flat = make_cfg(
        "verifiable", *common, "training.beta=1e9", f"checkpoint.save_dir={tmp_path / 'flat'}"
    )
    td = make_cfg("verifiable", *common, f"checkpoint.save_dir={tmp_path / 'td'}")
    res = {name: app.run(c) for name, c in (("control", control), ("flat", flat), ("td", td))}
    assert same(policy(control), policy(flat))
    assert not same(policy(control), policy(td))
    assert res["control"]["val/auroc"] == res["flat"]["val/auroc"]  # the value head too
    assert res["control"]["weight_summary"]["weight/mean_incorrect"] == 1.0


def test_rho1_control_keeps_the_same_count_and_at_k_1_equals_rho1(make_cfg, tmp_path):
    def run(name: str, *overrides: str):
        cfg = make_cfg("rho1", *overrides, f"checkpoint.save_dir={tmp_path / name}")
        return cfg, app.run(cfg)

    all_rho1, _ = run("rho1_all", "training.k_percent=1.0")
    all_ctrl, _ = run("ctrl_all", "training.k_percent=1.0", "weighting=rho1_control")
    assert same(policy(all_rho1), policy(all_ctrl))  # keeping every token: the same run
    rho1, r = run("rho1", "training.k_percent=0.5")
    ctrl, c = run("ctrl", "training.k_percent=0.5", "weighting=rho1_control")
    assert not same(policy(rho1), policy(ctrl))
    for res in (r, c):  # the same kept share, step by step (same k, same denominator)
        kept = [h["train/weight/kept_correct"] for h in res["history"] if "train/loss" in h]
        assert len(kept) == res["step"] and all(0.5 <= k < 0.55 for k in kept)
    # Rho-1 drops the tokens the policy already predicts well: less CE mass than at random
    assert r["weight_summary"]["weight/ce_dropped"] < c["weight_summary"]["weight/ce_dropped"]


def test_policy_records_correct_takes_incorrect_records_out_of_the_policy_loss(
    make_cfg, critic, tmp_path
):
    both = make_cfg("verifiable", critic, f"checkpoint.save_dir={tmp_path / 'all'}")
    only = make_cfg(
        "verifiable", critic, "training.policy_records=correct",
        f"checkpoint.save_dir={tmp_path / 'correct'}",
    )  # fmt: skip
    b, o = app.run(both), app.run(only)
    assert b["weight_summary"]["token/incorrect_share"] > 0.2
    assert o["weight_summary"]["token/incorrect_share"] == 0.0
    assert o["weight_summary"]["weight/incorrect_share"] == 0.0
    assert "train/value_loss" in o  # the value head still learns from every record


def test_step_normalised_gae_advantages_train(make_cfg, critic, tmp_path):
    cfg = make_cfg(
        "verifiable", critic, "training.advantage_norm=step", "training.advantage_lambda=1.0",
        "training.gradient_accumulation_steps=2",
    )  # fmt: skip
    res = app.run(cfg)
    steps = [h for h in res["history"] if "train/loss" in h]
    assert all(abs(h["train/td_error/mean"]) < 2.0 for h in steps)
    assert all(h["train/advantage/step_std"] > 0 for h in steps)
    for key in ("weight/incorrect_share", "token/incorrect_share", "weight/q50_correct"):
        assert all(f"train/{key}" in h for h in steps)
