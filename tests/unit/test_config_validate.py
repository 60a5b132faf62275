"""Every validation rule has a failing case whose message is checked."""

from __future__ import annotations

import pytest

from weighted_mtp.config.loader import compose
from weighted_mtp.config.validate import ConfigValidationError, validate

CACHE = "training.frozen_trunk_cache_mb"


def problems(overrides: list[str], path_overrides: list[str], check_paths: bool = True) -> str:
    cfg = compose([*path_overrides, *overrides])
    with pytest.raises(ConfigValidationError) as info:
        validate(cfg, check_paths=check_paths)
    return str(info.value)


@pytest.mark.parametrize(
    ("overrides", "field", "needle"),
    [
        (["training.learning_rate=0"], "training.learning_rate", "0 < learning_rate <= 1"),
        (["training.learning_rate=1.5"], "training.learning_rate", "0 < learning_rate <= 1"),
        (["training.batch_size=0"], "training.batch_size", "> 0"),
        (["training.n_epochs=-1"], "training.n_epochs", "> 0"),
        (["training.gradient_accumulation_steps=0"], "training.gradient_accumulation_steps", "> 0"),
        (["training.max_grad_norm=0"], "training.max_grad_norm", "> 0"),
        (["stage=rho1", "training.k_percent=0"], "training.k_percent", "0 < k_percent <= 1"),
        (["stage=rho1", "training.k_percent=1.2"], "training.k_percent", "0 < k_percent <= 1"),
        (["stage=rho1", "training.temperature=0"], "training.temperature", "> 0"),
        (["stage=verifiable", "training.beta=-0.1"], "training.beta", "> 0"),
        (
            ["stage=verifiable", "training.weight_clip_min=5", "training.weight_clip_max=1"],
            "training.weight_clip_min",
            "must be < training.weight_clip_max",
        ),
        (["data_sampling.correct_ratio=1.5"], "data_sampling.correct_ratio", "0 <= correct_ratio"),
        (
            ["training.batch_size=600", "data_sampling.n_samples=500"],
            "training.batch_size",
            "must be <= data_sampling.n_samples (500)",
        ),
        (["stage=critic", "training.loss_type=l1"], "training.loss_type", "mse, huber, mae"),
        (["models.policy.dtype=float64"], "models.policy.dtype", "float32, float16, bfloat16"),
        (["runtime.device=tpu"], "runtime.device", "auto, cpu, cuda, mps"),
        (["experiment.name="], "experiment.name", "is required"),
        (["stage=verifiable", "training.beta=null"], "training.beta", "required for stage"),
        (["stage=verifiable", "training.value_coef=null"], "training.value_coef", "required"),
        (["stage=verifiable", "training.weight_clip_max=null"], "training.weight_clip_max", "req"),
        (["stage=rho1", "models.reference.path=null"], "models.reference.path", "required"),
        (["stage=rho1", "training.temperature=null"], "training.temperature", "required"),
        (["stage=rho1", "training.k_percent=null"], "training.k_percent", "required"),
        (["training.eval_samples=0"], "training.eval_samples", "> 0"),
        (["stage=verifiable", "training.advantage_norm=batch"], "training.advantage_norm", "none"),
        (["stage=verifiable", "training.advantage_lambda=2"], "training.advantage_lambda", "<= 1"),
        (["training.policy_records=wrong"], "training.policy_records", "all, correct"),
        (["training.weight_decay=-1"], "training.weight_decay", ">= 0"),
        (["checkpoint.save_total_limit=-1"], "checkpoint.save_total_limit", ">= 0"),
        (["checkpoint.save_checkpoint_every=-1"], "checkpoint.save_checkpoint_every", ">= 0"),
        (["models.value_head.hidden_dim=-1"], "models.value_head.hidden_dim", ">= 0"),
        (["training.warmup_ratio=1"], "training.warmup_ratio", "0 <= warmup_ratio < 1"),
        (["training.min_lr_ratio=2"], "training.min_lr_ratio", "0 <= min_lr_ratio <= 1"),
        (["training.lam=1.5"], "training.lam", "0 <= lam <= 1"),
        (["training.gamma=0"], "training.gamma", "0 < gamma <= 1"),
        (["training.lr_scheduler=step"], "training.lr_scheduler", "cosine, linear, constant"),
        (["runtime.amp_dtype=float8"], "runtime.amp_dtype", "bfloat16, float16"),
        (["models.value_head.type=conv"], "models.value_head.type", "linear, mlp, prefix_max"),
        (["runtime.distributed=zero3"], "runtime.distributed", "ddp, fsdp"),
        (["checkpoint.resume=/nonexistent.pt"], "checkpoint.resume", "is not a checkpoint"),
        (["stage=verifiable", "training.value_coef=-1"], "training.value_coef", ">= 0"),
        (["stage=verifiable", "training.weight_clip_min=-1"], "training.weight_clip_min", ">= 0"),
        (["training.log_interval=0"], "training.log_interval", "> 0"),
        (["dataset.max_length=0"], "dataset.max_length", "> 0"),
        (["data_sampling.n_samples=0"], "data_sampling.n_samples", "> 0"),
        (["stage=critic", f"{CACHE}=-1"], CACHE, ">= 0"),
        ([f"{CACHE}=64"], CACHE, "only the critic"),
        (
            ["stage=critic", f"{CACHE}=64", "runtime.distributed=fsdp"],
            CACHE,
            "sharded (fsdp) trunk",
        ),
    ],
)
def test_rule_fails_with_field_and_fix(overrides, field, needle, path_overrides) -> None:
    text = problems(overrides, path_overrides)
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"- {field} ="))
    assert needle in line
    assert "Fix:" in line


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("models.policy.path", "policy model"),
        ("models.policy.tokenizer_path", "tokenizer"),
        ("dataset.train", "training data"),
        ("dataset.validation", "validation data"),
    ],
)
def test_missing_paths_are_reported(key, what, path_overrides, tmp_path) -> None:
    text = problems([f"{key}={tmp_path / 'nowhere'}"], path_overrides)
    assert f"{key} = '{tmp_path / 'nowhere'}': {what} path does not exist" in text


