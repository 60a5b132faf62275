"""TD-error weighting (verifiable stage): w_j = clip(exp(delta_j / beta), clip_min, clip_max).

With response tokens x_1..x_T, states s_j = prompt + x_1..x_j and outcome reward R::

    delta_j = gamma * V(s_j) - V(s_{j-1})   for j < T
    delta_T = R - V(s_{T-1})

Every head's CE for target token j is multiplied by w_j; prompt tokens get weight 0
(they are not targets). The weights are constants (computed from detached values).
This is AWR/IQL's exponential advantage weighting, per token.

Two knobs, both off by default (the seed's rule above):

- ``lam`` (``training.advantage_lambda``): GAE's lambda. The weight uses the advantage
  ``A_j = sum_{l >= 0} (gamma * lam)^l * delta_{j+l}`` (over the record's response
  tokens) instead of ``delta_j``: lam = 0 is the one-step TD error; lam = 1 with
  gamma = 1 is the Monte-Carlo advantage ``R - V(s_{j-1})``, which puts an incorrect
  record's whole -V(s_0) of signal on *every* token rather than spreading it.
- ``normalize`` (``training.advantage_norm``): ``step`` standardises the advantages over
  the response tokens of the whole optimizer step (every micro-batch and rank) to mean 0
  and standard deviation 1 before ``exp(A / beta)``, so beta sets the spread of the
  weights whatever the scale of the critic's values; the loop then computes the value
  head's values in a no-grad pass over the step before its backward passes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from weighted_mtp.distributed import DistInfo, all_reduce_sum
from weighted_mtp.weighting.base import (
    StepInputs,
    Weighting,
    WeightingInputs,
    bad_argument,
    masked_stats,
    token_to_head_weights,
)

ADVANTAGE_NORMS = ("none", "step")  # training.advantage_norm


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


def gae_advantages(delta: Tensor, response_mask: Tensor, gamma: float, lam: float) -> Tensor:
    """A_j = sum_{l >= 0} (gamma * lam)^l delta_{j+l} over each row's response tokens [B, S]
    (0 elsewhere); ``delta`` is :func:`td_errors` (0 outside the response). lam = 0
    returns ``delta``. Closed form (one [S, S] discount matrix, float64), no loop."""
    a = gamma * lam
    if a == 0.0:
        return delta
    s = delta.shape[1]
    i = torch.arange(s, device=delta.device)
    e = i[None, :] - i[:, None]  # [i, j] = j - i: delta_j counts for A_i when j >= i
    discount = torch.where(e >= 0, torch.tensor(a, dtype=torch.float64) ** e.clamp(min=0), 0.0)
    adv = delta.double() @ discount.T.to(delta.device)
    return torch.where(response_mask, adv, torch.zeros_like(adv)).to(delta.dtype)


def _last_true(mask: Tensor) -> Tensor:
    """Index of the last true element per row, -1 where none."""
    s = mask.shape[1]
    idx = torch.arange(s, device=mask.device).expand_as(mask)
    return torch.where(mask, idx, torch.full_like(idx, -1)).max(dim=1).values


class TDErrorWeighting(Weighting):
    needs_values = True
    needs_step_ce = False  # its step pass (advantage_norm=step) needs values only

    config_fields = {
        "beta": "training.beta",
        "gamma": "training.gamma",
        "clip_min": "training.weight_clip_min",
        "clip_max": "training.weight_clip_max",
        "lam": "training.advantage_lambda",
        "normalize": "training.advantage_norm",
    }

    def __init__(
        self,
        beta: float,
        clip_min: float,
        clip_max: float,
        gamma: float = 1.0,
        lam: float = 0.0,
        normalize: str = "none",
    ) -> None:
        if beta <= 0:
            raise bad_argument(self, "beta", beta, "must be > 0")
        if not clip_min < clip_max:
            raise bad_argument(self, "clip_min", clip_min, f"must be < clip_max ({clip_max})")
        if not 0 <= lam <= 1:
            raise bad_argument(self, "lam", lam, "must be in [0, 1]")
        if normalize not in ADVANTAGE_NORMS:
            raise bad_argument(self, "normalize", normalize, f"must be one of {ADVANTAGE_NORMS}")
        self.beta, self.gamma, self.lam = beta, gamma, lam
        self.clip_min, self.clip_max = clip_min, clip_max
        self.needs_step_pass = normalize == "step"
        self._stats: dict[str, float] = {}

    def advantages(self, inputs: WeightingInputs) -> Tensor:
        """A_j at each response token [B, S] (delta_j when lam = 0), float32."""
        assert inputs.values is not None, "TDErrorWeighting needs the value head's values"
        values = inputs.values.detach().float()
        delta = td_errors(values, inputs.reward.float(), inputs.response_mask, self.gamma)
        return gae_advantages(delta, inputs.response_mask, self.gamma, self.lam)

    def weights(self, inputs: WeightingInputs) -> Tensor:
        return self._weights(inputs, self.advantages(inputs))

    def step_weights(self, parts: list[StepInputs], info: DistInfo | None = None) -> list[Tensor]:
        """``normalize = step``: the advantages of every micro-batch of the step (all ranks,
        one all-reduce of their count, sum and sum of squares) standardised, then weighted."""
        adv = [self.advantages(p.inputs) for p in parts]
        masks = [p.inputs.response_mask for p in parts]
        moments = torch.stack(
            [
                torch.stack([m.sum().double(), a[m].double().sum(), (a[m].double() ** 2).sum()])
                for a, m in zip(adv, masks, strict=True)
            ]
        ).sum(dim=0)
        n, total, squares = all_reduce_sum(moments, info or DistInfo()).tolist()
        mean = total / max(n, 1)
        std = math.sqrt(max(squares / max(n, 1) - mean**2, 0.0))
        scale = 1.0 / max(std, 1e-6)
        out = [self._weights(p.inputs, (a - mean) * scale) for p, a in zip(parts, adv, strict=True)]
        self._stats |= {"advantage/step_mean": mean, "advantage/step_std": std}
        return out

    def _weights(self, inputs: WeightingInputs, adv: Tensor) -> Tensor:
        raw = torch.exp(adv / self.beta)
        w = raw.clamp(self.clip_min, self.clip_max)
        mask = inputs.response_mask
        self._stats = masked_stats(w, mask, "weight") | masked_stats(adv, mask, "td_error")
        n = mask.sum().clamp(min=1)
        self._stats["weight/clipped_min"] = ((raw < self.clip_min) & mask).sum().item() / n.item()
        self._stats["weight/clipped_max"] = ((raw > self.clip_max) & mask).sum().item() / n.item()
        token_w = torch.where(mask, w, torch.zeros_like(w))
        head_w = token_to_head_weights(token_w, inputs.targets.shape[-1])
        return head_w * inputs.valid

    def stats(self) -> dict[str, float]:
        return dict(self._stats)
