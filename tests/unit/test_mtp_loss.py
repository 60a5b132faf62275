"""mtp_loss (head by head, chunked) == naive_mtp_loss: values and gradients."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.helpers.models import tiny_mtp
from weighted_mtp.models.mtp import MTPTransformer
from weighted_mtp.training.losses import (
    backward_trunk,
    mtp_loss,
    mtp_targets,
    naive_mtp_loss,
)


def _model(seed: int = 0) -> MTPTransformer:
    return tiny_mtp(seed, vocab_size=97, rope_theta=10000.0)


def _batch(b: int = 3, s: int = 11, v: int = 97, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, v, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    mask[2, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100  # prompt
    return ids, mask, labels


def _grads(model: MTPTransformer) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(model, ids, mask, targets, weights, naive: bool, **kw):
    model.zero_grad(set_to_none=True)
    h = model.trunk(ids, mask)
    if naive:
        out = naive_mtp_loss(model, h, mask, targets, weights, **kw)
        out.loss.backward()
    else:
        out = mtp_loss(model, h, mask, targets, weights, **kw)
        backward_trunk(h, out)
    return out, _grads(model)


def test_mtp_targets_shift():
    labels = torch.tensor([[-100, 5, 6, 7, -100]])
    t = mtp_targets(labels, 3)
    assert t[0, :, 0].tolist() == [5, 6, 7, -100, -100]
    assert t[0, :, 1].tolist() == [6, 7, -100, -100, -100]
    assert t[0, :, 2].tolist() == [7, -100, -100, -100, -100]


def _weight_fn(k: int, ce: torch.Tensor) -> torch.Tensor:
    # Rho-1 like: keep tokens whose CE is above the head's median
    keep = ce > ce[ce > 0].median()
    return keep.float() * (1.0 + k)


@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
@pytest.mark.parametrize("kind", ["none", "tensor", "fn"])
@pytest.mark.parametrize("denominator", [None, 7.5, "tensor"])
def test_equivalence_with_naive(chunk_size, kind, denominator):
    model = _model()
    ids, mask, labels = _batch()
    targets = mtp_targets(labels, model.n_future_tokens)
    weights = {
        "none": None,
        "tensor": torch.rand(targets.shape, generator=torch.Generator().manual_seed(3)) * 2,
        "fn": _weight_fn,
    }[kind]
    den = torch.tensor(13.0) if denominator == "tensor" else denominator
    ref, g_ref = _run(
        model, ids, mask, targets, weights, True, denominator=den, return_token_ce=True
    )
    out, g = _run(
        model,
        ids,
        mask,
        targets,
        weights,
        False,
        denominator=den,
        chunk_size=chunk_size,
        return_token_ce=True,
    )
    assert out.n_valid == ref.n_valid == int((targets != -100).sum())
    torch.testing.assert_close(out.loss, ref.loss.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.head_loss, ref.head_loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.head_ce, ref.head_ce, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.token_ce, ref.token_ce, atol=1e-5, rtol=0)
    assert g.keys() == g_ref.keys() and len(g) == len(list(model.parameters()))
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_default_denominator_is_mean_ce_and_no_backward_mode():
    model = _model()
    ids, mask, labels = _batch()
    targets = mtp_targets(labels, model.n_future_tokens)
    h = model.trunk(ids, mask)
    out = mtp_loss(model, h, mask, targets, backward=False, return_token_ce=True)
    assert out.trunk_grad is None and not out.loss.requires_grad
    assert all(p.grad is None for p in model.parameters())
    valid = targets != -100
    torch.testing.assert_close(out.loss, out.token_ce[valid].mean(), atol=1e-6, rtol=0)
    assert (out.token_ce[~valid] == 0).all()
    # uniform weights of 1 == no weights
    ones = mtp_loss(model, h, mask, targets, torch.ones(targets.shape), backward=False)
    torch.testing.assert_close(ones.loss, out.loss)


def test_token_exact_accumulation():
    """Batch of 3 == three batches of 1 with the global denominator (grad accumulation)."""
    model = _model()
    ids, mask, labels = _batch()
    targets = mtp_targets(labels, model.n_future_tokens)
    full, g_full = _run(model, ids, mask, targets, None, False)
    den = full.n_valid
    model.zero_grad(set_to_none=True)
    total = 0.0
    for i in range(3):
        h = model.trunk(ids[i : i + 1], mask[i : i + 1])
        out = mtp_loss(model, h, mask[i : i + 1], targets[i : i + 1], denominator=den)
        backward_trunk(h, out)
        total += out.loss.item()
    assert abs(total - full.loss.item()) < 1e-5
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, g_full[name], atol=1e-5, rtol=1e-4)


def test_no_valid_targets_gives_zero_loss():
    model = _model()
    ids, mask, _ = _batch()
    targets = torch.full((*ids.shape, model.n_future_tokens), -100)
    h = model.trunk(ids, mask)
    out = mtp_loss(model, h, mask, targets)
    assert out.loss.item() == 0.0 and out.n_valid == 0
    assert (out.trunk_grad == 0).all()


class _LiveCasts(TorchDispatchMode):
    """Weak references to every bf16 copy of an activation [rows <= max_rows, dim] (not of
    a parameter: autocast caches those on purpose)."""

    def __init__(self, model: MTPTransformer, max_rows: int) -> None:
        super().__init__()
        self.dim, self.max_rows, self.refs = model.args.dim, max_rows, []
        self.params = {p.data_ptr() for p in model.parameters()}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (
            func is torch.ops.aten._to_copy.default
            and out.dtype == torch.bfloat16
            and out.ndim == 2
            and out.shape[1] == self.dim
            and out.shape[0] <= self.max_rows
            and args[0].data_ptr() not in self.params
        ):
            self.refs.append(weakref.ref(out))
        return out

    def alive(self) -> int:
        gc.collect()
        return sum(r() is not None for r in self.refs)


@pytest.mark.parametrize("chunk_size", [2, 5, 30])
def test_autocast_keeps_no_chunk_input(chunk_size: int) -> None:
    """Under autocast, each logits chunk's input (a leaf that requires grad) is cast to
    bf16; no such copy may outlive its chunk, whatever the number of chunks."""
    model = _model()
    ids, mask, labels = _batch()
    targets = mtp_targets(labels, model.n_future_tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.trunk(ids, mask)
        with _LiveCasts(model, chunk_size) as casts:
            out = mtp_loss(model, h, mask, targets, chunk_size=chunk_size)
            alive = casts.alive()  # still inside the autocast region of the micro-step
        backward_trunk(h, out)
    n_chunks = sum(-(-int(v) // chunk_size) for v in out.head_valid)
    assert len(casts.refs) >= n_chunks  # each chunk's input was cast ...
    assert alive == 0  # ... and none stays cached until the region ends
