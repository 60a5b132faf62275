"""Composition of conf/: every stage x profile, seed values, interpolation, schema errors."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from tests.conftest import PROFILES, STAGES
from weighted_mtp.config.loader import compose
from weighted_mtp.config.validate import available_stages, validate


def test_stage_group_lists_the_four_stages() -> None:
    assert available_stages() == sorted(STAGES)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_and_profile_composes_and_validates(
    stage: str, profile: str, path_overrides: list[str]
) -> None:
    cfg = compose([f"stage={stage}", f"profile={profile}", *path_overrides])
    assert cfg.experiment.stage == stage
    validate(cfg)


def test_default_is_baseline_on_the_local_profile() -> None:
    cfg = compose()
    assert cfg.experiment.stage == "baseline"
    assert cfg.models.policy.path == "storage/models/micro-mtp"
    assert cfg.mlflow.tracking_uri == ""
    assert cfg.runtime.device == "auto"


@pytest.mark.parametrize(
    ("profile", "batch", "accum", "epochs", "n_samples", "policy", "device"),
    [
        ("vessl", 4, 4, 2.5, 100000, "storage/models/meta-llama-mtp", "cuda"),
        ("local", 2, 1, 0.2, 500, "storage/models/micro-mtp", "auto"),
    ],
)
def test_profile_table(profile, batch, accum, epochs, n_samples, policy, device) -> None:
    cfg = compose(["stage=baseline", f"profile={profile}"])
    assert cfg.training.batch_size == batch
    assert cfg.training.gradient_accumulation_steps == accum
    assert cfg.training.n_epochs == epochs
    assert cfg.data_sampling.n_samples == n_samples
    assert cfg.models.policy.path == policy
    assert cfg.runtime.device == device


def test_stage_defaults_follow_the_seed() -> None:
    base = compose(["stage=baseline", "profile=vessl"])
    assert (base.data_sampling.correct_ratio, base.data_sampling.balance_correct) == (1.0, False)
    assert base.training.learning_rate == 1e-5
    critic = compose(["stage=critic", "profile=vessl"])
    assert critic.data_sampling.correct_ratio == 0.5 and critic.data_sampling.balance_correct
    assert critic.training.learning_rate == 1e-4 and critic.training.loss_type == "mse"
    ver = compose(["stage=verifiable", "profile=vessl"])
    t = ver.training
    assert (t.beta, t.value_coef, t.weight_clip_min, t.weight_clip_max) == (0.9, 0.5, 0.1, 5.0)
    phases = OmegaConf.to_container(ver.data_sampling.curriculum_schedule)
    assert [p["epoch_range"] for p in phases] == [[0.0, 0.3], [0.3, 0.7], [0.7, 1.0]]
    assert [list(p["difficulty_weights"].values()) for p in phases] == [
        [0.7, 0.3, 0.0],
        [0.3, 0.6, 0.1],
        [0.1, 0.5, 0.4],
    ]
    rho = compose(["stage=rho1", "profile=vessl"])
    assert (rho.training.temperature, rho.training.k_percent) == (1.0, 0.6)
    assert rho.models.reference.path == "storage/models/ref-sheared-llama-2.7b"


def test_save_dir_follows_experiment_name() -> None:
    cfg = compose(["stage=critic", "experiment.name=my-run"])
    assert cfg.checkpoint.save_dir == "storage/checkpoints/critic/my-run"


def test_cluster_mlflow_address_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert compose(["profile=vessl"]).mlflow.tracking_uri == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert compose(["profile=vessl"]).mlflow.tracking_uri == ""


def test_seed_list_index_overrides() -> None:
    cfg = compose(
        [
            "stage=verifiable",
            "data_sampling.curriculum_schedule[0].epoch_range=[0.0,0.5]",
            "data_sampling.curriculum_schedule[0].difficulty_weights.low=0.8",
            "data_sampling.curriculum_schedule.1.difficulty_weights.high=0.2",
        ]
    )
    first, second = cfg.data_sampling.curriculum_schedule[:2]
    assert list(first.epoch_range) == [0.0, 0.5]
    assert first.difficulty_weights.low == 0.8
    assert second.difficulty_weights.high == 0.2


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("training.batch_sz=8", "batch_sz"),
        ("training.batch_size=abc", "training.batch_size"),
        ("runtime.mixed_precision=maybe", "runtime.mixed_precision"),
        ("stage=nope", "nope"),
    ],
)
def test_unknown_key_or_wrong_type_fails_naming_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose([override])
    text = str(info.value) + str(info.value.__cause__)
    assert needle in text


def test_yaml_1_2_float() -> None:
    assert compose(["training.learning_rate=5e-5"]).training.learning_rate == 5e-5


def test_weighting_group_picks_a_control_and_nothing_else() -> None:
    """``weighting=<name>`` swaps the stage's weighting (conf/weighting/) and leaves every
    other field of the stage as it was."""
    from omegaconf import OmegaConf

    from weighted_mtp.config.loader import compose

    for stage, control, target in (
        ("verifiable", "verifiable_control", "weighted_mtp.weighting.UniformWeighting"),
        ("rho1", "rho1_control", "weighted_mtp.weighting.RandomKeepWeighting"),
    ):
        own = OmegaConf.to_container(compose([f"stage={stage}"]), resolve=True)
        ctrl = OmegaConf.to_container(
            compose([f"stage={stage}", f"weighting={control}"]), resolve=True
        )
        assert ctrl["weighting"]["_target_"] == target
        assert {k: v for k, v in own.items() if k != "weighting"} == {
            k: v for k, v in ctrl.items() if k != "weighting"
        }
    rho1 = compose(["stage=rho1", "weighting=rho1_control", "training.k_percent=0.4"])
    assert rho1.weighting.k_percent == 0.4  # the control follows the stage's k


def test_local_critic_recipe_applies_to_the_local_critic_only() -> None:
    critic = compose(["stage=critic", "profile=local"])
    assert critic.models.value_head.type == "prefix_max" and critic.training.n_epochs == 30
    assert critic.training.frozen_trunk_cache_mb == 512
    assert compose(["stage=critic", "profile=local", "training.n_epochs=2"]).training.n_epochs == 2
    baseline = compose(["stage=baseline", "profile=local"])
    assert baseline.training.n_epochs != 30 and baseline.training.frozen_trunk_cache_mb == 0
    cluster = compose(["stage=critic", "profile=vessl"])
    assert cluster.training.n_epochs != 30 and cluster.training.frozen_trunk_cache_mb == 0
