"""Input safety rules of the config (issue 22 item 5): experiment name, seed range,
save_dir writable, validation != train, max_length within the policy's context, and the
flat config's YAML (duplicate keys, alias expansion, size)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from weighted_mtp.config import inputs, loader
from weighted_mtp.config.validate import Checker
from weighted_mtp.errors import UserError


def checker(**sections) -> Checker:
    return Checker(OmegaConf.create(sections))


def fields(c: Checker) -> list[str]:
    return [p.field for p in c.problems]


@pytest.mark.parametrize(
    "name",
    [
        "../../../../x",
        "a/b",
        "a\\b",
        "..",
        ".",
        "a" * 201,
        "é" * 101,
        "tab\there",
        "nul\x00",
        "\x7f",
    ],
)
def test_unsafe_experiment_names_are_refused(name: str) -> None:
    c = checker(experiment={"name": name})
    inputs.names(c)
    assert fields(c) == ["experiment.name"]
    assert "Fix: --override experiment.name=" in str(c.problems[0])


@pytest.mark.parametrize("name", ["run", "baseline-7b_v2.1", "a" * 200, "é" * 100, "..x", "my run"])
def test_safe_experiment_names_pass(name: str) -> None:
    c = checker(experiment={"name": name})
    inputs.names(c)
    assert c.problems == []


@pytest.mark.parametrize(
    "seed, ok", [(0, True), (2**32 - 1, True), (2**32, False), (-1, False), (2**70, False)]
)
def test_seed_range(seed: int, ok: bool) -> None:
    c = checker(runtime={"seed": seed}, data_sampling={"seed": seed})
    inputs.seeds(c)
    assert fields(c) == ([] if ok else ["runtime.seed", "data_sampling.seed"])


def test_max_length_absolute_cap() -> None:
    c = checker(dataset={"max_length": 10**12})
    inputs.max_length_cap(c)
    assert fields(c) == ["dataset.max_length"]


def test_save_dir_is_not_created_and_missing_dirs_pass(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    c = checker(checkpoint={"save_dir": str(target)})
    inputs.save_dir(c)
    assert c.problems == [] and not (tmp_path / "a").exists()


def test_save_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    c = checker(checkpoint={"save_dir": str(tmp_path / "f" / "run")})
    inputs.save_dir(c)
    assert fields(c) == ["checkpoint.save_dir"]
    assert "is a file, not a directory" in str(c.problems[0])


def test_save_dir_unwritable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (root ignores permission bits, so the denial is simulated for the nearest parent)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: real(p, m) and Path(p) != tmp_path)
    c = checker(checkpoint={"save_dir": str(tmp_path / "run" / "x")})
    inputs.save_dir(c)
    assert fields(c) == ["checkpoint.save_dir"]
    assert f"is not writable (its nearest existing parent {tmp_path})" in str(c.problems[0])


def test_validation_equal_to_train(tmp_path: Path) -> None:
    f = tmp_path / "train.jsonl"
    f.write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(f)
    for valid in (str(f), str(tmp_path / "." / "train.jsonl"), str(tmp_path / "link.jsonl")):
        c = checker(dataset={"train": str(f), "validation": valid})
        inputs.distinct_splits(c)
        assert fields(c) == ["dataset.validation"], valid
    c = checker(dataset={"train": str(f), "validation": str(tmp_path / "valid.jsonl")})
    inputs.distinct_splits(c)
    assert c.problems == []


@pytest.mark.parametrize(
    "params, length, ok",
    [
        ({"max_seq_len": 128}, 128, True),
        ({"max_seq_len": 128}, 129, False),
        ({}, 10**6, True),  # no max_seq_len: not checked here
        ({"max_seq_len": "x"}, 10**6, True),
    ],
)
def test_max_length_within_model_context(tmp_path: Path, params: dict, length: int, ok: bool):
    (tmp_path / "params.json").write_text(json.dumps({"dim": 8, **params}))
    c = checker(models={"policy": {"path": str(tmp_path)}}, dataset={"max_length": length})
    inputs.model_context(c)
    assert fields(c) == ([] if ok else ["dataset.max_length"])


def test_unreadable_params_are_left_to_the_loader(tmp_path: Path) -> None:
    (tmp_path / "params.json").write_text("{oops")
    c = checker(models={"policy": {"path": str(tmp_path)}}, dataset={"max_length": 10})
    inputs.model_context(c)
    assert c.problems == []


P = Path("c.yaml")


@pytest.mark.parametrize(
    "text, expect",
    [
        ("a: 1\nb:\n  c: 2\n  c: 3\n", "c.yaml:4: duplicate key 'c' (first at line 3)"),
        ("{a: 1, a: 2}\n", "c.yaml:1: duplicate key 'a'"),
        ("a: &x [*x]\n", "c.yaml:1: a recursive YAML alias"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ],
)
def test_yaml_refusals(text: str, expect: str) -> None:
    with pytest.raises(UserError) as info:
        loader.safe_load(text, P)
    assert expect in str(info.value)


def test_yaml_alias_bomb_is_refused_at_once() -> None:
    lines = ["a: &a [" + ",".join(["lol"] * 9) + "]"]
    for i in range(1, 20):  # 9**20 nodes once expanded
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(UserError, match="expands to"):
        loader.safe_load("\n".join(lines) + "\n", P)


def test_yaml_merge_keys_and_small_aliases_still_load() -> None:
    text = "base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\nd: [*b, *b]\n1: a\n'1': b\n"
    assert loader.safe_load(text, P) == {
        "base": {"x": 1, "y": 2},
        "c": {"x": 3, "y": 2},
        "d": [{"x": 1, "y": 2}, {"x": 1, "y": 2}],
        1: "a",
        "1": "b",
    }


def test_config_file_size_cap(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_text("#" * (loader.MAX_CONFIG_BYTES + 1))
    with pytest.raises(UserError, match="more than a config file can be"):
        loader.load_flat(f)
