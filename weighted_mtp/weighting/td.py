"""TD-error weighting (verifiable stage): w_j = clip(exp(delta_j / beta), clip_min, clip_max).

With response tokens x_1..x_T, states s_j = prompt + x_1..x_j and outcome reward R::

    delta_j = gamma * V(s_j) - V(s_{j-1})   for j < T
    delta_T = R - V(s_{T-1})

Every head's CE for target token j is multiplied by w_j; prompt tokens get weight 0
(they are not targets). The weights are constants (computed from detached values).
This is AWR/IQL's exponential advantage weighting, per token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from weighted_mtp.weighting.base import (
    Weighting,
    WeightingInputs,
    bad_argument,
    masked_stats,
    token_to_head_weights,
)


def td_errors(values: Tensor, reward: Tensor, response_mask: Tensor, gamma: float) -> Tensor:
    """delta at each response token position [B, S] (0 elsewhere).

    values: [B, S], V(s) at each position (the state after reading that position's token).
    reward: [B]. response_mask: [B, S] bool; the last true position per row is x_T.
    """
    b, s = values.shape
    prev = torch.zeros_like(values)
    prev[:, 1:] = values[:, :-1]  # V(s_{j-1}) sits one position to the left of x_j
    last = _last_true(response_mask)  # [B]
    is_last = torch.zeros_like(response_mask)
    rows = torch.arange(b, device=values.device)
    has = last >= 0
    is_last[rows[has], last[has]] = True
    next_value = torch.where(is_last, reward[:, None].to(values.dtype), gamma * values)
    return torch.where(response_mask, next_value - prev, torch.zeros_like(values))


def _last_true(mask: Tensor) -> Tensor:
    """Index of the last true element per row, -1 where none."""
    s = mask.shape[1]
    idx = torch.arange(s, device=mask.device).expand_as(mask)
    return torch.where(mask, idx, torch.full_like(idx, -1)).max(dim=1).values


class TDErrorWeighting(Weighting):
    needs_values = True

    config_fields = {
        "beta": "training.beta",
        "gamma": "training.gamma",
        "clip_min": "training.weight_clip_min",
        "clip_max": "training.weight_clip_max",
    }

    def __init__(self, beta: float, clip_min: float, clip_max: float, gamma: float = 1.0) -> None:
        if beta <= 0:
            raise bad_argument(self, "beta", beta, "must be > 0")
        if not clip_min < clip_max:
            raise bad_argument(self, "clip_min", clip_min, f"must be < clip_max ({clip_max})")
        self.beta, self.gamma = beta, gamma
        self.clip_min, self.clip_max = clip_min, clip_max
        self._stats: dict[str, float] = {}

    def weights(self, inputs: WeightingInputs) -> Tensor:
        assert inputs.values is not None, "TDErrorWeighting needs the value head's values"
        values = inputs.values.detach().float()
        delta = td_errors(values, inputs.reward.float(), inputs.response_mask, self.gamma)
        raw = torch.exp(delta / self.beta)
        w = raw.clamp(self.clip_min, self.clip_max)
        mask = inputs.response_mask
        self._stats = masked_stats(w, mask, "weight") | masked_stats(delta, mask, "td_error")
        n = mask.sum().clamp(min=1)
        self._stats["weight/clipped_min"] = ((raw < self.clip_min) & mask).sum().item() / n.item()
        self._stats["weight/clipped_max"] = ((raw > self.clip_max) & mask).sum().item() / n.item()
        token_w = torch.where(mask, w, torch.zeros_like(w))
        head_w = token_to_head_weights(token_w, inputs.targets.shape[-1])
        return head_w * inputs.valid

    def stats(self) -> dict[str, float]:
        return dict(self._stats)
