"""Per-job names in a Hydra multirun.

Rule (MULTIRUN mode only): ``experiment.name`` becomes ``<name>_<job num>_<swept>``,
where ``<swept>`` is this job's values of the swept keys (those given as a sweep on the
command line or in ``hydra.sweeper.params``, read from the sweep's ``multirun.yaml``),
``key=value`` sorted by key and joined by ``,``: ``wmtp -m stage=rho1
training.k_percent=0.4,0.6`` names its jobs ``rho1-weighted_0_training.k_percent=0.4``
and ``rho1-weighted_1_training.k_percent=0.6``. Without a readable sweep (another
sweeper), ``<swept>`` is Hydra's ``override_dirname`` (paths and names excluded: see
conf/config.yaml); if that is empty, the name is ``<name>_<job num>``.
``checkpoint.save_dir`` interpolates ``${experiment.name}`` and the MLflow run is named
after it, so every job has its own checkpoint dir and run. Characters other than
``[A-Za-z0-9._,=+-]`` become ``_``; a suffix longer than 96 characters is cut and ends
in a hash of the whole.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

MAX_SUFFIX = 96
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]")


@dataclass
class JobInfo:
    """What a task function needs to know about its Hydra job."""

    multirun: bool
    num: int
    override_dirname: str
    overrides: list[str]
    output_dir: Path
    job_id: str = ""
    sweep_dir: Path | None = None

    @classmethod
    def current(cls) -> JobInfo:
        """The running job's info (call inside a Hydra task function)."""
        hc = HydraConfig.get()
        return cls(
            multirun=hc.mode == RunMode.MULTIRUN,
            num=int(hc.job.get("num", 0) or 0),
            override_dirname=str(hc.job.override_dirname or ""),
            overrides=[str(o) for o in hc.overrides.task],
            output_dir=Path(hc.runtime.output_dir),
            job_id=str(hc.job.get("id") or ""),
            sweep_dir=Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None,
        )

    def swept(self) -> str:
        """This job's ``key=value`` for the swept keys (``override_dirname`` as fallback)."""
        keys = swept_keys(self.sweep_dir) if self.sweep_dir is not None else None
        if not keys:
            return self.override_dirname
        mine = [o for o in self.overrides if o.split("=", 1)[0].lstrip("+~") in keys]
        return ",".join(sorted(mine))


def _load_multirun(sweep_dir: Path) -> DictConfig | None:
    path = sweep_dir / "multirun.yaml"
    try:
        return OmegaConf.load(path) if path.is_file() else None
    except Exception:  # an unreadable file: callers fall back
        return None


def _saved_overrides(saved: DictConfig | None) -> list[Any] | None:
    """The sweep's parsed overrides, sweeper params first (like BasicSweeper)."""
    if saved is None:
        return None
    try:
        params = OmegaConf.select(saved, "hydra.sweeper.params", default=None) or {}
        lines = [f"{k}={v}" for k, v in params.items()]
        lines += [str(o) for o in OmegaConf.select(saved, "hydra.overrides.task", default=[])]
        return OverridesParser.create().parse_overrides(lines)
    except Exception:
        return None


def swept_keys(sweep_dir: Path) -> set[str] | None:
    """Keys swept in the sweep saved at ``sweep_dir/multirun.yaml`` (None if unreadable)."""
    parsed = _saved_overrides(_load_multirun(sweep_dir))
    if parsed is None:
        return None
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """Every job's overrides, in job-number order, as Hydra's basic sweeper expands them:
    the cartesian product of the overrides, a later one of a key replacing an earlier one
    in place (None for another sweeper, a range/interval sweep or an unreadable file)."""
    saved = _load_multirun(sweep_dir)
    parsed = _saved_overrides(saved)
    if saved is None or parsed is None:
        return None
    if not str(OmegaConf.select(saved, "hydra.sweeper._target_", default="")).endswith(
        "BasicSweeper"
    ):
        return None
    choices: dict[str, list[str]] = {}
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            choices[key] = [f"{key}={o.get_value_element_as_str()}"]
        elif o.is_discrete_sweep():
            choices[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:  # the basic sweeper refuses range / interval sweeps
            return None
    return [list(job) for job in itertools.product(*choices.values())]


def job_suffix(num: int, swept: str) -> str:
    """``<num>_<swept>`` (or ``<num>``), file-name safe, at most MAX_SUFFIX characters."""
    suffix = f"{num}_{swept}" if swept else str(num)
    suffix = _UNSAFE.sub("_", suffix)
    if len(suffix) > MAX_SUFFIX:
        digest = hashlib.sha1(suffix.encode()).hexdigest()[:8]
        suffix = f"{suffix[: MAX_SUFFIX - 9]}-{digest}"
    return suffix


def name_job(cfg: DictConfig, job: JobInfo) -> None:
    """In a multirun, suffix ``experiment.name`` so each job has its own dirs and run."""
    if job.multirun:
        cfg.experiment.name = f"{cfg.experiment.name}_{job_suffix(job.num, job.swept())}"
