"""Hydra multirun support: per-job names, per-job result files and the sweep summary.

Rule for per-job names (MULTIRUN mode only): ``experiment.name`` becomes
``<name>_<job num>_<swept>``, where ``<swept>`` is this job's values of the swept keys
(those given as a sweep on the command line or in ``hydra.sweeper.params``, read from the
sweep's ``multirun.yaml``), ``key=value`` sorted by key and joined by ``,``:
``wmtp -m stage=rho1 training.k_percent=0.4,0.6`` names its jobs
``rho1-weighted_0_training.k_percent=0.4`` and ``rho1-weighted_1_training.k_percent=0.6``.
Without a readable sweep (another sweeper), ``<swept>`` is Hydra's ``override_dirname``
(paths and names excluded: see conf/config.yaml); if that is empty, the name is
``<name>_<job num>``. ``checkpoint.save_dir`` interpolates ``${experiment.name}`` and the
MLflow run is named after it, so every job has its own checkpoint dir and run.
Characters other than ``[A-Za-z0-9._,=+-]`` become ``_``; a suffix longer than 96
characters is cut and ends in a hash of the whole.

Every job writes ``result.json`` (and ``history.json``) into its own output dir; the
:class:`SweepSummary` callback reads them at the end of the sweep, whatever launcher
ran the jobs, and writes ``summary.csv`` into the sweep dir.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from weighted_mtp.training.distributed import env_info

RESULT_FILE = "result.json"
HISTORY_FILE = "history.json"
SUMMARY_FILE = "summary.csv"
COLUMNS = (
    "job",
    "status",
    "overrides",
    "train_loss",
    "val_loss",
    "val_mtp_ce",
    "step",
    "experiment",
    "save_dir",
    "output_dir",
    "error",
)
MAX_SUFFIX = 96
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]")
# Launcher / distributed variables recorded in result.json (what the job ran under).
ENV_KEYS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
)


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
    from hydra.core.override_parser.overrides_parser import OverridesParser

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
    """Every job's overrides, in job-number order, as Hydra's basic sweeper expands them
    (None for another sweeper or an unreadable multirun.yaml)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    saved = _load_multirun(sweep_dir)
    parsed = _saved_overrides(saved)
    if saved is None or parsed is None:
        return None
    if not str(OmegaConf.select(saved, "hydra.sweeper._target_", default="")).endswith(
        "BasicSweeper"
    ):
        return None
    try:
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:
        return None


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


