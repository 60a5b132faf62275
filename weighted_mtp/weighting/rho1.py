"""Rho-1 weighting (Lin et al. 2024): train only on the tokens the policy has most to learn.

Excess loss of head k for target token j: ``CE_policy_k(j) - CE_ref(j)``, where CE_ref
is the frozen reference model's next-token loss of token j. For each head, the top
``k_percent`` of that head's valid targets in the micro-batch (highest excess loss
first; ``ceil(k_percent * n_valid)`` tokens) get weight 1, the rest 0, and the loss
averages CE over the kept tokens only (``denominator``).

``temperature`` T scales the reference's logits before its CE is taken:
``CE_ref(j) = -log softmax(ref_logits / T)[x_j]``. T = 1 is Rho-1's rule; T > 1 flattens
the reference (its CE moves towards log V, so the ranking leans on the policy's own loss),
T < 1 sharpens it (confident reference tokens count as easy). The reference losses are
computed with T applied and cached per T.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from weighted_mtp.weighting.base import HeadWeightFn, Weighting, WeightingInputs


def kept_count(n_valid: Tensor, k_percent: float) -> Tensor:
    """How many of ``n_valid`` targets Rho-1 keeps: ceil(k_percent * n_valid)."""
    return torch.ceil(n_valid.float() * k_percent - 1e-9).long()


def top_excess_mask(excess: Tensor, valid: Tensor, k_percent: float) -> Tensor:
    """Boolean mask [B, S] of the ceil(k * n_valid) valid entries with the highest excess."""
    n_keep = int(kept_count(valid.sum(), k_percent).item())
    excess = excess.float()
    scores = torch.where(valid, excess, torch.full_like(excess, -math.inf))
    keep = torch.zeros_like(valid)
    if n_keep > 0:
        idx = torch.topk(scores.flatten(), n_keep).indices
        keep.view(-1)[idx] = True
    return keep & valid


class Rho1Weighting(Weighting):
    needs_reference = True

    def __init__(self, k_percent: float, temperature: float = 1.0) -> None:
        if not 0 < k_percent <= 1 or temperature <= 0:
            raise ValueError("Rho1Weighting needs 0 < k_percent <= 1 and temperature > 0")
        self.k_percent, self.temperature = k_percent, temperature
        self._stats: dict[str, float] = {}

    def weights(self, inputs: WeightingInputs) -> HeadWeightFn:
        assert inputs.ref_ce is not None, "Rho1Weighting needs the reference's per-token CE"
        ref_ce, valid = inputs.ref_ce.float(), inputs.valid
        self._stats = {}

        def head_weights(k: int, ce: Tensor) -> Tensor:
            s = ce.shape[1]
            ref_k = torch.zeros_like(ref_ce)
            ref_k[:, : s - k - 1] = ref_ce[:, k + 1 :]  # CE_ref of the token head k predicts
            excess = ce.float() - ref_k
            keep = top_excess_mask(excess, valid[..., k], self.k_percent)
            if keep.any():
                self._stats[f"rho1/excess_kept_mean_head{k}"] = excess[keep].mean().item()
            return keep.to(ce.dtype)

        return head_weights

    def denominator(self, valid: Tensor) -> Tensor:
        return sum(kept_count(valid[..., k].sum(), self.k_percent) for k in range(valid.shape[-1]))

    def stats(self) -> dict[str, float]:
        return dict(self._stats)
