"""What ``compare`` reads: the runs under its arguments, each as a :class:`Unit`.

Three kinds of directory are recognised (searched recursively):

- a **demo** run: ``results.json`` with ``rows`` and ``eval/<stage>/{greedy,sampled}/
  results.jsonl`` (``make demo``, one seed of ``make experiment``); one table row per
  stage; its settings are the demo's options (``results.json`` ``args``, each
  ``--override`` as its own key);
- an **evaluation**: ``results.jsonl`` (one row per problem) + ``summary.json``, written by
  ``wmtp-eval`` (a job of ``wmtp-eval -m``: settings from ``.hydra/overrides.yaml``) or
  ``python -m weighted_mtp evaluate`` (settings from ``summary.json``); when the evaluated
  checkpoint holds its training ``config.yaml`` (a ``checkpoint_final/`` of ``wmtp``), that
  config's keys join the settings (``training.k_percent`` ...) and ``state.json``'s final
  validation gives the CE per head;
- a **training job** of a ``wmtp -m`` sweep: ``result.json`` (settings from its
  overrides; final metrics only, no per-problem scores).

A unit's settings are ``{key: value text}``; :mod:`weighted_mtp.compare_groups` groups units
by the keys that differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from weighted_mtp.errors import UserError

# demo options that do not change the numbers (or are the seed: a replicate, not a group)
DEMO_OPERATIONAL = {"out", "storage", "jobs", "threads", "concurrency", "gen_batch_size", "rows"}
DEMO_OPERATIONAL |= {"seeds", "seed"}


@dataclass
class Entry:
    """One table row of one run: per-problem scores, CE per head, speculative rows, or (a
    training job) final metrics."""

    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> pid -> x
    head_ce: list[float] = field(default_factory=list)
    spec_rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # pid -> greedy row
    final: dict[str, float] = field(default_factory=dict)  # training job: final metrics


@dataclass
class Unit:
    """One run (a seed of an experiment): where it is, its settings, its rows."""

    path: Path
    kind: str  # demo | eval | train
    settings: dict[str, str]
    rows: dict[str, Entry]  # row name within the run ("" for a run that is one row)
    derived: set[str] = field(default_factory=set)  # keys never grouped on by default


def _read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{path}: missing; re-run that evaluation")
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {r["problem_id"]: r for r in rows}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not an evaluation's results.jsonl ({exc}); re-run it") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); re-run what wrote it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object; re-run what wrote it")
    return data


def pass_keys(row: dict[str, Any]) -> list[str]:
    """The ``pass@k`` keys of a results.jsonl row, by k."""
    return sorted((k for k in row if k.startswith("pass@")), key=lambda k: int(k[5:]))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """``{key: value text}`` of Hydra override strings (quotes removed where Hydra's
    grammar reads them; a line it cannot read is split at its first ``=``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out: dict[str, str] = {}
    parser = OverridesParser.create()
    for line in lines:
        try:
            (o,) = parser.parse_overrides([line])
            out[o.key_or_group] = _text(o.value())
        except Exception:  # another grammar's line: the plain split
            key, _, value = line.partition("=")
            out[key.lstrip("+~")] = value
    return out


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys of a nested config -> value text (lists as JSON)."""
    if not isinstance(node, dict):
        return {prefix.rstrip("."): _text(node)}
    out: dict[str, str] = {}
    for k, v in node.items():
        out |= flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": _text(v)}
    return out


def load_demo(run: Path) -> Unit:
    data = _read_json(run / "results.json")
    rows: dict[str, Entry] = {}
    for row in data["rows"]:
        stage = row["stage"]
        if "greedy_pass@1" not in row:
            continue  # critic: no policy to evaluate
        greedy = _read_jsonl(run / "eval" / stage / "greedy" / "results.jsonl")
        sampled = _read_jsonl(run / "eval" / stage / "sampled" / "results.jsonl")
        first = next(iter(sampled.values()), {})
        k = pass_keys(first)[-1] if pass_keys(first) else "pass@1"
        scores = {
            "greedy pass@1": {p: float(r["pass@1"]) for p, r in greedy.items()},
            "pass@1": {p: float(r["pass@1"]) for p, r in sampled.items()},
            k: {p: float(r[k]) for p, r in sampled.items()},
        }
        n = len([key for key in row if key.startswith("val/head") and key.endswith("_ce")])
        ce = [float(row[f"val/head{h}_ce"]) for h in range(n)]
        rows[stage] = Entry(scores, ce, greedy)
    args = data.get("args") or {}
    settings = {k: _text(v) for k, v in args.items() if k not in DEMO_OPERATIONAL | {"override"}}
    settings |= parse_overrides([str(o) for o in args.get("override") or []])
    settings["seed"] = _text(data.get("seed", 0))
    return Unit(run, "demo", settings, rows)


def _checkpoint_settings(ckpt: Path) -> tuple[dict[str, str], set[str], list[float]]:
    """The training config of a checkpoint dir (its ``config.yaml``), the keys derived from
    the run's name (``experiment.name``, its save dir ...), and its final CE per head."""
    cfg_file = ckpt / "config.yaml"
    if not cfg_file.is_file():
        return {}, set(), []
    try:
        settings = flatten(OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False))
    except Exception:  # an unreadable config: group on the checkpoint path instead
        return {}, set(), []
    name = settings.get("experiment.name", "")
    derived = {k for k, v in settings.items() if name and name in v} | {"experiment.name"}
    ce: list[float] = []
    state = ckpt / "state.json"
    if state.is_file():
        val = json.loads(state.read_text()).get("val") or {}
        n = len([key for key in val if key.startswith("val/head") and key.endswith("_ce")])
        ce = [float(val[f"val/head{h}_ce"]) for h in range(n)]
    return settings, derived, ce


