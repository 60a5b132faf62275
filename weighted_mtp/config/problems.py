"""What every validation rule reports into: a :class:`Problem` per bad field, the
:class:`Checker` that collects them, and the one :class:`ConfigValidationError` listing
them all. :mod:`.validate` (which runs the rules) and :mod:`.rules` both import this
module, and it imports neither, so there is no import cycle between them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from weighted_mtp.errors import UserError, fix


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
            self.add(key, value, why, f"set it, e.g. {fix(f'{key}=<value>')}")
            return None
        return value

    def range(self, key: str, ok: bool, rule: str, example: str) -> None:
        value = self.get(key)
        if value is not None and not ok:
            self.add(key, value, f"must satisfy {rule}", fix(f"{key}={example}"))

    def choice(self, key: str, choices: tuple[str, ...] | list[str]) -> None:
        value = self.get(key)
        if value is not None and value not in choices:
            self.add(
                key,
                value,
                f"must be one of {', '.join(choices)}",
                fix(f"{key}={choices[0]}"),
            )

    def path(self, key: str, what: str) -> None:
        value = self.get(key)
        if value and not Path(value).exists():
            self.add(
                key,
                value,
                f"{what} path does not exist",
                f"put the files there (python -m weighted_mtp setup creates the local "
                f"profile's micro assets) or {fix(f'{key}=<existing path>')}",
            )
