"""The sweep summary: one row per job (``ok``, ``failed``, ``crashed``, ``missing``) read
from the jobs' ``result.json`` at the end of a multirun, whatever launcher ran them,
written to ``summary.csv`` in the sweep dir and printed as a table (the
:class:`SweepSummary` Hydra callback)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from weighted_mtp.sweep.naming import expected_jobs
from weighted_mtp.sweep.results import RESULT_FILE

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


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
