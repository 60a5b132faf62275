"""Every stage trains end to end on the micro assets; critic -> verifiable chains."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from weighted_mtp import app
from weighted_mtp.models.formats import load_model
from weighted_mtp.training import checkpoint as ckpt


def final_state(cfg) -> dict:
    return ckpt.load(Path(cfg.checkpoint.save_dir) / "checkpoint_final")


def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in after.items() if not torch.equal(before[k], v)}


def test_baseline_trains_all_heads(make_cfg) -> None:
    cfg = make_cfg("baseline", "training.learning_rate=1e-3")
    result = app.run(cfg)
    assert result["step"] == 8 and math.isfinite(result["train/loss"])
    assert {"val/mtp_ce", "val/head0_ce", "val/head3_ce"} <= set(result)
    before = load_model(cfg.models.policy.path).state_dict()
    after = final_state(cfg)["modules"]["policy"]
    changed = moved(before, after)
    for part in ("tok_embeddings", "layers.0.", "layers.3.", "extra_heads.2.", "output"):
        assert any(k.startswith(part) for k in changed), part
    assert {p.name for p in Path(cfg.checkpoint.save_dir).iterdir()} == {
        "checkpoint_final",
        "checkpoint_best",
    }


def test_training_lowers_the_loss(make_cfg) -> None:
    cfg = make_cfg(
        "baseline",
        "training.learning_rate=1e-3",
        "data_sampling.n_samples=4",
        "training.n_epochs=10",
        "training.batch_size=4",
        "training.lr_scheduler=constant",
        "data_sampling.seed=3",
    )
    history = [h["train/loss"] for h in app.run(cfg)["history"] if "train/loss" in h]
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3 - 0.3


def test_critic_then_verifiable(make_cfg) -> None:
    critic = make_cfg("critic", "training.learning_rate=1e-2", "models.value_head.type=linear")
    res = app.run(critic)
    assert "val/auroc" in res and math.isfinite(res["val/value_loss"])
    state = final_state(critic)
    assert set(state["modules"]) == {"value_head"}  # the policy is frozen in this stage
    head = state["modules"]["value_head"]
    assert head["net.weight"].abs().sum() > 0  # moved from its zero init

    ver = make_cfg(
        "verifiable",
        f"experiment.critic_checkpoint={critic.checkpoint.save_dir}/checkpoint_final",
        "training.learning_rate=1e-3",
    )
    res = app.run(ver)
    assert {"train/weight/mean", "train/weight/clipped_max", "train/value_loss"} <= set(res) or {
        "val/mtp_ce",
        "val/auroc",
    } <= set(res)
    state = final_state(ver)
    assert set(state["modules"]) == {"policy", "value_head"}
    assert state["provenance"]["critic_sha256"] == ckpt.file_sha256(
        f"{critic.checkpoint.save_dir}/checkpoint_final"
    )
    assert not torch.equal(state["modules"]["value_head"]["net.weight"], head["net.weight"])


def test_rho1_trains_and_caches_reference_losses(make_cfg) -> None:
    cfg = make_cfg("rho1", "training.k_percent=0.5")
    res = app.run(cfg)
    assert math.isfinite(res["train/loss"])
    cache_dirs = list(Path(cfg.models.reference.cache_dir).iterdir())
    assert len(cache_dirs) == 1 and any(cache_dirs[0].glob("ce-rank0.bin"))
