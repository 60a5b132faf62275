"""Weighting objects: uniform, TD error (REFERENCE §6), Rho-1 top-k selection."""

from __future__ import annotations

import math

import pytest
import torch

from weighted_mtp.weighting import (
    Rho1Weighting,
    TDErrorWeighting,
    UniformWeighting,
    WeightingInputs,
)
from weighted_mtp.weighting.base import StepInputs, token_to_head_weights
from weighted_mtp.weighting.rho1 import head_excess, kept_count, top_mask
from weighted_mtp.weighting.td import td_errors


def make_inputs(values=None, ref_ce=None) -> WeightingInputs:
    # one row: 2 prompt tokens, 3 response tokens, 1 pad; n = 2 heads
    labels = torch.tensor([[-100, -100, 7, 8, 9, -100]])
    targets = torch.full((1, 6, 2), -100)
    for k in range(2):
        targets[:, : 6 - k - 1, k] = labels[:, k + 1 :]
    return WeightingInputs(
        targets=targets,
        response_mask=labels != -100,
        reward=torch.tensor([1.0]),
        values=values,
        ref_ce=ref_ce,
    )


def test_uniform_is_the_valid_mask() -> None:
    inp = make_inputs()
    assert torch.equal(UniformWeighting().weights(inp), inp.valid.float())
    assert UniformWeighting().denominator(inp.valid) == inp.valid.sum()


def test_token_to_head_weights_shifts_by_head() -> None:
    w = torch.arange(5.0)[None]
    out = token_to_head_weights(w, 3)
    assert out[0, :, 0].tolist() == [1, 2, 3, 4, 0]
    assert out[0, :, 1].tolist() == [2, 3, 4, 0, 0]
    assert out[0, :, 2].tolist() == [3, 4, 0, 0, 0]


def test_td_errors_follow_the_formula() -> None:
    v = torch.tensor([[0.0, 0.2, 0.5, 0.4, 0.9, 0.0]])  # V(s0)=0.2 at pos 1 (last prompt)
    inp = make_inputs(values=v)
    delta = td_errors(v, inp.reward, inp.response_mask, gamma=0.9)
    # x1 at pos 2: 0.9*V(s1) - V(s0); x2 at pos 3: 0.9*V(s2) - V(s1); x3 (last): R - V(s2)
    expected = [0, 0, 0.9 * 0.5 - 0.2, 0.9 * 0.4 - 0.5, 1.0 - 0.4, 0]
    assert delta[0].tolist() == pytest.approx(expected)


def test_td_weights_clip_and_constant() -> None:
    v = torch.tensor([[0.0, 0.2, 0.5, 0.4, 0.9, 0.0]], requires_grad=True)
    inp = make_inputs(values=v)
    weighting = TDErrorWeighting(beta=0.5, clip_min=0.9, clip_max=1.2, gamma=1.0)
    w = weighting.weights(inp)
    assert not w.requires_grad
    raw = [math.exp((0.5 - 0.2) / 0.5), math.exp((0.4 - 0.5) / 0.5), math.exp((1 - 0.4) / 0.5)]
    clipped = [min(max(r, 0.9), 1.2) for r in raw]
    # head 0 at position t weights token t+1: tokens at 2, 3, 4 -> positions 1, 2, 3
    assert w[0, 1:4, 0].tolist() == pytest.approx(clipped)
    assert w[0, 0, 0] == 0 and w[0, 4:, 0].sum() == 0  # prompt target / no target
    assert w[0, 0:3, 1].tolist() == pytest.approx(clipped)
    stats = weighting.stats()
    assert stats["weight/clipped_max"] == pytest.approx(2 / 3)
    assert stats["weight/clipped_min"] == pytest.approx(1 / 3)
    assert stats["weight/max"] == pytest.approx(1.2)


def test_td_large_beta_gives_uniform() -> None:
    v = torch.rand(1, 6)
    inp = make_inputs(values=v)
    w = TDErrorWeighting(beta=1e9, clip_min=0.1, clip_max=5.0).weights(inp)
    assert torch.allclose(w, inp.valid.float())


def test_top_mask_keeps_the_highest_valid_entries() -> None:
    excess = torch.tensor([[5.0, 1.0, 3.0, 2.0, 9.0]])
    valid = torch.tensor([[True, True, True, True, False]])
    assert top_mask(excess, valid, 2).tolist() == [[True, False, True, False, False]]
    assert top_mask(excess, valid, 4).tolist() == valid.tolist()
    assert top_mask(excess, valid, 0).sum() == 0
    ties = top_mask(torch.ones(1, 4), torch.ones(1, 4, dtype=torch.bool), 2)
    assert ties.tolist() == [[True, True, False, False]]  # earlier entries win ties


@pytest.mark.parametrize(
    ("n", "k", "kept"),
    [
        (100, 0.6, 60),
        (50, 0.3, 15),
        (10, 0.1, 1),
        (10, 0.7, 7),
        (3, 0.5, 2),
        (7, 1.0, 7),
        (0, 0.6, 0),
        (1, 0.01, 1),
        (1000, 0.001, 1),
        (999, 0.333, 333),
    ],
)
def test_kept_count_is_exact_ceil(n: int, k: float, kept: int) -> None:
    assert kept_count(n, k) == kept
    assert kept_count(torch.tensor(n), k) == kept


