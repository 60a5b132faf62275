"""Command-line overrides: the seed's ``key=value`` forms mapped onto Hydra's grammar.

This is the one place where the seed's override syntax is translated. The seed
accepts list indexes in brackets (``data_sampling.curriculum_schedule[0].epoch_range=[0.0,0.5]``);
Hydra's grammar has no ``[i]`` key syntax but accepts the index as a path element
(``data_sampling.curriculum_schedule.0.epoch_range=[0.0,0.5]``). Values are parsed
by Hydra's override grammar, which reads them like YAML 1.2 (``5e-5`` is a float,
``[0.0,0.5]`` a list, ``{low: 0.8}`` a dict, ``null`` None).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import typing
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from weighted_mtp.config.schema import WmtpConfig
from weighted_mtp.errors import UserError, fix

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
            found, default = schema_default(key)
            if found:  # a schema field cannot be removed: ~key resets it to its default
                OmegaConf.update(cfg, key, default, merge=False)
                continue
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
            raise OverrideError(f"{original!r}: {unknown_field(key) or f'no field {key!r}'}")
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


def _field_type(cls: Any, name: str) -> Any:
    return typing.get_type_hints(cls).get(name)


def _walk(key: str, root: type = WmtpConfig) -> tuple[str, Any]:
    """Follow ``key`` (Hydra form, ``a.b.0.c``) through the schema's dataclasses.

    Returns ``("field", dataclasses.Field)`` for a declared field, ``("free", None)`` where
    the path enters a part the schema does not type (``weighting``, a dict, a list item
    that is no dataclass), ``("unknown", <known prefix>)`` at an undeclared name."""
    cls: Any = root
    parts = key.split(".")
    found: Any = None
    for i, part in enumerate(parts):
        if dataclasses.is_dataclass(cls):
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if part not in fields:
                return "unknown", ".".join(parts[:i])
            found = fields[part]
            cls = _field_type(cls, part)
        elif typing.get_origin(cls) is list and part.isdigit():
            args = typing.get_args(cls)
            cls = args[0] if args else Any
            found = None
        else:
            return "free", None
    return ("field", found) if found is not None else ("free", None)


def schema_keys(root: type = WmtpConfig, prefix: str = "") -> list[str]:
    """Every declared field of the schema, dotted (sections and leaves)."""
    out: list[str] = []
    for f in dataclasses.fields(root):
        full = f"{prefix}{f.name}"
        out.append(full)
        sub = _field_type(root, f.name)
        if dataclasses.is_dataclass(sub):
            out += schema_keys(sub, full + ".")
    return out


def _initials(name: str) -> str:
    return "".join(w[0] for w in name.split("_") if w)


def did_you_mean(key: str, root: type = WmtpConfig) -> str | None:
    """The schema field closest to a mistyped ``key`` (same section first; ``lr`` also
    matches the initials of ``learning_rate``)."""
    keys = schema_keys(root)
    section, _, leaf = key.rpartition(".")
    siblings = [k for k in keys if k.rpartition(".")[0] == section]
    by_initials = [k for k in siblings if _initials(k.rpartition(".")[2]) == leaf]
    if by_initials:
        return by_initials[0]
    leaves = {k.rpartition(".")[2]: k for k in siblings}
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.7)
    if close:
        return leaves[close[0]]
    others = [k for k in keys if k.rpartition(".")[0] != section]  # a typo in the section
    close = difflib.get_close_matches(key, others, n=1, cutoff=0.8)
    return close[0] if close else None


def unknown_field(key: str, root: type = WmtpConfig) -> str | None:
    """Why ``key`` (Hydra form) is not a field of the schema, with the closest field and
    the fix in the running command line's syntax; None when it is one (or free-form)."""
    kind, where = _walk(key, root)
    if kind != "unknown":
        return None
    guess = did_you_mean(key, root)
    hint = (
        f"did you mean {guess}? Fix: {fix(f'{guess}=<value>')}"
        if guess
        else ("Fix: use a field the config field reference lists (docs/reference)")
    )
    section = f" (section {where!r} has no {key[len(where) + 1 :]!r})" if where else ""
    return f"no field {key!r} in the config{section}; {hint}"


def schema_default(key: str, root: type = WmtpConfig) -> tuple[bool, Any]:
    """``(True, default)`` for a declared leaf field with a default; raises
    :class:`OverrideError` for a required one (``~key`` cannot reset it); ``(False, None)``
    for a key the schema does not type (free-form: ``~`` deletes it)."""
    kind, f = _walk(key, root)
    if kind != "field":
        return False, None
    factory = f.default_factory
    default = factory() if factory is not dataclasses.MISSING else f.default
    if default is dataclasses.MISSING or default == "???":
        raise OverrideError(
            f"~{key}: {key} is required, so it cannot be removed or reset to a default. "
            f"Fix: set it instead, {fix(f'{key}=<value>')}"
        )
    if dataclasses.is_dataclass(default):
        default = OmegaConf.to_container(OmegaConf.structured(default))
    return True, default


def hydra_value(value: Any) -> str:
    """``value`` written in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def reset_override(key: str, root: type = WmtpConfig) -> str | None:
    """``~key`` for a schema field as the ``key=<default>`` Hydra can apply to a typed
    config (which refuses deletion); None when ``key`` is not a schema field."""
    found, default = schema_default(key, root)
    return f"{key}={hydra_value(default)}" if found else None


class _Absent:
    pass


_ABSENT = _Absent()
