"""Per-job results: every job of a run or sweep writes ``result.json`` (status, error,
overrides, dirs, launcher environment, final metrics) and ``history.json`` (the logged
metrics) into its Hydra output dir."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from weighted_mtp.distributed import env_info
from weighted_mtp.fileio import atomic_write_text
from weighted_mtp.sweep.naming import JobInfo

RESULT_FILE = "result.json"
HISTORY_FILE = "history.json"
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
        "metrics": {k: _json_safe(v) for k, v in metrics.items()},
    }
    job.output_dir.mkdir(parents=True, exist_ok=True)
    if history is not None:
        atomic_write_text(
            job.output_dir / HISTORY_FILE, json.dumps(_json_safe(history), indent=1) + "\n"
        )
    path = job.output_dir / RESULT_FILE
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:  # an unresolvable interpolation must not hide the job's result
        return None


def _abs(path: Any) -> str | None:
    return None if path in (None, "") else str(Path(str(path)).resolve())


def _json_safe(value: Any) -> Any:
    """``value`` as JSON data: containers as dicts and lists, numbers as floats
    (non-finite ones as text), anything else as text."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f if math.isfinite(f) else str(f)