def test_stage_specific_paths(path_overrides, tmp_path) -> None:
    text = problems(["stage=rho1", f"models.reference.path={tmp_path}/x"], path_overrides)
    assert "models.reference.path" in text and "reference model path does not exist" in text
    text = problems(
        ["stage=verifiable", f"experiment.critic_checkpoint={tmp_path}/c.pt"], path_overrides
    )
    assert "no critic checkpoint there" in text and "train the critic first" in text
    assert "setup" not in text  # not the micro assets' command: the critic stage is missing


def test_all_problems_are_reported_together(path_overrides) -> None:
    text = problems(
        ["training.learning_rate=2", "training.batch_size=0", "data_sampling.correct_ratio=-1"],
        path_overrides,
    )
    assert "(3 problem(s))" in text


CURRICULUM = "data_sampling.curriculum_schedule"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data_sampling.difficulty_bins.medium=[3,7]"], "overlaps bin low"),
        (["data_sampling.difficulty_bins.medium=[7,4]"], "low <= high"),
        ([f"{CURRICULUM}[0].difficulty_weights.low=-0.1"], "must be >= 0"),
        ([f"{CURRICULUM}[0].difficulty_weights.low=0.9"], "must sum to 1 (sum is 1.2)"),
        ([f"+{CURRICULUM}[0].difficulty_weights.huge=0.0"], "names no difficulty bin"),
        ([f"{CURRICULUM}[1].epoch_range=[0.4,0.7]"], "must start where the previous phase ends"),
        ([f"{CURRICULUM}[0].epoch_range=[0.1,0.3]"], "must start where the previous phase ends"),
        ([f"{CURRICULUM}[2].epoch_range=[0.7,0.9]"], "the last phase must end at 1.0"),
        ([f"{CURRICULUM}[1].epoch_range=[0.7,0.3]"], "start < end"),
        ([f"{CURRICULUM}=[]"], "at least one phase"),
    ],
)
def test_curriculum_rules(overrides, needle, path_overrides) -> None:
    assert needle in problems(["stage=verifiable", *overrides], path_overrides)


