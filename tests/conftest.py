"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("baseline", "critic", "verifiable", "rho1")
PROFILES = ("local", "vessl")


@pytest.fixture
def path_overrides(tmp_path: Path) -> list[str]:
    """Overrides pointing every path field at existing placeholder files in tmp_path.

    For config tests that must not depend on the real micro assets.
    """
    for d in ("policy", "tokenizer", "reference"):
        (tmp_path / d).mkdir()
    for f in ("train.jsonl", "valid.jsonl", "critic.pt"):
        (tmp_path / f).write_text("")
    return [
        f"models.policy.path={tmp_path / 'policy'}",
        f"models.policy.tokenizer_path={tmp_path / 'tokenizer'}",
        f"models.reference.path={tmp_path / 'reference'}",
        f"dataset.train={tmp_path / 'train.jsonl'}",
        f"dataset.validation={tmp_path / 'valid.jsonl'}",
        f"experiment.critic_checkpoint={tmp_path / 'critic.pt'}",
    ]
