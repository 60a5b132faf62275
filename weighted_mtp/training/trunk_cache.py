"""Host-memory cache of a frozen policy's trunk outputs (``training.frozen_trunk_cache_mb``).

In the critic stage the policy is frozen and only the value head trains, so the trunk's
hidden states of a sequence are the same every time it is drawn: every epoch and every
validation pass recompute them. The cache keeps them, keyed by the sequence's tokens, up to
a byte budget; a batch whose rows are all cached is assembled from host memory without a
forward; the rows not cached run the trunk together (one forward) and are stored while the
budget lasts.
Values differ from a fresh forward only by the matmul rounding of another padding width.

Only for a trunk that nothing trains (a frozen policy without adapters) and that runs the
same on every call (no dropout); each rank keeps its own cache, so it needs a replicated
policy (a sharded one issues collectives in every forward, which a cache hit would skip).
"""

from __future__ import annotations

import torch
from torch import Tensor

from weighted_mtp.models.mtp import MTPTransformer


class TrunkCache:
    """Trunk outputs [len, D] per token sequence, in host memory, up to ``budget_mb``."""

    def __init__(self, budget_mb: float) -> None:
        self.budget = int(budget_mb * 2**20)
        self.used = 0
        self.rows: dict[bytes, Tensor] = {}
        self.hits = self.misses = 0  # sequences served from the cache / by a forward

    @torch.no_grad()
    def trunk(
        self, model: MTPTransformer, input_ids: Tensor, attention_mask: Tensor | None
    ) -> Tensor:
        """``model.trunk(input_ids, attention_mask)`` [B,S,D]: cached rows from host memory,
        the others from one forward over just them (stored while the budget lasts).
        Padding positions carry no meaning (losses mask them out)."""
        b, s = input_ids.shape
        lengths = attention_mask.sum(1).tolist() if attention_mask is not None else [s] * b
        ids = input_ids.cpu()
        keys = [ids[i, : int(n)].numpy().tobytes() for i, n in enumerate(lengths)]
        miss = [i for i, k in enumerate(keys) if k not in self.rows]
        self.hits += len(keys) - len(miss)
        self.misses += len(miss)
        fresh: dict[int, Tensor] = {}
        if miss:
            width = max(lengths[i] for i in miss)
            mask = attention_mask[miss, :width] if attention_mask is not None else None
            h = model.trunk(input_ids[miss, :width], mask)
            if len(miss) == b and width == s:
                self._store(keys, lengths, h)
                return h
            for j, i in enumerate(miss):
                fresh[i] = h[j, : lengths[i]]
            self._store([keys[i] for i in miss], [lengths[i] for i in miss], h)
        rows = [
            fresh[i] if i in fresh else self.rows[k].to(input_ids.device)
            for i, k in enumerate(keys)
        ]
        out = rows[0].new_zeros(b, s, rows[0].shape[-1])
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def _store(self, keys: list[bytes], lengths: list[int], h: Tensor) -> None:
        for j, (k, n) in enumerate(zip(keys, lengths, strict=True)):
            size = n * h.shape[-1] * h.element_size()
            if k not in self.rows and self.used + size <= self.budget:
                self.rows[k] = h[j, :n].to("cpu", copy=True)
                self.used += size

    def stats(self) -> dict[str, float]:
        """Sequences served from the cache (share of all) and host memory held (MB)."""
        total = self.hits + self.misses
        return {
            "trunk_cache_hit_rate": self.hits / max(total, 1),
            "trunk_cache_mb": self.used / 2**20,
        }
