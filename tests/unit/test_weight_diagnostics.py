"""Weight diagnostics: shares, means, kept fractions and CE dropped, by label."""

from __future__ import annotations

import pytest
import torch

from weighted_mtp.weighting.diagnostics import (
    diagnostic_metrics,
    diagnostic_sums,
    label_weights,
    weight_quantiles,
)


def test_hand_computed_shares() -> None:
    # row 0 correct, row 1 incorrect; one head, 3 positions, the last invalid in row 1
    w = torch.tensor([[[2.0], [0.0], [1.0]], [[0.5], [0.5], [9.0]]])
    ce = torch.tensor([[[1.0], [3.0], [1.0]], [[2.0], [2.0], [7.0]]])
    valid = torch.tensor([[[True], [True], [True]], [[True], [True], [False]]])
    m = diagnostic_metrics(diagnostic_sums(w, ce, valid, torch.tensor([1.0, 0.0])))
    assert m["token/incorrect_share"] == pytest.approx(2 / 5)
    assert m["weight/incorrect_share"] == pytest.approx(1.0 / 4.0)
    assert m["weight/mean_correct"] == pytest.approx(1.0)
    assert m["weight/mean_incorrect"] == pytest.approx(0.5)
    assert m["weight/kept_correct"] == pytest.approx(2 / 3)
    assert m["weight/kept_incorrect"] == pytest.approx(1.0)
    assert m["weight/ce_dropped"] == pytest.approx(3.0 / 9.0)  # the invalid 7 not counted
    q = weight_quantiles(label_weights(w, valid, torch.tensor([1.0, 0.0])))
    assert q["weight/q50_correct"] == pytest.approx(1.0)
    assert q["weight/q10_incorrect"] == q["weight/q90_incorrect"] == pytest.approx(0.5)


def test_sums_add_over_micro_batches() -> None:
    g = torch.Generator().manual_seed(0)
    w, ce = torch.rand(4, 6, 2, generator=g), torch.rand(4, 6, 2, generator=g)
    valid, reward = torch.rand(4, 6, 2, generator=g) > 0.3, torch.tensor([1.0, 0, 1, 0])
    whole = diagnostic_sums(w, ce, valid, reward)
    halves = diagnostic_sums(w[:2], ce[:2], valid[:2], reward[:2]) + diagnostic_sums(
        w[2:], ce[2:], valid[2:], reward[2:]
    )
    assert torch.allclose(whole, halves)


def test_a_label_absent_from_the_step_has_no_entry() -> None:
    w = torch.ones(1, 3, 1)
    m = diagnostic_metrics(diagnostic_sums(w, w, w.bool(), torch.tensor([1.0])))
    assert "weight/mean_incorrect" not in m and m["token/incorrect_share"] == 0.0
