"""Build a typed config: from Hydra's conf/ tree, or from a flat seed-style YAML file."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from weighted_mtp.config import CONF_DIR
from weighted_mtp.config import overrides as ov
from weighted_mtp.config.schema import WmtpConfig, register_schema, structured
from weighted_mtp.errors import UserError


def compose(overrides: list[str] | None = None, conf_dir: Path = CONF_DIR) -> DictConfig:
    """Compose ``conf/config.yaml`` with overrides (seed forms allowed), like ``wmtp`` does."""
    register_schema()
    translated = ov.translate_all(overrides or [])
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3", job_name="wmtp"):
        cfg = hydra_compose(config_name="config", overrides=translated)
    # Drop Hydra's own node: the run config is the schema's sections only.
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return structured(cfg)


def load_flat(path: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """Load a flat seed-style YAML (what ``wmtp --cfg job`` prints) onto the schema.

    Errors name the file, the key and (where known) the line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}. Fix: pass an existing --config FILE")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save the config as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections (experiment:, models:, ...)")
    data.pop("hydra", None)
    _check_sections(data, WmtpConfig, "", text, path)
    try:
        cfg = structured(OmegaConf.create(data))
    except OmegaConfBaseException as exc:
        key = exc.full_key or ""
        line = _line_of(text, key)
        where = f"{path}:{line}" if line else str(path)
        raise UserError(f"{where}: {key}: {_first_line(exc)}") from None
    apply_overrides(cfg, overrides or [])
    return cfg


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """Apply seed-style overrides, turning schema violations into :class:`UserError`."""
    for override in overrides:
        try:
            ov.apply(cfg, [override])
        except OmegaConfBaseException as exc:
            raise UserError(f"override {override!r}: {exc.full_key}: {_first_line(exc)}") from None


def _check_sections(data: dict, schema: type, prefix: str, text: str, path: Path) -> None:
    """A section of the schema (``training:``) must be a mapping, not ``training: 5``."""
    for f in dataclasses.fields(schema):
        if f.name not in data or data[f.name] is None:
            continue
        cls = _dataclass_type(schema, f.name)
        if cls is None:
            continue
        key = f"{prefix}{f.name}"
        value = data[f.name]
        if not isinstance(value, dict):
            line = _line_of(text, key)
            where = f"{path}:{line}" if line else str(path)
            raise UserError(
                f"{where}: {key}: must be a section (a mapping of its fields, e.g. "
                f"'{f.name}:' then indented 'field: value' lines), got {value!r}"
            )
        _check_sections(value, cls, key + ".", text, path)


def _dataclass_type(schema: type, name: str) -> type | None:
    hint = typing.get_type_hints(schema).get(name)
    return hint if dataclasses.is_dataclass(hint) else None


def _first_line(exc: OmegaConfBaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _line_of(text: str, dotted_key: str) -> int | None:
    """1-based line of ``dotted_key`` (e.g. ``training.batch_sz``) in a YAML document."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in dotted_key.replace("[", ".").replace("]", "").split("."):
        if part == "":
            continue
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == part), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            return line
    return line
