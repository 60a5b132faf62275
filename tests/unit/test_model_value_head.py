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
    ],
)
def test_shapes_and_sizes(kind, hidden, n_params):
    head = ValueHead(32, kind, hidden)
    assert sum(p.numel() for p in head.parameters()) == n_params
    v = head(torch.randn(3, 7, 32, dtype=torch.bfloat16))
    assert v.shape == (3, 7) and v.dtype == torch.float32
    assert (v == 0).all()  # zero-initialised output: V = 0 before training


@pytest.mark.parametrize("kind", ["linear", "mlp"])
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


@pytest.mark.parametrize("kind", ["linear", "mlp"])
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
