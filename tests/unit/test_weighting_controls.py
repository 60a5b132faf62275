"""The controls (rho1_control: a random k% of the tokens) and the TD weighting's knobs
(GAE lambda, per-step advantage normalisation), each shown to change the weights and
nothing else."""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_weighting import step_parts
from weighted_mtp.weighting import RandomKeepWeighting, Rho1Weighting, TDErrorWeighting
from weighted_mtp.weighting.base import StepInputs, WeightingInputs
from weighted_mtp.weighting.rho1 import kept_count
from weighted_mtp.weighting.td import gae_advantages, td_errors


def _rows(parts: list[StepInputs], rows: slice) -> list[StepInputs]:
    out = []
    for p in parts:
        i = p.inputs
        inputs = WeightingInputs(
            targets=i.targets[rows],
            response_mask=i.response_mask[rows],
            reward=i.reward[rows],
            values=None if i.values is None else i.values[rows],
            ref_ce=None if i.ref_ce is None else i.ref_ce[rows],
            record_ids=None if i.record_ids is None else i.record_ids[rows],
        )
        out.append(StepInputs(inputs, None if p.head_ce is None else p.head_ce[rows]))
    return out


def test_random_keep_keeps_rho1s_count_per_head_and_step() -> None:
    parts = step_parts(0, [(2, 9), (3, 7), (1, 12)])
    torch.manual_seed(0)
    control = RandomKeepWeighting(k_percent=0.3).step_weights(parts)
    rho1 = Rho1Weighting(k_percent=0.3).step_weights(parts)
    for k in range(2):
        n_valid = sum(int(p.inputs.valid[..., k].sum()) for p in parts)
        assert sum(int(x[..., k].sum()) for x in control) == kept_count(n_valid, 0.3)
        assert sum(int(x[..., k].sum()) for x in control) == sum(int(x[..., k].sum()) for x in rho1)
    for p, w in zip(parts, control, strict=True):
        assert not (w.bool() & ~p.inputs.valid).any()
    kept_c = torch.cat([w.flatten() for w in control])
    kept_r = torch.cat([w.flatten() for w in rho1])
    assert not torch.equal(kept_c, kept_r)  # other tokens than the top excess losses


def test_random_keep_needs_no_reference_nor_ce_and_follows_the_seed() -> None:
    w = RandomKeepWeighting(k_percent=0.5)
    assert not w.needs_reference and not w.needs_step_ce and w.needs_step_pass
    parts = [StepInputs(p.inputs) for p in step_parts(2, [(4, 10)])]  # no CE, no ref needed
    parts[0].inputs.record_ids = torch.tensor([7, 3, 11, 5])

    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return w.step_weights(parts)[0]

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    # the same tokens however the step is split into micro-batches, in any order
    torch.manual_seed(1)
    split = w.step_weights(_rows(parts, slice(2, 4)) + _rows(parts, slice(0, 2)))
    assert torch.equal(torch.cat([split[1], split[0]]), draw(1))


def test_uniform_scores_look_uniform_and_independent() -> None:
    from weighted_mtp.weighting.rho1 import uniform_scores

    x = uniform_scores(12345, torch.arange(2000), (2000, 16), 0)
    assert x.min() >= 0 and x.max() < 1
    assert abs(x.mean().item() - 0.5) < 0.01
    for col in x.T:  # every position: about uniform
        assert abs((col < 0.3).double().mean().item() - 0.3) < 0.05
    other = uniform_scores(12345, torch.arange(2000), (2000, 16), 1)  # another head
    assert abs(torch.corrcoef(torch.stack([x.flatten(), other.flatten()]))[0, 1]) < 0.02
    assert not torch.equal(x, uniform_scores(54321, torch.arange(2000), (2000, 16), 0))


def test_random_keep_micro_batch_scope_keeps_ceil_k_per_head() -> None:
    parts = step_parts(3, [(3, 9)])
    fn = RandomKeepWeighting(k_percent=0.6, scope="micro_batch").weights(parts[0].inputs)
    valid = parts[0].inputs.valid
    for k in range(2):
        keep = fn(k, torch.zeros(valid.shape[:2]))
        assert int(keep.sum()) == kept_count(valid[..., k].sum(), 0.6)
        assert not (keep.bool() & ~valid[..., k]).any()


