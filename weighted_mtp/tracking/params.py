"""A config as MLflow params and tags.

* the resolved config -> params with dotted keys, lists/dicts as JSON, values cut to
  500 characters (:func:`flatten_config`);
* ``experiment.tags`` (list of strings) -> one tag per item, ``{item: "true"}`` (key
  sanitised to MLflow's allowed characters), so runs filter as ``tags.<item> = 'true'``;
  plus tag ``tags`` holding the items joined with ``", "`` verbatim;
  ``experiment.stage`` -> tag ``stage``; ``experiment.description`` -> tag
  ``mlflow.note.content`` (the UI's description field) (:func:`run_tags`);
* the CUDA allocator setting of this process (:mod:`weighted_mtp.cuda_alloc`) -> params
  ``runtime.cuda_alloc_conf`` (the value) and ``runtime.cuda_alloc_conf_source``
  (``default``: set by the entry point; ``user:<VARIABLE>``; ``unset``), added by
  :func:`flatten_config` (:func:`runtime_params`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from weighted_mtp import cuda_alloc

PARAM_VALUE_MAX = 500  # MLflow < 2.x servers reject longer values; newer allow 6000

_BAD_KEY_CHARS = re.compile(r"[^\w.\- :/]")


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags for a run from ``cfg.experiment`` (see the module docstring)."""
    exp_cfg = cfg.get("experiment") or {}
    items = [str(t) for t in (safe_get(exp_cfg, "tags") or [])]
    tags: dict[str, str] = {}
    for item in items:
        key = clean_key(item)
        if key:
            tags[key] = "true"
    if items:
        tags["tags"] = ", ".join(items)
    stage = safe_str(exp_cfg, "stage")
    if stage:
        tags["stage"] = stage
    description = safe_str(exp_cfg, "description")
    if description:
        tags["mlflow.note.content"] = description
    return tags


def flatten_config(cfg: DictConfig | Mapping[str, Any], runtime: bool = True) -> dict[str, str]:
    """Flatten a (resolved when possible) config to ``{"a.b.c": "value"}`` params; with
    ``runtime``, plus this process's :func:`runtime_params` (a config key wins)."""
    data = plain_config(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    flat = dict(_flatten(data, ""))
    return (runtime_params() | flat) if runtime else flat


def runtime_params() -> dict[str, str]:
    """Settings of this process a run depends on that are not config fields: the CUDA
    allocator configuration and where it came from (:mod:`weighted_mtp.cuda_alloc`)."""
    return cuda_alloc.current().params()


def plain_config(node: DictConfig) -> dict[str, Any]:
    """``node`` as plain data, resolving each value that resolves; others stay as written
    (``???`` for a missing value, ``${...}`` for a broken interpolation)."""
    raw = OmegaConf.to_container(node, resolve=False)
    assert isinstance(raw, dict)
    out: dict[str, Any] = {}
    for key in node:
        try:
            value = node[key]
        except Exception:  # noqa: BLE001 - missing value or unresolvable interpolation
            out[str(key)] = raw[key]
            continue
        if isinstance(value, DictConfig):
            out[str(key)] = plain_config(value)
        elif isinstance(value, ListConfig):
            try:
                out[str(key)] = OmegaConf.to_container(value, resolve=True)
            except Exception:  # noqa: BLE001
                out[str(key)] = raw[key]
        else:
            out[str(key)] = value
    return out


def param_value(value: Any) -> str:
    """``value`` as a param's text: lists and dicts as JSON, cut to ``PARAM_VALUE_MAX``."""
    text = str(value)
    if isinstance(value, (list, tuple, dict)):
        with contextlib.suppress(TypeError, ValueError):
            text = json.dumps(value, default=str)
    return text if len(text) <= PARAM_VALUE_MAX else text[: PARAM_VALUE_MAX - 3] + "..."


def clean_key(key: Any) -> str:
    """Map ``key`` onto MLflow's key rules: ``[\\w.\\- :/]`` only, no empty/``.``/``..``
    path parts, at most 250 characters."""
    text = _BAD_KEY_CHARS.sub("_", str(key)).strip()
    parts = [part for part in text.split("/") if part not in ("", ".", "..")]
    return "/".join(parts)[:250]


def safe_get(node: Any, key: str) -> Any:
    """``node.get(key)``, with a missing or broken value read as absent (None)."""
    try:
        return node.get(key)
    except Exception:  # noqa: BLE001 - a MISSING or broken value reads as absent
        return None


def safe_str(node: Any, key: str) -> str:
    """:func:`safe_get` as stripped text (``""`` when absent)."""
    value = safe_get(node, key)
    return "" if value is None else str(value).strip()


def _flatten(data: Any, prefix: str) -> Iterator[tuple[str, str]]:
    if isinstance(data, Mapping):
        if not data and prefix:
            yield prefix, "{}"
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, param_value(data)
