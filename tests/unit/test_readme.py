"""README stays true: every config field is in its reference, every command exists."""

from __future__ import annotations

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
