"""Model shapes for the plan: Meta ``params.json`` (policy), Hugging Face ``config.json``
(reference). No weights are read.

Where a shape comes from, in order: an explicit ``--policy-shape`` / ``--reference-shape``
(a built-in name under ``conf/shapes/`` or a path), the checkpoint directory at
``models.*.path`` when it holds the shape file, then the built-in shape named like that
directory (``conf/shapes/README.md``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weighted_mtp.config import CONF_DIR
from weighted_mtp.errors import UserError
from weighted_mtp.models.mtp import ModelArgs

SHAPES_DIR = CONF_DIR / "shapes"
# checkpoint directory names (as in the profiles) -> built-in shape
ALIASES = {"meta-llama-mtp": "meta-7b-mtp", "ref-sheared-llama-2.7b": "sheared-llama-2.7b"}


@dataclass(frozen=True)
class Shape:
    source: str  # where it was read, for the report
    data: dict[str, Any]


def builtin_shapes() -> list[str]:
    return sorted(p.name for p in SHAPES_DIR.iterdir() if p.is_dir())


def _read(path: Path, filename: str, what: str) -> Shape:
    file = path / filename if path.is_dir() else path
    try:
        return Shape(str(file), json.loads(file.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} shape {file}: cannot read it ({exc})") from None


def resolve(explicit: str | None, model_path: str | None, filename: str, what: str) -> Shape:
    """The shape file for a model (see the module docstring); UserError if none is found."""
    if explicit:
        p = Path(explicit)
        if not p.exists():
            p = SHAPES_DIR / ALIASES.get(explicit, explicit)
        if not p.exists():
            raise UserError(
                f"--{what}-shape {explicit}: neither a file/directory nor a built-in shape "
                f"({', '.join(builtin_shapes())})"
            )
        return _read(p, filename, what)
    if model_path:
        p = Path(model_path)
        if (p / filename).is_file():
            return _read(p, filename, what)
        builtin = SHAPES_DIR / ALIASES.get(p.name, p.name)
        if (builtin / filename).is_file():
            return _read(builtin, filename, what)
    raise UserError(
        f"no {filename} for the {what} at {model_path!r} and no built-in shape of that name: "
        f"pass --{what}-shape with one of {', '.join(builtin_shapes())} or a {filename} path"
    )


def policy_args(shape: Shape) -> ModelArgs:
    args = ModelArgs.from_dict(shape.data)
    try:
        args.check()
    except ValueError as exc:
        raise UserError(f"policy shape {shape.source}: {exc}") from None
    return args
