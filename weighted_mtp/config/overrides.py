"""Command-line overrides: the seed's ``key=value`` forms mapped onto Hydra's grammar.

This is the one place where the seed's override syntax is translated. The seed
accepts list indexes in brackets (``data_sampling.curriculum_schedule[0].epoch_range=[0.0,0.5]``);
Hydra's grammar has no ``[i]`` key syntax but accepts the index as a path element
(``data_sampling.curriculum_schedule.0.epoch_range=[0.0,0.5]``). Values are parsed
by Hydra's override grammar, which reads them like YAML 1.2 (``5e-5`` is a float,
``[0.0,0.5]`` a list, ``{low: 0.8}`` a dict, ``null`` None).
"""

from __future__ import annotations

import re
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from weighted_mtp.errors import UserError

_KEY_CHARS = re.compile(r"^[+~]{0,2}[A-Za-z_][\w\-./@\[\]]*$")
_BRACKET_INDEX = re.compile(r"\[(\d+)\]")


class OverrideError(UserError):
    """A malformed ``key=value`` override."""


def translate(override: str) -> str:
    """Translate one seed-style override into Hydra's grammar.

    ``a.b[0].c=v`` becomes ``a.b.0.c=v``; everything after the first ``=`` is kept
    verbatim. Raises :class:`OverrideError` when the argument is not ``key=value``.
    """
    key, sep, value = override.partition("=")
    key = key.strip()
    deletion = key.startswith("~")  # Hydra's ``~key`` needs no value
    if (not sep and not deletion) or not key or not _KEY_CHARS.match(key):
        raise OverrideError(
            f"malformed override {override!r}: the form is key=value "
            "(nested: key1.key2.key3=value, list items: key[0].field=value), "
            "e.g. --override experiment.name=test"
        )
    key = _BRACKET_INDEX.sub(r".\1", key)
    if "[" in key or "]" in key or ".." in key or key.endswith("."):
        raise OverrideError(
            f"malformed override key {key!r} in {override!r}: list indexes are written [N] "
            "with a non-negative integer, e.g. data_sampling.curriculum_schedule[0].epoch_range"
        )
    return f"{key}={value}" if sep else key


def translate_all(overrides: list[str]) -> list[str]:
    return [translate(o) for o in overrides]


def parse(overrides: list[str]) -> list[Override]:
    """Parse (already translated) overrides with Hydra's grammar."""
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise OverrideError(f"cannot parse override: {exc}") from None


def apply(cfg: DictConfig, overrides: list[str]) -> None:
    """Apply seed-style overrides to ``cfg`` in place, with the schema's type checks.

    Supports ``key=value`` (the key must exist), ``+key=value`` (add), ``++key=value``
    (add or replace) and ``~key`` (delete). Sweeps (``a=1,2``) are refused here: use
    ``wmtp -m`` for those.
    """
    for original, ov in zip(overrides, parse(translate_all(overrides)), strict=True):
        if ov.is_sweep_override():
            raise OverrideError(
                f"{original!r} is a sweep; the seed CLI runs one job. "
                "Sweep with: wmtp -m " + original
            )
        key = ov.key_or_group
        value = ov.value()
        exists = OmegaConf.select(cfg, key, throw_on_missing=False, default=_ABSENT) is not _ABSENT
        if ov.is_delete():
            if not exists:
                raise OverrideError(f"{original!r}: cannot delete {key!r}, it is not in the config")
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            del node[int(leaf) if leaf.isdigit() else leaf]
            continue
        if ov.is_add() and exists:
            raise OverrideError(f"{original!r}: {key!r} already exists; drop the '+' to change it")
        bad_index = list_index_problem(cfg, key)
        if bad_index:
            raise OverrideError(f"{original!r}: {bad_index}")
        if not ov.is_add() and not ov.is_force_add() and not exists:
            raise OverrideError(f"{original!r}: no field {key!r} in the config")
        OmegaConf.update(cfg, key, value, merge=True, force_add=ov.is_add() or ov.is_force_add())


def list_index_problem(cfg: DictConfig, key: str) -> str | None:
    """Why ``key`` (Hydra form, ``a.b.9.c``) indexes past the end of a list in ``cfg``."""
    node: Any = cfg
    path: list[str] = []
    for part in key.split("."):
        if isinstance(node, ListConfig) and part.isdigit():
            n = len(node)
            if int(part) >= n:
                seed = ".".join(path)
                fix = f"use an index below {n}, or set" if n else "set"
                return (
                    f"{seed} has {n} item(s)"
                    + (f" (indexes 0..{n - 1})" if n else "")
                    + f": [{part}] is out of range. Fix: {fix} the whole list: {seed}=[...]"
                )
            node = node[int(part)]
        elif isinstance(node, DictConfig) and part in node:
            node = node._get_node(part)
        else:
            return None
        path.append(part if not part.isdigit() else f"[{part}]")
        path = [".".join(path).replace(".[", "[")]
    return None


class _Absent:
    pass


_ABSENT = _Absent()
