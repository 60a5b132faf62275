"""Cross-field validation of a composed config.

``validate`` collects every problem and raises one :class:`ConfigValidationError`
listing them all, each naming the field, the bad value and the fix. It runs for
``validate-config`` and before any run starts.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from weighted_mtp.config import CONF_DIR, checks, inputs, rules
from weighted_mtp.config.problems import Checker, ConfigValidationError, Problem
from weighted_mtp.errors import fix

__all__ = ["Checker", "ConfigValidationError", "Problem", "available_stages", "summary", "validate"]

REQUIRED = (
    "experiment.name",
    "experiment.stage",
    "models.policy.path",
    "dataset.name",
    "dataset.train",
    "dataset.validation",
    "training.n_epochs",
    "training.batch_size",
    "training.learning_rate",
)


def available_stages() -> list[str]:
    """Stage names: the files of the ``stage`` config group (``conf/stage/*.yaml``)."""
    return sorted(p.stem for p in (CONF_DIR / "stage").glob("*.yaml"))


def validate(
    cfg: DictConfig, *, check_paths: bool = True, source: str = "config", plan: bool = True
) -> None:
    """Raise :class:`ConfigValidationError` listing every problem in ``cfg``.

    With ``runtime.gpu_memory_gb`` set (and ``plan``), a config without other problems is
    also planned (``weighted_mtp.plan``): a run that would not fit is a problem too.
    """
    c = Checker(cfg)
    for key in REQUIRED:
        c.require(key)
    stage = c.get("experiment.stage")
    stages = available_stages()
    if stage is not None and stage not in stages:
        c.add(
            "experiment.stage",
            stage,
            f"must be one of {', '.join(stages)}",
            fix("stage=baseline") if _hydra() else fix("experiment.stage=baseline"),
        )

    checks.declared(c, cfg, "")
    checks.finite(c)
    checks.targets(c)
    rules.ranges(c)
    inputs.names(c)
    inputs.seeds(c)
    inputs.max_length_cap(c)
    rules.stage_fields(c, stage)
    rules.curriculum(c)
    rules.weighting(c)
    rules.lora(c, stage)
    rules.trunk_cache(c, stage)
    if check_paths:
        c.path("models.policy.path", "policy model")
        c.path("models.policy.tokenizer_path", "tokenizer")
        c.path("dataset.train", "training data")
        c.path("dataset.validation", "validation data")
        if stage == "rho1":
            c.path("models.reference.path", "reference model")
        if stage == "verifiable":
            critic_first(c)
        inputs.paths(c)
    if plan and not c.problems and c.get("runtime.gpu_memory_gb") is not None:
        rules.plan(c)
    if c.problems:
        raise ConfigValidationError(c.problems, source)


def _hydra() -> bool:
    from weighted_mtp.errors import cli_style

    return cli_style() == "hydra"


def critic_first(c: Checker) -> None:
    """The verifiable stage needs a trained critic: say how to train one (not ``setup``)."""
    key = "experiment.critic_checkpoint"
    value = c.get(key)
    if not value or Path(value).exists():
        return
    if _hydra():
        train = "wmtp stage=critic (add the profile and overrides you use for this run)"
    else:
        train = (
            "python -m weighted_mtp train --config <a critic config> (wmtp stage=critic "
            "--cfg job > critic.yaml writes one)"
        )
    c.add(
        key,
        value,
        "no critic checkpoint there: the verifiable stage weights tokens with a trained "
        "critic, so the critic stage runs first",
        f"train the critic first: {train}; it writes "
        "checkpoint.save_dir/checkpoint_best (default storage/checkpoints/critic/"
        f"critic-pretrain/). Or point to an existing one: {fix(f'{key}=<checkpoint dir>')}",
    )


def summary(cfg: DictConfig) -> str:
    """The seed's success summary: experiment, stage, model, dataset."""
    return "\n".join(
        [
            f"  - Experiment: {cfg.experiment.name}",
            f"  - Stage: {cfg.experiment.stage}",
            f"  - Model: {cfg.models.policy.path}",
            f"  - Dataset: {cfg.dataset.name}",
        ]
    )
