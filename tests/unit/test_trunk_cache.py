"""The frozen trunk's cache serves what a forward would, within its byte budget."""

from __future__ import annotations

import torch

from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
from weighted_mtp.training.trunk_cache import TrunkCache


def _model() -> MTPTransformer:
    torch.manual_seed(0)
    args = ModelArgs(dim=32, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=64, n_future_tokens=2)
    model = MTPTransformer(args)
    model.init_weights(torch.Generator().manual_seed(0))
    return model.eval().requires_grad_(False)


def _batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), True
    return ids, mask


def _check(cache: TrunkCache, model: MTPTransformer, rows: list[list[int]]) -> None:
    ids, mask = _batch(rows)
    got = cache.trunk(model, ids, mask)
    want = model.trunk(ids, mask)
    assert got.shape == want.shape
    for i, r in enumerate(rows):  # real tokens equal a fresh forward
        torch.testing.assert_close(got[i, : len(r)], want[i, : len(r)], atol=1e-6, rtol=1e-5)


def test_rows_come_from_the_cache_once_seen() -> None:
    model, cache = _model(), TrunkCache(budget_mb=1)
    a, b, c = [1, 5, 9, 3], [1, 7, 2], [1, 4, 4, 4, 4, 8]
    _check(cache, model, [a, b])
    assert (cache.hits, cache.misses) == (0, 2)
    _check(cache, model, [b, c, a])  # b and a cached; c runs alone
    assert (cache.hits, cache.misses) == (2, 3)
    calls = []
    model.layers[0].register_forward_hook(lambda *_: calls.append(1))
    cache.trunk(model, *_batch([c, a]))  # all cached: no forward
    assert not calls
    _check(cache, model, [c, a])
    assert cache.stats()["trunk_cache_hit_rate"] == 6 / 9
    assert cache.stats()["trunk_cache_mb"] == (4 + 3 + 6) * 32 * 4 / 2**20


def test_the_budget_bounds_what_is_kept() -> None:
    model = _model()
    cache = TrunkCache(budget_mb=5 * 32 * 4 / 2**20)  # room for 5 positions
    rows = [[1, 5, 9, 3], [1, 7, 2]]
    _check(cache, model, rows)
    assert cache.used == 4 * 32 * 4 and len(cache.rows) == 1
    _check(cache, model, rows)  # the row over budget is computed again, still right
    assert (cache.hits, cache.misses) == (1, 3)
    empty = TrunkCache(budget_mb=0)
    _check(empty, model, rows)
    assert not empty.rows
