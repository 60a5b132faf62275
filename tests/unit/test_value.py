"""Value targets (MC, TD(lambda)), value losses, AUROC."""

from __future__ import annotations

import pytest
import torch

from weighted_mtp.training.value import (
    auroc,
    last_state_values,
    value_loss,
    value_mask,
    value_targets,
)

LABELS = torch.tensor([[-100, -100, 7, 8, 9, -100]])  # prompt 2, response 3, pad 1


def test_value_mask_is_s0_to_sT_minus_1() -> None:
    assert value_mask(LABELS)[0].tolist() == [False, True, True, True, False, False]


def test_monte_carlo_targets_are_the_reward() -> None:
    m = value_mask(LABELS)
    t = value_targets(torch.rand(1, 6), torch.tensor([1.0]), m)
    assert t[0].tolist() == [0, 1, 1, 1, 0, 0]
    t = value_targets(torch.rand(1, 6), torch.tensor([0.0]), m)
    assert t.abs().sum() == 0


def test_discounted_and_td_lambda_targets() -> None:
    m = value_mask(LABELS)
    v = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.0]])
    r = torch.tensor([1.0])
    t = value_targets(v, r, m, gamma=0.5, lam=1.0)
    assert t[0, 1:4].tolist() == pytest.approx([0.25, 0.5, 1.0])
    t = value_targets(v, r, m, gamma=1.0, lam=0.0)  # one-step: V(s_{t+1}); last: R
    assert t[0, 1:4].tolist() == pytest.approx([0.2, 0.3, 1.0])
    t = value_targets(v, r, m, gamma=1.0, lam=0.5)
    g2 = 1.0
    g1 = 0.5 * 0.3 + 0.5 * g2
    g0 = 0.5 * 0.2 + 0.5 * g1
    assert t[0, 1:4].tolist() == pytest.approx([g0, g1, g2])


def _loop_targets(values, reward, mask, gamma, lam):
    """The former per-position loop (right to left), as the reference."""
    values = values.detach().float()
    out = torch.zeros_like(values)
    g = reward.float().clone()
    nxt_v = torch.zeros_like(g)
    started = torch.zeros_like(g, dtype=torch.bool)
    for t in range(values.shape[1] - 1, -1, -1):
        m = mask[:, t]
        g = torch.where(m & started, gamma * ((1 - lam) * nxt_v + lam * g), g)
        out[:, t] = torch.where(m, g, out[:, t])
        nxt_v = torch.where(m, values[:, t], nxt_v)
        started = started | m
    return out


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (1.0, 0.5)])
def test_vectorised_targets_equal_the_loop(gamma: float, lam: float) -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(6, 40, generator=g)
    reward = torch.rand(6, generator=g)
    mask = torch.rand(6, 40, generator=g) < 0.7  # gaps too, and a row without states
    mask[2] = False
    mask[3, :35] = False
    got = value_targets(values, reward, mask, gamma, lam)
    assert torch.allclose(got, _loop_targets(values, reward, mask, gamma, lam), atol=1e-6)


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [("mse", (0.25 + 4.0) / 2), ("mae", (0.5 + 2.0) / 2), ("huber", (0.125 + 1.5) / 2)],
)
def test_value_losses(loss_type: str, expected: float) -> None:
    pred = torch.tensor([[0.5, 3.0, 9.0]])
    target = torch.tensor([[0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    assert value_loss(pred, target, mask, loss_type, 2).item() == pytest.approx(expected)
    with pytest.raises(ValueError):
        value_loss(pred, target, mask, "l1", 2)


def test_auroc() -> None:
    assert auroc(torch.tensor([0.9, 0.8, 0.1, 0.2]), torch.tensor([1, 1, 0, 0])) == 1.0
    assert auroc(torch.tensor([0.1, 0.2, 0.9, 0.8]), torch.tensor([1, 1, 0, 0])) == 0.0
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.5
    assert auroc(torch.tensor([0.3, 0.2]), torch.tensor([1, 1])) != auroc(
        torch.tensor([0.3, 0.2]), torch.tensor([1, 1])
    )  # NaN with one class


def test_last_state_values() -> None:
    v = torch.arange(12.0).view(2, 6)
    m = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    assert last_state_values(v, m).tolist() == [3.0, 8.0]