def td_inputs() -> WeightingInputs:
    # two rows, 1 prompt token then 4 and 3 response tokens; n = 2 heads
    labels = torch.tensor([[-100, 5, 6, 7, 8], [-100, 5, 6, 7, -100]])
    targets = torch.full((2, 5, 2), -100)
    for k in range(2):
        targets[:, : 5 - k - 1, k] = labels[:, k + 1 :]
    values = torch.tensor([[0.6, 0.5, 0.7, 0.4, 0.0], [0.3, 0.2, 0.1, 0.3, 0.0]])
    return WeightingInputs(
        targets=targets,
        response_mask=labels != -100,
        reward=torch.tensor([1.0, 0.0]),
        values=values,
    )


def test_gae_lambda_0_is_the_td_error_and_1_the_monte_carlo_advantage() -> None:
    inp = td_inputs()
    delta = td_errors(inp.values, inp.reward, inp.response_mask, 1.0)
    assert torch.equal(gae_advantages(delta, inp.response_mask, 1.0, 0.0), delta)
    mc = gae_advantages(delta, inp.response_mask, 1.0, 1.0)
    # with gamma = 1 the TD errors telescope: A_j = R - V(s_{j-1}), V(s_{j-1}) one to the left
    v, mask = inp.values, inp.response_mask
    expected = torch.zeros_like(v)
    expected[:, 1:] = inp.reward[:, None] - v[:, :-1]
    assert torch.allclose(mc, torch.where(mask, expected, torch.zeros_like(v)), atol=1e-6)


def test_gae_matches_the_backward_recursion() -> None:
    inp = td_inputs()
    gamma, lam = 0.9, 0.7
    delta = td_errors(inp.values, inp.reward, inp.response_mask, gamma)
    adv = gae_advantages(delta, inp.response_mask, gamma, lam)
    ref = torch.zeros_like(delta)
    for b in range(2):
        run = 0.0
        for t in reversed(range(5)):
            run = float(delta[b, t]) + gamma * lam * run if inp.response_mask[b, t] else 0.0
            ref[b, t] = run
    assert torch.allclose(adv, ref, atol=1e-6)


def test_lambda_changes_the_weights() -> None:
    inp = td_inputs()
    plain = TDErrorWeighting(beta=0.5, clip_min=0.01, clip_max=100.0).weights(inp)
    gae = TDErrorWeighting(beta=0.5, clip_min=0.01, clip_max=100.0, lam=1.0).weights(inp)
    assert not torch.allclose(plain, gae)
    # the incorrect row (reward 0) gets weight < 1 on every target under Monte-Carlo A
    assert (gae[1][inp.valid[1]] < 1).all()


def test_step_normalisation_standardises_the_whole_step() -> None:
    inp = td_inputs()
    w = TDErrorWeighting(beta=1.0, clip_min=1e-6, clip_max=1e6, normalize="step")
    assert w.needs_step_pass and w.needs_values and not w.needs_step_ce
    whole = w.step_weights([StepInputs(inp)])[0]
    delta = td_errors(inp.values, inp.reward, inp.response_mask, 1.0)
    z = delta[inp.response_mask]
    z = (z - z.mean()) / z.std(unbiased=False)
    token = torch.zeros_like(delta)
    token[inp.response_mask] = torch.exp(z)
    # head 0's weight of the target at t is the weight of token t + 1
    assert torch.allclose(
        whole[:, :-1, 0][inp.valid[:, :-1, 0]], token[:, 1:][inp.valid[:, :-1, 0]]
    )
    # one micro-batch per row gives the same weights (the statistics span the step)
    parts = _rows([StepInputs(inp)], slice(0, 1)) + _rows([StepInputs(inp)], slice(1, 2))
    assert torch.allclose(torch.cat(w.step_weights(parts)), whole, atol=1e-6)
    plain = TDErrorWeighting(beta=1.0, clip_min=1e-6, clip_max=1e6).weights(inp)
    assert not torch.allclose(plain, whole)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"lam": 1.5}, "weighting.lam"), ({"normalize": "batch"}, "weighting.normalize")],
)
def test_bad_knobs_name_their_field(kwargs: dict, field: str) -> None:
    from weighted_mtp.errors import UserError

    with pytest.raises(UserError, match=field):
        TDErrorWeighting(beta=1.0, clip_min=0.1, clip_max=5.0, **kwargs)
