"""README stays true: every config field is in its reference, every command exists, the
Layout section lists every module of the package where it is."""

from __future__ import annotations

import fnmatch
import re

from omegaconf import OmegaConf

from tests.conftest import REPO
from weighted_mtp.__main__ import build_parser
from weighted_mtp.config.loader import compose
from weighted_mtp.config.schema import EvalRootConfig

README = (REPO / "README.md").read_text()


def leaf_keys(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in node.items():
        key = f"{prefix}{k}"
        if key == "weighting":  # constructor arguments, interpolated from training.*
            keys.add("weighting._target_")
        elif isinstance(v, dict) and k != "difficulty_bins":
            keys |= leaf_keys(v, key + ".")
        else:
            keys.add(key)
    return keys


def test_every_config_field_is_documented() -> None:
    documented = set(re.findall(r"^\| `([\w.]+)` \|", README, flags=re.M))
    fields = leaf_keys(OmegaConf.to_container(compose(["stage=verifiable"])))
    fields |= leaf_keys(OmegaConf.to_container(OmegaConf.structured(EvalRootConfig)))
    assert fields - documented == set()
    assert (
        documented
        - fields
        - {"instruction", "input", "output", "task_id", "is_correct", "metadata"}
        == set()
    )


def test_every_seed_cli_command_in_readme_exists() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    used = set(re.findall(r"python -m weighted_mtp ([a-z-]+)", README)) - {"--help"}
    assert used <= set(sub.choices), used - set(sub.choices)
    assert set(sub.choices) <= used  # and every command is documented


def layout_entries() -> dict[str, str]:
    """The Layout block's ``weighted_mtp/`` entries: name (``cli.py``, ``training/``) ->
    its text, continuation lines included."""
    block = README.split("## Layout", 1)[1].split("```")[1]
    lines = block.split("weighted_mtp/\n", 1)[1].splitlines()
    entries: dict[str, str] = {}
    name = None
    for line in lines:
        if not line.startswith("  "):  # the next top-level item (tests/, ...)
            break
        if line[2] != " ":
            name, _, text = line.strip().partition(" ")
            entries[name] = text
        else:
            entries[name] += " " + line.strip()
    return entries


def test_layout_lists_every_module_where_it_is() -> None:
    package = REPO / "weighted_mtp"
    entries = layout_entries()
    top = {n for n in entries if n.endswith(".py")}
    assert top == {p.name for p in package.glob("*.py")} - {"__init__.py"}
    folders = {n.rstrip("/") for n in entries if n.endswith("/")}
    on_disk = {str(p.parent.relative_to(package)) for p in package.rglob("__init__.py")} - {"."}
    assert folders == on_disk
    for folder in folders:
        named = re.findall(r"(?<![/\w])([\w*]+\.py)\b", entries[folder + "/"])
        files = {p.name for p in (package / folder).glob("*.py")}
        for pattern in named:  # every name stands for a file there ...
            assert fnmatch.filter(files, pattern), f"README Layout: {folder}/{pattern} is gone"
        for f in files - {"__init__.py"}:  # ... and every file has its name
            assert any(fnmatch.fnmatch(f, pat) for pat in named), f"{folder}/{f} not in Layout"
