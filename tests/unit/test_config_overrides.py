"""Seed-style overrides: translation, application onto the schema, malformed input."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from weighted_mtp.config import overrides as ov
from weighted_mtp.config.loader import compose, load_flat
from weighted_mtp.errors import UserError


@pytest.mark.parametrize(
    ("seed", "hydra"),
    [
        ("experiment.name=test", "experiment.name=test"),
        ("a.b[0].c=[0.0,0.5]", "a.b.0.c=[0.0,0.5]"),
        ("a.b[12].c[3]=x=y", "a.b.12.c.3=x=y"),
        ("+a.b=1", "+a.b=1"),
        ("~a.b[1]", "~a.b.1"),
    ],
)
def test_translate(seed: str, hydra: str) -> None:
    assert ov.translate(seed) == hydra


@pytest.mark.parametrize("bad", ["experiment.name test", "=3", "a.b[x].c=1", "a..b=1", "a.b[0=1"])
def test_malformed_override_says_the_form_is_key_value(bad: str) -> None:
    with pytest.raises(ov.OverrideError, match="key=value|list indexes"):
        ov.translate(bad)


@pytest.fixture
def cfg():
    return compose(["stage=verifiable"])


def test_apply_types_nested_and_list_index(cfg) -> None:
    ov.apply(
        cfg,
        [
            "training.learning_rate=5e-5",
            "models.policy.path=storage/models/micro-mtp",
            "data_sampling.curriculum_schedule[0].epoch_range=[0.0,0.5]",
            "data_sampling.curriculum_schedule[0].difficulty_weights.low=0.8",
            "experiment.tags=[a,b]",
            "experiment.critic_checkpoint=null",
        ],
    )
    assert cfg.training.learning_rate == 5e-5 and isinstance(cfg.training.learning_rate, float)
    assert list(cfg.data_sampling.curriculum_schedule[0].epoch_range) == [0.0, 0.5]
    assert cfg.data_sampling.curriculum_schedule[0].difficulty_weights.low == 0.8
    assert list(cfg.experiment.tags) == ["a", "b"]
    assert cfg.experiment.critic_checkpoint is None


def test_apply_interpolation_follows(cfg) -> None:
    ov.apply(cfg, ["experiment.name=sweep-7"])
    assert cfg.checkpoint.save_dir == "storage/checkpoints/verifiable/sweep-7"
    ov.apply(cfg, ["checkpoint.save_dir=out/${experiment.stage}"])
    assert cfg.checkpoint.save_dir == "out/verifiable"


def test_apply_add_and_delete(cfg) -> None:
    ov.apply(cfg, ["+data_sampling.difficulty_bins.extreme=[12,20]"])
    assert list(cfg.data_sampling.difficulty_bins.extreme) == [12, 20]
    ov.apply(cfg, ["~data_sampling.difficulty_bins.extreme"])
    assert "extreme" not in cfg.data_sampling.difficulty_bins


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("training.nope=1", "no field 'training.nope'"),
        ("+training.batch_size=3", "already exists"),
        ("training.k_percent=0.4,0.6", "is a sweep"),
        ("training.batch_size=[1,", "cannot parse"),
    ],
)
def test_apply_errors(cfg, override: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        ov.apply(cfg, [override])


def test_schema_type_error_through_loader(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(OmegaConf.to_yaml(compose()))
    with pytest.raises(UserError, match="training.batch_size"):
        load_flat(f, ["training.batch_size=abc"])


def test_flat_file_unknown_key_names_file_and_line(tmp_path: Path) -> None:
    text = OmegaConf.to_yaml(compose()).replace("  batch_size:", "  batch_sz:")
    f = tmp_path / "c.yaml"
    f.write_text(text)
    line = text.splitlines().index(next(x for x in text.splitlines() if "batch_sz" in x)) + 1
    with pytest.raises(UserError, match=rf"{f}:{line}: training.batch_sz"):
        load_flat(f)


def test_flat_file_bad_yaml_names_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("experiment:\n  name: [unclosed\n")
    with pytest.raises(UserError, match=rf"{f}:\d+: not valid YAML"):
        load_flat(f)


def test_flat_file_round_trip_equals_composition(tmp_path: Path) -> None:
    composed = compose(["stage=rho1", "profile=vessl"])
    f = tmp_path / "rho1.yaml"
    f.write_text(OmegaConf.to_yaml(composed))
    assert OmegaConf.to_container(load_flat(f)) == OmegaConf.to_container(composed)


def test_flat_file_lists_every_unknown_key_and_every_bad_override(tmp_path: Path) -> None:
    text = OmegaConf.to_yaml(compose())
    text = text.replace("  batch_size:", "  batch_sz:").replace("  max_length:", "  max_lenght:")
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UserError) as exc:
        load_flat(f)
    lines = sorted(str(exc.value).splitlines(), key=lambda x: "training" in x)
    assert len(lines) == 2  # in file order, each with its line
    assert "dataset.max_lenght" in lines[0] and "did you mean dataset.max_length" in lines[0]
    assert "training.batch_sz" in lines[1] and "did you mean training.batch_size" in lines[1]
    good = tmp_path / "good.yaml"
    good.write_text(OmegaConf.to_yaml(compose()))
    with pytest.raises(UserError) as exc:
        load_flat(good, ["training.batch_size=abc", "training.beta=0.5", "runtime.seed=xyz"])
    message = str(exc.value)
    assert "training.batch_size" in message and "runtime.seed" in message
    assert len(message.splitlines()) == 2
