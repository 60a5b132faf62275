"""Checks every config gets whatever its fields: only declared keys, finite numbers,
importable ``_target_`` classes whose constructors take the given arguments, a device
string torch parses. Each adds problems to the validator's collector (``c.add``)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf


def parses(device: str) -> bool:
    if device == "auto":
        return True
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        return False
    return True


def declared(c: Any, node: Any, prefix: str) -> None:
    """Keys the schema does not declare (``+training.batch_sz=4`` is a typo too);
    ``weighting`` is free-form: a plugin's constructor arguments."""
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            declared(c, item, f"{prefix}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    cls = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(cls):
        return
    names = {f.name for f in dataclasses.fields(cls)}
    for key in node:
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            from weighted_mtp.config.overrides import did_you_mean

            close = did_you_mean(full.replace("[", ".").replace("]", ""))
            hint = f"did you mean {close}? Else " if close else ""
            c.add(
                full,
                OmegaConf.select(node, str(key), throw_on_missing=False),
                "is not a field of the schema (a key added with '+' must exist too)",
                f"{hint}remove it (the config field reference, docs/reference, lists every field)",
            )
        elif full != "weighting":
            declared(c, node._get_node(key), full)


def finite(c: Any) -> None:
    """No NaN / inf anywhere (``save_checkpoint_every=inf`` is a typo, not a setting)."""
    try:
        data = OmegaConf.to_container(c.cfg, resolve=True, throw_on_missing=False)
    except Exception:  # unresolved interpolations are reported where they are read
        return

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, float) and not math.isfinite(node):
            c.add(key, node, "must be a finite number", f"--override {key}=<a finite number>")

    walk(data, "")


def targets(c: Any) -> None:
    """``_target_`` classes must import, and the weighting must accept its arguments (a
    typo fails here, not deep inside a run)."""
    for key in ("weighting._target_", "data_sampling._target_"):
        target = c.get(key)
        if not target:
            continue
        module, _, name = str(target).rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name, None) if module else None
            reason = f"module {module or '?'} has no {name}"
        except ImportError as exc:
            cls, reason = None, f"cannot import {module} ({exc})"
        if cls is None:
            c.add(key, target, f"is not an importable class: {reason}", "pkg.module.Class")
        elif key == "weighting._target_":
            args = {k: v for k, v in (c.get("weighting") or {}).items() if k != "_target_"}
            try:
                inspect.signature(cls).bind(**args)
            except TypeError as exc:
                c.add(
                    "weighting",
                    sorted(args),
                    f"{target} does not take these arguments ({exc})",
                    "pass only its constructor's arguments (+weighting.<arg>=...)",
                )
            except ValueError:  # no signature (a C class): instantiate decides
                pass