def load_eval(d: Path) -> Unit:
    rows = _read_jsonl(d / "results.jsonl")
    summary = _read_json(d / "summary.json")
    overrides = d / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        settings = parse_overrides([str(o) for o in OmegaConf.load(overrides)])
    else:  # python -m weighted_mtp evaluate: what summary.json records
        settings = {
            f"evaluation.{k}": _text(summary[k])
            for k in ("checkpoint", "data", "n_samples")
            if k in summary
        }
    ckpt = settings.get("evaluation.checkpoint") or str(summary.get("checkpoint", ""))
    trained, derived, ce = _checkpoint_settings(Path(ckpt)) if ckpt else ({}, set(), [])
    if trained:
        derived.add("evaluation.checkpoint")  # grouped on by what trained it instead
    first = next(iter(rows.values()), {})
    scores = {k: {p: float(r[k]) for p, r in rows.items()} for k in pass_keys(first)}
    entry = Entry(scores, ce, rows)
    return Unit(d, "eval", trained | settings, {"": entry}, derived)


def load_train(d: Path) -> Unit | None:
    """A sweep job's ``result.json`` (None for a failed job)."""
    rec = _read_json(d / "result.json")
    if rec.get("status") != "ok":
        print(f"compare: skipping {d} ({rec.get('status')}: {rec.get('error')})")
        return None
    metrics = rec.get("metrics") or {}
    final = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    n = len([k for k in final if k.startswith("val/head") and k.endswith("_ce")])
    entry = Entry(head_ce=[final[f"val/head{h}_ce"] for h in range(n)], final=final)
    settings = parse_overrides([str(o) for o in rec.get("overrides") or []])
    return Unit(d, "train", settings, {"": entry})


def _is_demo(f: Path) -> bool:
    """A demo's results.json (a JSON object with ``rows``); any other file is not a run."""
    try:
        data = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "rows" in data


def _under(path: Path, roots: set[Path]) -> bool:
    return any(r == path or r in path.parents for r in roots)


def find_units(dirs: list[Path]) -> list[Unit]:
    """Every run under ``dirs`` (see the module docstring), sorted by path."""
    demo: set[Path] = set()
    evals: set[Path] = set()
    train: set[Path] = set()
    for d in dirs:
        if not d.is_dir():
            raise UserError(
                f"{d}: not a directory (give demo run dirs, evaluation dirs, a `wmtp -m` or "
                "`wmtp-eval -m` sweep dir, or a folder of them)"
            )
        demo |= {f.parent.resolve() for f in d.rglob("results.json") if _is_demo(f)}
        for f in d.rglob("summary.json"):
            if (f.parent / "results.jsonl").is_file():
                evals.add(f.parent.resolve())
        train |= {f.parent.resolve() for f in d.rglob("result.json") if f.is_file()}
    evals = {e for e in evals if not _under(e, demo)}
    train = {t for t in train if not _under(t, demo | evals) and ".submitit" not in t.parts}
    units = [load_demo(p) for p in sorted(demo)] + [load_eval(p) for p in sorted(evals)]
    units += [u for u in (load_train(p) for p in sorted(train)) if u is not None]
    if not units:
        raise UserError(
            f"nothing to compare under {', '.join(map(str, dirs))}: give a demo run dir "
            "(results.json with rows), an evaluation dir (results.jsonl + summary.json, from "
            "wmtp-eval or `python -m weighted_mtp evaluate`), a `wmtp -m` sweep dir "
            "(<job>/result.json), or a folder holding them"
        )
    return units