def test_curriculum_is_checked_only_when_enabled(path_overrides) -> None:
    cfg = compose(
        [
            *path_overrides,
            "stage=verifiable",
            "data_sampling.curriculum_learning=false",
            f"{CURRICULUM}[0].difficulty_weights.low=0.9",
        ]
    )
    validate(cfg)


def test_unknown_stage(path_overrides) -> None:
    assert "must be one of baseline, critic, rho1, verifiable" in problems(
        ["experiment.stage=ppo"], path_overrides
    )


def test_weighting_follows_its_training_address(path_overrides) -> None:
    """training.* is the address; a weighting.* set apart from it is refused, naming it."""
    text = problems(["stage=verifiable", "weighting.beta=0.5"], path_overrides)
    assert "weighting.beta = 0.5: differs from training.beta = 0.9" in text
    assert "Fix: set training.beta=0.5" in text
    text = problems(["stage=rho1", "weighting.k_percent=0.2"], path_overrides)
    assert "weighting.k_percent = 0.2: differs from training.k_percent" in text
    # following the address (the stage's interpolation) is fine
    validate(compose([*path_overrides, "stage=verifiable", "training.beta=0.5"]), check_paths=False)


def test_rules_and_validate_share_problems_without_a_cycle() -> None:
    import ast
    from pathlib import Path

    import weighted_mtp.config.problems as problems_mod
    from weighted_mtp.config import validate as validate_mod

    assert validate_mod.Checker is problems_mod.Checker
    root = Path(problems_mod.__file__).parent

    def imports(name: str) -> set[str]:
        tree = ast.parse((root / f"{name}.py").read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    assert "weighted_mtp.config.validate" not in imports("rules")
    assert not {"weighted_mtp.config.validate", "weighted_mtp.config.rules"} & imports("problems")


@pytest.mark.parametrize(
    ("key", "guess"),
    [
        ("training.lr", "training.learning_rate"),
        ("training.batch_sz", "training.batch_size"),
        ("trainin.batch_size", "training.batch_size"),
        ("training.log_intervl", "training.log_interval"),
        ("training.nope", None),
    ],
)
def test_did_you_mean(key: str, guess: str | None) -> None:
    from weighted_mtp.config.overrides import did_you_mean

    assert did_you_mean(key) == guess


def test_n_samples_zero_does_not_suggest_batch_size_zero(path_overrides) -> None:
    text = problems(["data_sampling.n_samples=0"], path_overrides, check_paths=False)
    assert "data_sampling.n_samples = 0" in text
    assert "training.batch_size=0" not in text


def test_fixes_follow_the_command_line(path_overrides) -> None:
    from weighted_mtp.errors import set_cli

    try:
        set_cli("hydra")
        text = problems(["training.batch_size=0"], path_overrides, check_paths=False)
        assert "Fix: training.batch_size=8" in text and "--override" not in text
    finally:
        set_cli("seed")
    text = problems(["training.batch_size=0"], path_overrides, check_paths=False)
    assert "Fix: --override training.batch_size=8" in text


def test_summary_json_has_no_bare_nan() -> None:
    import json

    from weighted_mtp.evaluation.evaluate import summary_json

    text = summary_json({"pass@1": 0.5, "by_difficulty": {"low": {"pass@1": float("nan")}}})
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert data["by_difficulty"]["low"]["pass@1"] is None
    assert data["null_fields"] == ["by_difficulty.low.pass@1"] and "null_note" in data
