"""Imports point down only (README, Layout): a module may import its own package and the
layers below it, never a layer above nor a sibling package of its layer. Lazy imports
inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "weighted_mtp"
#: bottom first; a package or module not listed is an entry point (the top layer)
LAYERS = (
    ("errors", "cuda_alloc"),
    ("fileio", "progress", "distributed", "sandbox"),
    ("models",),
    ("data",),
    ("weighting", "tracking", "config.schema"),
    ("training",),
    ("stages", "evaluation"),
)
TOP = len(LAYERS)


def _place(module: str) -> tuple[int, str]:
    """(layer, unit) of a dotted ``weighted_mtp.*`` name; unit = the listed name."""
    parts = module.split(".")[1:]
    for n in (2, 1):
        unit = ".".join(parts[:n])
        for layer, units in enumerate(LAYERS):
            if unit in units:
                return layer, unit
    return TOP, parts[0] if parts else ""


def _imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("weighted_mtp"):
            if node.module == "weighted_mtp":
                found += [(f"weighted_mtp.{a.name}", node.lineno) for a in node.names]
            else:
                found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [
                (a.name, node.lineno) for a in node.names if a.name.startswith("weighted_mtp")
            ]
    return found


def test_every_import_points_down() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        layer, unit = _place(module)
        if layer == TOP:
            continue
        for target, line in _imports(path):
            t_layer, t_unit = _place(target)
            if t_layer > layer or (t_layer == layer and t_unit != unit):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {module} -> {target}")
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_layers_name_existing_packages() -> None:
    for units in LAYERS:
        for unit in units:
            path = PACKAGE.joinpath(*unit.split("."))
            assert path.is_dir() or path.with_suffix(".py").is_file(), unit
