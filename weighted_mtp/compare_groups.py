"""How ``compare`` groups runs into table rows.

Runs whose settings (:mod:`weighted_mtp.compare_sources`) agree on the grouping keys are
one group: its runs are replicates (seeds), paired by position with the other groups'
runs. The grouping keys are ``--by key[,key]`` or, by default, every key whose value
differs between the runs, except

- seeds (a key ending in ``seed``: what replicates differ in), Hydra's own keys and
  output / tracking names (:data:`NOT_GROUPED`);
- keys derived from a run's name (a checkpoint's ``experiment.name``, its save dir) and,
  where the evaluated checkpoint's training config is known, ``evaluation.checkpoint``
  itself (the training keys that differ name the group instead);
- a key whose values repeat an earlier key's in every run (``weighting.k_percent``
  interpolated from ``training.k_percent``).

A group's label is its ``key=value`` pairs joined by ``,``; a table row is ``label`` or,
for a run of several rows (a demo's stages), ``label/stage`` (just ``stage`` when there is
one group).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from weighted_mtp.compare_sources import Entry, Unit
from weighted_mtp.errors import UserError

NOT_GROUPED = {
    "experiment.name",
    "checkpoint.save_dir",
    "mlflow.tracking_uri",
    "mlflow.experiment",
    "evaluation.out_dir",
    "evaluation.run_name",
    "evaluation.mlflow_uri",
    "evaluation.mlflow_experiment",
    "evaluation.concurrency",
    "evaluation.batch_size",
    "evaluation.device",
}


@dataclass
class Row:
    """One table row: its replicates' entries (one per run of its group, in order)."""

    name: str
    group: str
    entries: list[Entry]
    runs: list[Path]


def _is_replicate_key(key: str) -> bool:
    return key.endswith("seed") or key.startswith("hydra.")


def default_keys(units: list[Unit]) -> list[str]:
    """The keys whose values differ between ``units`` (see the module docstring)."""
    keys: list[str] = []
    for u in units:
        keys += [k for k in u.settings if k not in keys]
    derived = set().union(*(u.derived for u in units))
    out: list[str] = []
    columns: set[tuple[str | None, ...]] = set()
    for k in keys:
        if k in NOT_GROUPED or k in derived or _is_replicate_key(k):
            continue
        column = tuple(u.settings.get(k) for u in units)
        if len(set(column)) > 1 and column not in columns:
            out.append(k)
            columns.add(column)
    return out


def _sort_key(text: str) -> tuple:
    """Numbers compare as numbers (k_percent=0.4 before 0.8, seed 2 before 10)."""
    parts = re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", text)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)


def group(units: list[Unit], by: list[str] | None) -> tuple[list[str], list[Row]]:
    """(grouping keys, table rows). Each group's runs are ordered by their seeds (then
    path); a row has one entry per run of its group (a row some of them lack, e.g. a
    demo stage one seed did not run, is left out)."""
    if by:
        known = set().union(*(u.settings for u in units))
        missing = [k for k in by if k not in known]
        if missing:
            raise UserError(
                f"--by {','.join(missing)}: no run has that setting; keys that differ between "
                f"the runs: {', '.join(default_keys(units)) or '(none)'}"
            )
    keys = list(by) if by else default_keys(units)
    groups: dict[str, list[Unit]] = {}
    for u in units:
        label = ",".join(f"{k}={u.settings.get(k, '-')}" for k in keys)
        groups.setdefault(label, []).append(u)
    rows: list[Row] = []
    for label in sorted(groups, key=_sort_key):
        members = sorted(
            groups[label],
            key=lambda u: (
                _sort_key(",".join(v for k, v in sorted(u.settings.items()) if k.endswith("seed"))),
                str(u.path),
            ),
        )
        names: list[tuple[str, str]] = []  # (kind, row): an evaluation and a training
        for u in members:  # job of one setting are two rows (pass rates, final metrics)
            names += [(u.kind, n) for n in u.rows if (u.kind, n) not in names]
        for kind, n in names:
            have = [u for u in members if u.kind == kind and n in u.rows]
            name = "/".join(p for p in (label if len(groups) > 1 else "", n) if p)
            name = name or label or members[0].path.name
            if len(have) < len([u for u in members if u.kind == kind]):
                print(f"compare: leaving out {name}: not in every run of its group")
                continue
            rows.append(Row(name, label, [u.rows[n] for u in have], [u.path for u in have]))
    return keys, rows