def step_parts(seed: int, shapes: list[tuple[int, int]], n: int = 2) -> list[StepInputs]:
    """Random micro-batches: response tokens after a 2-token prompt, varying lengths."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for b, s in shapes:
        labels = torch.full((b, s), -100)
        for r in range(b):
            end = int(torch.randint(3, s + 1, (1,), generator=g))
            labels[r, 2:end] = 5
        targets = torch.full((b, s, n), -100)
        for k in range(n):
            targets[:, : s - k - 1, k] = labels[:, k + 1 :]
        valid = targets != -100
        inputs = WeightingInputs(
            targets=targets,
            response_mask=labels != -100,
            reward=torch.ones(b),
            ref_ce=torch.rand(b, s, generator=g) * (labels != -100),
        )
        parts.append(StepInputs(inputs, torch.rand(b, s, n, generator=g) * valid))
    return parts


def test_step_scope_keeps_ceil_k_of_the_whole_step_per_head() -> None:
    parts = step_parts(0, [(2, 9), (3, 7), (1, 12)])
    w = Rho1Weighting(k_percent=0.3).step_weights(parts)
    for k in range(2):
        n_valid = sum(int(p.inputs.valid[..., k].sum()) for p in parts)
        assert sum(int(x[..., k].sum()) for x in w) == kept_count(n_valid, 0.3)
        excess = torch.cat(
            [head_excess(p.head_ce, p.inputs.ref_ce)[..., k].flatten() for p in parts]
        )
        kept = torch.cat([x[..., k].flatten() for x in w]).bool()
        valid = torch.cat([p.inputs.valid[..., k].flatten() for p in parts])
        assert not (kept & ~valid).any()
        assert excess[kept].min() >= excess[valid & ~kept].max()  # the top ones, step-wide


def test_step_scope_does_not_depend_on_how_the_step_is_split() -> None:
    parts = step_parts(1, [(4, 10)])
    whole = Rho1Weighting(k_percent=0.4).step_weights(parts)[0]
    split = []
    for r in range(4):
        p = parts[0]
        row = slice(r, r + 1)
        inputs = WeightingInputs(
            targets=p.inputs.targets[row],
            response_mask=p.inputs.response_mask[row],
            reward=p.inputs.reward[row],
            ref_ce=p.inputs.ref_ce[row],
        )
        split.append(StepInputs(inputs, p.head_ce[row]))
    assert torch.equal(torch.cat(Rho1Weighting(k_percent=0.4).step_weights(split)), whole)
    # per micro-batch, each quarter keeps its own top 40%: a different set
    per_micro = Rho1Weighting(k_percent=0.4, scope="micro_batch")
    total = sum(per_micro.denominator(p.inputs.valid) for p in split)
    assert total >= whole.sum()


def test_rho1_uses_the_reference_ce_of_each_heads_target() -> None:
    ref = torch.tensor([[0.0, 0.0, 1.0, 5.0, 0.0, 0.0]])  # CE_ref of tokens at pos 2, 3, 4
    inp = make_inputs(ref_ce=ref)
    weighting = Rho1Weighting(k_percent=0.33, scope="micro_batch")
    fn = weighting.weights(inp)
    ce = torch.full((1, 6), 2.0)
    w0 = fn(0, ce)  # head 0 targets tokens at 2, 3, 4: excess 1, -3, 2 -> keep token 4
    assert w0[0].tolist() == [0, 0, 0, 1, 0, 0]
    w1 = fn(1, ce)  # head 1 targets tokens 3, 4 from positions 1, 2 -> excess -3, 2
    assert w1[0].tolist() == [0, 0, 1, 0, 0, 0]
    assert weighting.denominator(inp.valid) == 1 + 1


def test_rho1_full_k_is_uniform() -> None:
    inp = make_inputs(ref_ce=torch.rand(1, 6))
    weighting = Rho1Weighting(k_percent=1.0, scope="micro_batch")
    fn = weighting.weights(inp)
    for k in range(2):
        assert torch.equal(fn(k, torch.rand(1, 6)), inp.valid[..., k].float())
    assert weighting.denominator(inp.valid) == inp.valid.sum()


def test_a_bad_argument_is_a_user_error_naming_its_config_address() -> None:
    from weighted_mtp.errors import UserError
    from weighted_mtp.weighting import TDErrorWeighting

    with pytest.raises(UserError, match=r"weighting.beta = -1.0: must be > 0 .*set training.beta"):
        TDErrorWeighting(beta=-1.0, clip_min=0.1, clip_max=5.0)
    with pytest.raises(UserError, match=r"weighting.clip_min = 5.0: must be < clip_max \(1.0\)"):
        TDErrorWeighting(beta=1.0, clip_min=5.0, clip_max=1.0)
    with pytest.raises(UserError, match=r"weighting.k_percent = 0.0: must be in \(0, 1\]"):
        Rho1Weighting(k_percent=0.0)