def write_result(
    cfg: DictConfig,
    job: JobInfo,
    result: Any = None,
    error: BaseException | None = None,
    *,
    user_error: bool = False,
    elapsed_s: float = 0.0,
) -> Path | None:
    """Write ``result.json`` (+ ``history.json``) into the job's output dir (rank 0 only)."""
    if not env_info().is_main:
        return None
    metrics = dict(result) if isinstance(result, dict) else {}
    history = metrics.pop("history", None)
    record = {
        "job": job.num,
        "job_id": job.job_id,
        "status": "failed" if error is not None else "ok",
        "user_error": user_error,
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "overrides": job.overrides,
        "override_dirname": job.override_dirname,
        "experiment": _get(cfg, "experiment.name"),
        "stage": _get(cfg, "experiment.stage"),
        "save_dir": _abs(_get(cfg, "checkpoint.save_dir")),
        "output_dir": str(job.output_dir.resolve()),
        "elapsed_s": round(elapsed_s, 3),
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
        "metrics": {k: _plain(v) for k, v in metrics.items()},
    }
    job.output_dir.mkdir(parents=True, exist_ok=True)
    if history is not None:
        _atomic_write(job.output_dir / HISTORY_FILE, json.dumps(_plain(history), indent=1))
    path = job.output_dir / RESULT_FILE
    _atomic_write(path, json.dumps(record, indent=2))
    return path


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Output dirs of the jobs that started under ``sweep_dir`` (they hold ``.hydra/``)."""
    found = {p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir()}
    found |= {p.parent for p in sweep_dir.rglob(RESULT_FILE)}
    return sorted(d for d in found if ".submitit" not in d.relative_to(sweep_dir).parts)


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One summary row per job, ordered by job number.

    status: ``ok``; ``failed`` (the task raised: message in ``error``); ``crashed`` (a
    job dir without result.json: the process died, was killed or timed out); ``missing``
    (an expected job with no output dir at all: it never started).
    """
    rows = [_row(d, sweep_dir) for d in job_dirs(sweep_dir)]
    seen = {r["job"] for r in rows}
    for num, overrides in enumerate(expected_jobs(sweep_dir) or []):
        if num not in seen:
            row = dict.fromkeys(COLUMNS, "")
            row.update(job=num, status="missing", overrides=" ".join(overrides))
            row["error"] = "no output dir: the job never started (see .submitit/ or the log)"
            row["user_error"] = False
            rows.append(row)
    return sorted(rows, key=lambda r: r["job"] if isinstance(r["job"], int) else 1 << 30)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write ``summary.csv`` into ``sweep_dir``, print the table and return the rows."""
    rows = collect(sweep_dir)
    with (sweep_dir / SUMMARY_FILE).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(format_table(rows), flush=True)
    print(f"Sweep summary: {sweep_dir / SUMMARY_FILE}", flush=True)
    return rows


def format_table(rows: list[dict[str, Any]], width: int = 160) -> str:
    """A text table: job, status, final train/val loss, then the overrides that differ
    between jobs (all of them for a single job) and, for a failed job, its error."""
    varying = _varying_overrides(rows)
    head = ("job", "status", "train_loss", "val_loss", "overrides")
    body = []
    for r, overrides in zip(rows, varying, strict=True):
        last = overrides
        if r["status"] != "ok":
            last = f"{overrides}  error: {' '.join(str(r['error']).split())}"
        if len(last) > width:
            last = last[: width - 3] + "..."
        body.append((str(r["job"]), r["status"], _fmt(r["train_loss"]), _fmt(r["val_loss"]), last))
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in (head, *body)
    )


def _varying_overrides(rows: list[dict[str, Any]]) -> list[str]:
    split = [str(r["overrides"]).split() for r in rows]
    if len(split) < 2:
        return [" ".join(s) for s in split]
    common = set.intersection(*(set(s) for s in split))
    return [" ".join(o for o in s if o not in common) for s in split]


@dataclass
class SweepState:
    """The sweep in progress in this process (for the entrypoint's exit code)."""

    sweep_dir: Path | None = None
    rows: list[dict[str, Any]] | None = None

    def launched(self) -> bool:
        """True once any job (or submitit's folder) exists in the sweep dir."""
        d = self.sweep_dir
        return d is not None and d.is_dir() and any(p.is_dir() for p in d.iterdir())


STATE = SweepState()


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, tabulate every job's ``result.json``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        STATE.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        STATE.rows = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        STATE.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        STATE.rows = write_summary(STATE.sweep_dir)


def _row(job_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
    row["output_dir"] = str(job_dir)
    result = job_dir / RESULT_FILE
    if result.is_file():
        rec = json.loads(result.read_text(encoding="utf-8"))
        m = rec.get("metrics") or {}
        row.update(
            job=rec.get("job"),
            status=rec.get("status", ""),
            overrides=" ".join(rec.get("overrides") or []),
            train_loss=m.get("train/loss", ""),
            val_loss=m.get("val/loss", ""),
            val_mtp_ce=m.get("val/mtp_ce", ""),
            step=m.get("step", ""),
            experiment=rec.get("experiment") or "",
            save_dir=rec.get("save_dir") or "",
            error=rec.get("error") or "",
        )
        row["user_error"] = bool(rec.get("user_error"))
        return row
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    overrides_yaml = job_dir / ".hydra" / "overrides.yaml"
    row["status"] = "crashed"
    row["error"] = f"no {RESULT_FILE}: the job died before finishing (see its log)"
    row["job"] = _job_num(hydra_yaml, job_dir.name)
    if overrides_yaml.is_file():
        row["overrides"] = " ".join(str(o) for o in OmegaConf.load(overrides_yaml))
    row["user_error"] = False
    return row


def _job_num(hydra_yaml: Path, fallback: str) -> int | str:
    if hydra_yaml.is_file():
        num = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.job.num", default=None)
        if isinstance(num, int):
            return num
    return int(fallback) if fallback.isdigit() else fallback


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:  # an unresolvable interpolation must not hide the job's result
        return None


def _abs(path: Any) -> str | None:
    return None if path in (None, "") else str(Path(str(path)).resolve())


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f if math.isfinite(f) else str(f)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
