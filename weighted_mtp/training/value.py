"""Value-head targets and losses (critic and verifiable stages), as pure functions.

States: s_0 = the prompt, s_j = prompt + x_1..x_j. V(s_j) is read at the position that
holds x_j (s_0 at the last prompt position). The value head is trained on s_0..s_{T-1},
the positions whose next token is a response token (``value_mask``); s_T is terminal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_TYPES = ("mse", "huber", "mae")


def value_mask(labels: Tensor) -> Tensor:
    """[B, S] bool: positions whose next token is a response token (s_0 .. s_{T-1})."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


def value_targets(
    values: Tensor, reward: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 1.0
) -> Tensor:
    """TD(lambda) return targets [B, S] for the states in ``mask`` (0 elsewhere).

    The only reward is the outcome R, received on the step into the terminal state s_T::

        G_{T-1} = R
        G_t     = gamma * ((1 - lam) * V(s_{t+1}) + lam * G_{t+1})      for t < T-1

    lam = 1 gives the Monte-Carlo return gamma^(T-1-t) * R (with gamma = 1: R at every
    state, the seed's rule); lam = 0 gives the one-step TD target gamma * V(s_{t+1}).
    ``values`` are used as constants.

    Computed in closed form, without a loop over positions: with the masked states of a
    row renumbered 0..T-1 and a = gamma * lam,
    ``G_i = a^(T-1-i) R + gamma (1 - lam) sum_{j>i} a^(j-1-i) V(s_j)`` (float64).
    """
    out = torch.zeros(values.shape, dtype=torch.float32, device=values.device)
    rows, cols = mask.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return out
    n_states = mask.sum(dim=1)  # T per row
    idx = (mask.cumsum(dim=1) - 1)[rows, cols]  # state number of each masked position
    width = int(n_states.max())
    i = torch.arange(width, device=values.device)
    a = torch.tensor(gamma * lam, dtype=torch.float64, device=values.device)
    g = a ** (n_states[:, None] - 1 - i[None, :]).clamp(min=0) * reward.double()[:, None]
    if lam != 1.0:
        v = values.new_zeros(values.shape[0], width, dtype=torch.float64)
        v[rows, idx] = values.detach().double()[rows, cols]
        e = i[None, :] - i[:, None] - 1  # [i, j] = j - 1 - i
        discount = torch.where(e >= 0, a ** e.clamp(min=0), torch.zeros((), dtype=a.dtype))
        g = g + gamma * (1 - lam) * (v @ discount.T)
    out[rows, cols] = g[rows, idx].float()
    return out


def value_loss(
    pred: Tensor, target: Tensor, mask: Tensor, loss_type: str, denominator: Tensor | float
) -> Tensor:
    """sum over ``mask`` of the per-state loss (mse | huber | mae) divided by ``denominator``."""
    pred, target = pred.float(), target.float()
    if loss_type == "mse":
        per = (pred - target) ** 2
    elif loss_type == "huber":
        per = F.huber_loss(pred, target, reduction="none", delta=1.0)
    elif loss_type == "mae":
        per = (pred - target).abs()
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    return (per * mask).sum() / denominator


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann-Whitney U, ties 1/2).

    NaN when only one class is present.
    """
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (n_pos * n_neg))


def last_state_values(values: Tensor, mask: Tensor) -> Tensor:
    """V at the last masked state of each row [B] (the state before the final token)."""
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, idx, torch.zeros_like(idx)).max(dim=1).values
    return values.gather(1, last[:, None]).squeeze(1)
