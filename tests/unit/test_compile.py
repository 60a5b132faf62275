"""training.compile (regional torch.compile of every block) and training.loss_chunk_size.

Compiled == eager for the loss, the per-token CE and weights the weightings read, and every
gradient: weights none / a tensor / a per-head function (Rho-1 like), with right padding,
with activation checkpointing. Most cases use the ``aot_eager`` backend (the internal knob
``COMPILE_BACKEND``: the same dynamo / AOT-autograd graphs, no code generation); one runs
the default inductor backend (C++ code generation, about a minute on a small CPU).
"""

from __future__ import annotations

import copy
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.utils import counters

from tests.helpers.models import tiny_mtp
from weighted_mtp.config.loader import compose
from weighted_mtp.config.validate import ConfigValidationError, validate
from weighted_mtp.models import mtp
from weighted_mtp.models.mtp import MTPTransformer
from weighted_mtp.training import compile as speed
from weighted_mtp.training.losses import backward_trunk, mtp_loss, mtp_targets
from weighted_mtp.training.task import Task


@pytest.fixture(autouse=True)
def _fresh_dynamo(monkeypatch):
    monkeypatch.setattr(mtp, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _batch(s: int = 11, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 61, (3, s), generator=g)
    mask = torch.ones(3, s, dtype=torch.long)
    mask[1, 7:] = 0  # right padding: the blocks' unpadded path (ctx.rows)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    return ids, mask, labels


def _weight_fn(k: int, ce: torch.Tensor) -> torch.Tensor:
    return (ce > ce[ce > 0].median()).float() * (1.0 + k)


def _step(model: MTPTransformer, ids, mask, labels, weights, chunk_size: int = 1024):
    model.zero_grad(set_to_none=True)
    h = model.trunk(ids, mask)
    targets = mtp_targets(labels, model.n_future_tokens)
    out = mtp_loss(
        model, h, mask, targets, weights, chunk_size=chunk_size,
        return_token_ce=True, return_weights=True,
    )  # fmt: skip
    backward_trunk(h, out)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out, grads


def _assert_same(a, b) -> None:
    (oa, ga), (ob, gb) = a, b
    torch.testing.assert_close(oa.loss, ob.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(oa.head_ce, ob.head_ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(oa.token_ce, ob.token_ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(oa.token_weight, ob.token_weight)
    assert ga.keys() == gb.keys()
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("kind", ["none", "tensor", "fn"])
@pytest.mark.parametrize("ac", [False, True])
def test_compiled_equals_eager(kind, ac) -> None:
    eager = tiny_mtp()
    eager.set_activation_checkpointing(ac)
    compiled = copy.deepcopy(eager)
    compiled.set_compile(True)
    ids, mask, labels = _batch()
    weights = {
        "none": None,
        "tensor": torch.rand(3, 11, 3, generator=torch.Generator().manual_seed(2)) * 2,
        "fn": _weight_fn,
    }[kind]
    _assert_same(
        _step(compiled, ids, mask, labels, weights), _step(eager, ids, mask, labels, weights)
    )
    assert counters["stats"]["unique_graphs"] >= 1  # the blocks did run compiled
    assert all(b.compiled_forward is None for b in [*eager.layers, *eager.extra_heads])


def test_a_new_sequence_length_and_no_grad_reuse_the_compiled_blocks() -> None:
    eager, compiled = tiny_mtp(), tiny_mtp()
    compiled.set_compile(True)
    for s in (11, 9, 13):
        ids, mask, labels = _batch(s, seed=s)
        _assert_same(
            _step(compiled, ids, mask, labels, None), _step(eager, ids, mask, labels, None)
        )
    with torch.no_grad():  # validation, the step-wide pass
        torch.testing.assert_close(compiled(ids, mask), eager(ids, mask), rtol=1e-5, atol=1e-5)


def test_set_compile_off_and_kv_cache_decoding_stay_eager() -> None:
    m = tiny_mtp()
    m.set_compile(True)
    assert m.compiled and all(b.compiled_forward is not None for b in m.head_blocks())
    ids = torch.randint(3, 61, (1, 6))
    caches = m.new_kv_caches(1, 8)
    with torch.no_grad():
        m.trunk(ids, caches=caches)  # a cache: the eager path (no graph)
    assert counters["stats"]["unique_graphs"] == 0
    m.set_compile(False)
    assert not m.compiled and all(b.compiled_forward is None for b in m.head_blocks())


def test_apply_sets_compile_and_chunk_size() -> None:
    m, task = tiny_mtp(), Task(train_policy=True)
    speed.apply(SimpleNamespace(compile=True, loss_chunk_size=16), m, task)
    assert m.compiled and task.chunk_size == 16
    speed.apply(SimpleNamespace(compile=False, loss_chunk_size=1024), m, task)
    assert not m.compiled and task.chunk_size == 1024
    speed.apply(SimpleNamespace(compile=True, loss_chunk_size=8), m, task, compile_blocks=False)
    assert not m.compiled and task.chunk_size == 8  # the memory plan: chunk size only


def test_config_fields(path_overrides) -> None:
    cfg = compose(path_overrides)
    assert cfg.training.compile is False and cfg.training.loss_chunk_size == 1024
    with pytest.raises(ConfigValidationError) as info:
        validate(compose([*path_overrides, "training.loss_chunk_size=0"]), check_paths=False)
    assert "training.loss_chunk_size" in str(info.value) and "> 0" in str(info.value)


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor on CPU needs a C++ compiler")
def test_inductor_backend_equals_eager(monkeypatch) -> None:
    """The default backend, once, on the smallest model (2 blocks, 1 head, no padding:
    one forward and one backward graph)."""
    monkeypatch.setattr(mtp, "COMPILE_BACKEND", "inductor")
    eager = tiny_mtp(n_layers=2, n_future_tokens=1)
    compiled = copy.deepcopy(eager)
    compiled.set_compile(True)
    ids = torch.randint(3, 61, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    _assert_same(_step(compiled, ids, mask, ids, None), _step(eager, ids, mask, ids, None))
    assert counters["stats"]["unique_graphs"] >= 1


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
@pytest.mark.parametrize("kind", ["none", "tensor", "fn"])
def test_in_place_ce_equals_cross_entropy(monkeypatch, kind, amp) -> None:
    """The loss chunk's in-place CE (losses.FUSED_CE, one [chunk, V] buffer) == the
    autograd F.cross_entropy: loss, per-token CE and weights, every gradient."""
    from weighted_mtp.training import losses

    ids, mask, labels = _batch()
    weights = {
        "none": None,
        "tensor": torch.rand(3, 11, 3, generator=torch.Generator().manual_seed(2)) * 2,
        "fn": _weight_fn,
    }[kind]
    runs = []
    for fused in (False, True):
        monkeypatch.setattr(losses, "FUSED_CE", fused)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
            runs.append(_step(tiny_mtp(), ids, mask, labels, weights, chunk_size=5))
    _assert_same(runs[1], runs[0])
