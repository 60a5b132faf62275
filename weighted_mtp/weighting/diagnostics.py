"""What a weighting did to one optimizer step, split by the records' labels.

Any weighting (and its control) is described by the same numbers, computed from the
weights the loss really used ([B, S, n], 0 at invalid targets), the policy's per-token CE
[B, S, n] and the records' reward [B] (correct: R > 0). Counts are over valid
(position, head) targets:

- ``token/incorrect_share``: share of the targets that belong to incorrect records;
- ``weight/incorrect_share``: share of the loss weight on them (equal to the above when
  the weighting ignores the label);
- ``weight/mean_{correct,incorrect}``: mean weight per target of each label;
- ``weight/kept_{correct,incorrect}``: share of each label's targets with weight > 0;
- ``weight/ce_dropped``: share of the policy's CE mass on targets with weight 0 (Rho-1
  and its control drop tokens; weightings that keep every token give 0);
- ``weight/q{10,50,90}_{correct,incorrect}``: weight quantiles per label.

Sums travel as one float64 vector (:func:`diagnostic_sums`), so micro-batches and ranks add
up exactly (the step's all-reduce carries them); quantiles are this rank's.
"""

from __future__ import annotations

import torch
from torch import Tensor

SUMS = (
    "tokens_correct",
    "tokens_incorrect",
    "weight_correct",
    "weight_incorrect",
    "kept_correct",
    "kept_incorrect",
    "ce",
    "ce_dropped",
)
QUANTILES = (0.1, 0.5, 0.9)


def _labels(reward: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    correct = (reward > 0)[:, None, None].expand_as(valid)
    return valid & correct, valid & ~correct


def diagnostic_sums(weights: Tensor, ce: Tensor, valid: Tensor, reward: Tensor) -> Tensor:
    """The :data:`SUMS` of one micro-batch, float64 [len(SUMS)] on the CPU.

    weights, ce: [B, S, n]; valid: [B, S, n] bool; reward: [B]."""
    w, ce = weights.double(), ce.double()
    cor, inc = _labels(reward, valid)
    dropped = valid & (weights <= 0)
    vals = [
        cor.sum(),
        inc.sum(),
        w[cor].sum(),
        w[inc].sum(),
        (cor & (weights > 0)).sum(),
        (inc & (weights > 0)).sum(),
        ce[valid].sum(),
        ce[dropped].sum(),
    ]
    return torch.stack([v.double() for v in vals]).cpu()


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def diagnostic_metrics(sums: Tensor | list[float]) -> dict[str, float]:
    """The shares and means of the module docstring from summed :data:`SUMS`."""
    s = dict(zip(SUMS, [float(v) for v in sums], strict=True))
    tokens = s["tokens_correct"] + s["tokens_incorrect"]
    weight = s["weight_correct"] + s["weight_incorrect"]
    out = {
        "token/incorrect_share": _ratio(s["tokens_incorrect"], tokens),
        "weight/incorrect_share": _ratio(s["weight_incorrect"], weight),
        "weight/ce_dropped": _ratio(s["ce_dropped"], s["ce"]),
    }
    for label in ("correct", "incorrect"):
        n = s[f"tokens_{label}"]
        out[f"weight/mean_{label}"] = _ratio(s[f"weight_{label}"], n)
        out[f"weight/kept_{label}"] = _ratio(s[f"kept_{label}"], n)
    return {k: v for k, v in out.items() if v == v}  # a label absent from the step: no entry


def label_weights(weights: Tensor, valid: Tensor, reward: Tensor) -> dict[str, Tensor]:
    """The weights of each label's valid targets (flat, float32, CPU), for quantiles."""
    cor, inc = _labels(reward, valid)
    return {"correct": weights[cor].float().cpu(), "incorrect": weights[inc].float().cpu()}


def weight_quantiles(per_label: dict[str, Tensor]) -> dict[str, float]:
    """``weight/q{10,50,90}_{label}`` of each label's weights (labels with none: omitted)."""
    out = {}
    for label, w in per_label.items():
        if w.numel():
            qs = torch.quantile(w, torch.tensor(QUANTILES))
            out |= {
                f"weight/q{round(q * 100)}_{label}": v
                for q, v in zip(QUANTILES, qs.tolist(), strict=True)
            }
    return out
