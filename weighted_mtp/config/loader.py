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
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(
            f"{path}: {size} bytes, more than a config file can be ({MAX_CONFIG_BYTES} bytes). "
            "Fix: pass the flat config (python -m weighted_mtp.cli --cfg job prints one)"
        )
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
        data = safe_load(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections (experiment:, models:, ...)")
    data.pop("hydra", None)
    _check_sections(data, WmtpConfig, "", text, path)
    unknown = [
        f"{path}:{_line_of(text, key) or '?'}: {key}: not a field of the config; "
        + (
            f"did you mean {guess}? Fix: rename it"
            if (guess := ov.did_you_mean(key))
            else "Fix: remove it (the config field reference, docs/reference, lists every field)"
        )
        for key in _leaf_keys(data)
        if ov.unknown_field(key)
    ]
    if unknown:  # every mistyped key at once, not the first only
        raise UserError("\n".join(unknown))
    try:
        cfg = structured(OmegaConf.create(data))
    except OmegaConfBaseException as exc:
        key = exc.full_key or ""
        line = _line_of(text, key)
        where = f"{path}:{line}" if line else str(path)
        raise UserError(f"{where}: {key}: {_first_line(exc)}") from None
    apply_overrides(cfg, overrides or [])
    return cfg


MAX_CONFIG_BYTES = 1 << 20  # a flat config is a few KB
MAX_YAML_NODES = 100_000  # nodes once aliases are expanded (a config has a few hundred)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_nodes(root: yaml.Node, path: Path) -> int:
    """Refuse duplicate keys (YAML says they are an error; PyYAML keeps the last one) and
    return the node count with every alias expanded, computed without expanding (memoised
    per node), so a 'billion laughs' document is refused at once; a recursive alias is
    refused too."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        line = node.start_mark.line + 1
        if id(node) in active:
            raise UserError(f"{path}:{line}: a recursive YAML alias. Fix: write the value out")
        active.add(id(node))
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                children += [key, value]
                if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                    continue  # '<<: *base' keys may be overridden
                here, ident = key.start_mark.line + 1, (key.tag, key.value)
                if ident in seen:
                    first = seen[ident]
                    raise UserError(
                        f"{path}:{here}: duplicate key {key.value!r} (first at line {first}); "
                        "YAML keeps only the last one. Fix: keep one of them"
                    )
                seen[ident] = here
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        total = 1 + sum(size(ch) for ch in children)
        active.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root)


def safe_load(text: str, path: Path) -> object:
    """``yaml.safe_load`` refusing duplicate keys, recursive aliases and alias expansion
    past :data:`MAX_YAML_NODES` (a :class:`UserError` naming the file and line)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _check_nodes(node, path)
        if n > MAX_YAML_NODES:
            raise UserError(
                f"{path}: expands to {n} YAML nodes through its aliases (*name), more than "
                f"{MAX_YAML_NODES}. Fix: write the config without nested aliases"
            )
        return loader.construct_document(node)
    except RecursionError:
        raise UserError(f"{path}: YAML nested too deeply. Fix: flatten the config") from None
    finally:
        loader.dispose()


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """Apply seed-style overrides, turning schema violations into one :class:`UserError`
    that lists every bad override (the good ones are applied)."""
    problems = []
    for override in overrides:
        try:
            ov.apply(cfg, [override])
        except OmegaConfBaseException as exc:
            problems.append(f"override {override!r}: {exc.full_key}: {_first_line(exc)}")
        except UserError as exc:
            problems.append(str(exc))
    if problems:
        raise UserError("\n".join(problems))


def _leaf_keys(data: object, prefix: str = "") -> list[str]:
    """Dotted keys of every leaf of a YAML mapping (list items by index)."""
    if isinstance(data, dict):
        items = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, list):
        items = [(str(i), v) for i, v in enumerate(data)]
    else:
        return [prefix]
    if not items:
        return [prefix] if prefix else []
    return [k for name, v in items for k in _leaf_keys(v, f"{prefix}.{name}" if prefix else name)]


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
