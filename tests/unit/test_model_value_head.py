"""Value head: shapes, types, learning; only a training checkpoint carries one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from weighted_mtp.errors import UserError
from weighted_mtp.models.value_head import ValueHead
from weighted_mtp.training import checkpoint as ckpt


@pytest.mark.parametrize(
    ("kind", "hidden", "n_params"),
    [
        ("linear", 0, 32 + 32 + 1),
        ("mlp", 0, 32 + 32 * 32 + 32 + 32 + 1),
        ("mlp", 8, 32 + 32 * 8 + 8 + 8 + 1),
        ("prefix_max", 8, 32 + (32 * 8 + 8) + (40 * 8 + 8) + 8 + 1),
    ],
)
def test_shapes_and_sizes(kind, hidden, n_params):
    head = ValueHead(32, kind, hidden)
    assert sum(p.numel() for p in head.parameters()) == n_params
    v = head(torch.randn(3, 7, 32, dtype=torch.bfloat16))
    assert v.shape == (3, 7) and v.dtype == torch.float32
    assert (v == 0).all()  # zero-initialised output: V = 0 before training


@pytest.mark.parametrize("kind", ["linear", "mlp", "prefix_max"])
def test_learns(kind):
    torch.manual_seed(0)
    head = ValueHead(32, kind)
    h = torch.randn(4, 9, 32) * 20  # un-normalised residual stream scale
    target = (h[..., 0] > 0).float()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(head(h), target)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_errors(tmp_path: Path):
    with pytest.raises(UserError, match="linear"):
        ValueHead(8, "transformer")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "head.safetensors"))
    for not_a_checkpoint in ("missing", "head.safetensors", "."):
        with pytest.raises(UserError, match="not a training checkpoint.*critic_checkpoint"):
            ckpt.load_value_head(tmp_path / not_a_checkpoint)


@pytest.mark.parametrize("kind", ["linear", "mlp", "prefix_max"])
def test_values_are_float32_under_autocast(kind):
    torch.manual_seed(0)
    head = ValueHead(32, kind)
    torch.nn.init.normal_(head.out_proj.weight)
    hidden = torch.randn(2, 5, 32)
    want = head(hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(hidden.bfloat16())
        got_fp32_in = head(hidden)
    assert got.dtype == got_fp32_in.dtype == torch.float32
    assert (got_fp32_in - want).abs().max().item() <= 1e-6
    torch.testing.assert_close(got, head(hidden.bfloat16().float()))  # input rounding only


def test_prefix_max_is_causal_and_sees_earlier_states():
    """V(s_t) of prefix_max depends on positions <= t only, and it learns a label that is
    a feature of an early position (invisible to the last state), which mlp cannot."""
    torch.manual_seed(0)
    head = ValueHead(16, "prefix_max", 8)
    torch.nn.init.normal_(head.out_proj.weight)
    h = torch.randn(2, 6, 16)
    later = h.clone()
    later[:, 4:] = torch.randn(2, 2, 16)
    torch.testing.assert_close(head(h)[:, :4], head(later)[:, :4])
    assert not torch.allclose(head(h)[:, 4:], head(later)[:, 4:])

    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, 16, generator=g)
    bug = torch.rand(64, generator=g) < 0.5
    x[:, 1, 0] = torch.where(bug, 5.0, -5.0)  # the label shows at position 1 only
    x[:, -1] = x[0, -1]  # the same last state for every sample
    target = (~bug).float()[:, None].expand(-1, 8)
    final = {}
    for kind in ("mlp", "prefix_max"):
        torch.manual_seed(0)
        head = ValueHead(16, kind, 16)
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        for _ in range(150):
            loss = torch.nn.functional.mse_loss(head(x)[:, -1], target[:, -1])
            opt.zero_grad()
            loss.backward()
            opt.step()
        final[kind] = loss.item()
    assert final["prefix_max"] < 0.05 < final["mlp"]
