"""The generated references: every config field has a meaning (a field added to the
schema without one fails here, not in the docs build), none is stale, and the pages
render with every field and every seed command."""

from __future__ import annotations

from weighted_mtp.docsgen import cli_ref, config_ref


def test_every_config_field_has_a_meaning() -> None:
    missing = config_ref.undocumented()
    assert missing == [], (
        f"fields without a meaning: {missing}. Fix: add each to MEANINGS in "
        "weighted_mtp/docsgen/fields.py (rule / meaning, as the field reference shows it)"
    )


def test_no_meaning_for_a_field_that_is_gone() -> None:
    assert config_ref.stale() == []


def test_config_reference_lists_every_field_with_defaults() -> None:
    page = config_ref.render()
    for name, _, _ in config_ref.schema_fields():
        assert f"| `{name}` |" in page
    # per-stage and per-profile defaults come from composing conf/
    assert "verifiable: `0.9`" in page  # training.beta
    assert "profile vessl, vessl_a100_40gb: `fsdp`" in page  # runtime.distributed


def test_where_names_compositions_briefly() -> None:
    s, p = ["a", "b"], ["x", "y"]
    assert config_ref._where({("a", "x"), ("b", "x")}, s, p) == "profile x"
    assert config_ref._where({("a", "x"), ("a", "y")}, s, p) == "a"
    assert config_ref._where({("a", "x")}, s, p) == "a under profile x"
    assert config_ref._where({("a", "x"), ("b", "y")}, s, p) == "a/x, b/y"


def test_cli_reference_has_every_command() -> None:
    page = cli_ref.render()
    for title in ("wmtp", "wmtp-eval", "wmtp-plan", "python -m weighted_mtp.demo"):
        assert f"`{title}`" in page
    for name in cli_ref._subparsers(cli_ref.build_parser()):
        assert f"### `python -m weighted_mtp {name}`" in page
