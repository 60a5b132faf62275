"""Cross-field validation of a composed config.

``validate`` collects every problem and raises one :class:`ConfigValidationError`
listing them all, each naming the field, the bad value and the fix. It runs for
``validate-config`` and before any run starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from weighted_mtp.config import CONF_DIR, checks, inputs, rules
from weighted_mtp.errors import UserError

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


@dataclass(frozen=True)
class Problem:
    field: str
    value: Any
    rule: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field} = {self.value!r}: {self.rule}. Fix: {self.fix}"


class ConfigValidationError(UserError):
    def __init__(self, problems: list[Problem], source: str = "config") -> None:
        self.problems = problems
        lines = [f"Config validation failed: {source} ({len(problems)} problem(s))"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class Checker:
    """Collects the problems of one config; the rules (:mod:`.rules`) add to it."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[Problem] = []

    def get(self, key: str) -> Any:
        try:
            return OmegaConf.select(self.cfg, key, throw_on_missing=True)
        except MissingMandatoryValue:
            return None
        except InterpolationResolutionError as exc:
            self.add(key, "<interpolation>", f"cannot be resolved ({exc.msg})", "fix the ${...}")
            return None

    def add(self, key: str, value: Any, rule: str, fix: str) -> None:
        self.problems.append(Problem(key, value, rule, fix))

    def require(self, key: str, why: str = "is required") -> Any:
        value = self.get(key)
        if value is None or value == "":
            self.add(key, value, why, f"set it, e.g. --override {key}=<value>")
            return None
        return value

    def range(self, key: str, ok: bool, rule: str, example: str) -> None:
        value = self.get(key)
        if value is not None and not ok:
            self.add(key, value, f"must satisfy {rule}", f"--override {key}={example}")

    def choice(self, key: str, choices: tuple[str, ...] | list[str]) -> None:
        value = self.get(key)
        if value is not None and value not in choices:
            self.add(
                key,
                value,
                f"must be one of {', '.join(choices)}",
                f"--override {key}={choices[0]}",
            )

    def path(self, key: str, what: str) -> None:
        value = self.get(key)
        if value and not Path(value).exists():
            self.add(
                key,
                value,
                f"{what} path does not exist",
                f"put the files there (python -m weighted_mtp setup creates the local "
                f"profile's micro assets) or --override {key}=<existing path>",
            )


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
        c.add("experiment.stage", stage, f"must be one of {', '.join(stages)}", "stage=baseline")

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
            c.path("experiment.critic_checkpoint", "critic checkpoint")
        inputs.paths(c)
    if plan and not c.problems and c.get("runtime.gpu_memory_gb") is not None:
        rules.plan(c)
    if c.problems:
        raise ConfigValidationError(c.problems, source)


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
