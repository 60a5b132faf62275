"""Rho-1 weighting (Lin et al. 2024): train only on the tokens the policy has most to learn.

Excess loss of head k for target token j: ``CE_policy_k(j) - CE_ref(j)``, where CE_ref
is the frozen reference model's next-token loss of token j. For each head, the
``kept_count(n_valid, k_percent) = ceil(k_percent * n_valid)`` valid targets with the
highest excess loss get weight 1, the rest 0, and the loss averages CE over the kept
tokens only.

``scope`` says which tokens compete for the top ``k_percent``:

- ``step`` (default, the paper's rule: top-k% of the tokens of a training batch): all
  tokens of the optimizer step, i.e. every micro-batch of every rank. The loop calls
  :meth:`Rho1Weighting.step_weights` once per step, before the backward passes, with the
  policy's per-token CE of every micro-batch (one extra no-grad forward each); the excess
  losses are gathered over ranks and ranked together, so one process with batch N x b,
  N accumulated micro-batches of b and N ranks of b keep exactly the same tokens. Ties are
  broken by position in the step (rank, micro-batch, row, position).
- ``micro_batch``: each micro-batch (on each rank) ranks its own tokens, during its own
  forward; no extra forward, but the kept set then depends on how the step is split.

``training.temperature`` T (read by the rho1 stage, which computes and caches the
reference losses) scales the reference's logits before its CE is taken:
``CE_ref(j) = -log softmax(ref_logits / T)[x_j]``. T = 1 is Rho-1's rule; T > 1 flattens
the reference (its CE moves towards log V, so the ranking leans on the policy's own loss),
T < 1 sharpens it (confident reference tokens count as easy). The reference losses are
computed with T applied and cached per T.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import Tensor

from weighted_mtp import distributed as dist
from weighted_mtp.weighting.base import (
    HeadWeightFn,
    StepInputs,
    Weighting,
    WeightingInputs,
    bad_argument,
)


def kept_count(n_valid: int | Tensor, k_percent: float) -> int:
    """How many of ``n_valid`` targets Rho-1 keeps: ceil(k_percent * n_valid), exactly.

    ``k_percent`` is read as the decimal it was written as (0.6 is 3/5, not the binary
    float just below it), and the product is rounded up in integer arithmetic.
    """
    k = Fraction(repr(float(k_percent)))
    n = int(n_valid)
    return -((-n * k.numerator) // k.denominator)


def top_mask(scores: Tensor, valid: Tensor, n_keep: int) -> Tensor:
    """Boolean mask (shape of ``scores``) of the ``n_keep`` valid entries with the highest
    score; ties go to the earlier entry in row-major order."""
    flat = torch.where(valid, scores.float(), -torch.inf)
    order = torch.sort(flat.flatten(), descending=True, stable=True).indices[:n_keep]
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    keep[order] = True
    return keep.view_as(valid) & valid


SCOPES = ("step", "micro_batch")  # what one top-k ranks: the optimizer step, or a micro-batch


def head_excess(head_ce: Tensor, ref_ce: Tensor) -> Tensor:
    """Excess loss [B, S, n]: head k's CE of the token it predicts at t (t + k + 1) minus the
    reference's CE of that token (``ref_ce`` [B, S] is the CE of the token *at* each
    position)."""
    s, n = head_ce.shape[1], head_ce.shape[2]
    ref = torch.zeros_like(head_ce, dtype=torch.float32)
    for k in range(n):
        ref[:, : s - k - 1, k] = ref_ce[:, k + 1 :].float()
    return head_ce.float() - ref


class Rho1Weighting(Weighting):
    needs_reference = True

    config_fields = {"k_percent": "training.k_percent", "scope": "training.selection_scope"}

    def __init__(self, k_percent: float, scope: str = "step") -> None:
        if not 0 < k_percent <= 1:
            raise bad_argument(self, "k_percent", k_percent, "must be in (0, 1]")
        if scope not in SCOPES:
            raise bad_argument(self, "scope", scope, f"must be one of {', '.join(SCOPES)}")
        self.k_percent, self.scope = k_percent, scope
        self.needs_step_pass = scope == "step"
        self._stats: dict[str, float] = {}

    # -- scope = micro_batch: rank inside each micro-batch, head by head -----------------
    def weights(self, inputs: WeightingInputs) -> HeadWeightFn:
        if self.needs_reference:
            assert inputs.ref_ce is not None, "Rho1Weighting needs the reference's per-token CE"
        valid = inputs.valid
        self._stats = {}

        def head_weights(k: int, ce: Tensor) -> Tensor:
            score = self._micro_scores(k, ce, inputs.ref_ce)
            n_keep = kept_count(valid[..., k].sum(), self.k_percent)
            keep = top_mask(score, valid[..., k], n_keep)
            if keep.any() and self.needs_reference:
                self._stats[f"rho1/excess_kept_mean_head{k}"] = score[keep].mean().item()
            return keep.to(ce.dtype)

        return head_weights

    def _micro_scores(self, k: int, ce: Tensor, ref_ce: Tensor | None) -> Tensor:
        """What head ``k``'s top-k ranks in one micro-batch [B, S]: the excess loss."""
        assert ref_ce is not None
        s = ce.shape[1]
        ref_k = torch.zeros_like(ref_ce, dtype=torch.float32)
        ref_k[:, : s - k - 1] = ref_ce[:, k + 1 :].float()  # CE_ref of the token k predicts
        return ce.float() - ref_k

    def _step_scores(self, part: StepInputs) -> Tensor:
        """What travels to the step-wide ranking for one micro-batch [B, S, n]."""
        assert part.head_ce is not None and part.inputs.ref_ce is not None, (
            "Rho1Weighting needs the policy's and the reference's per-token CE"
        )
        return head_excess(part.head_ce, part.inputs.ref_ce)

    def _order(self, gathered: Tensor) -> Tensor:
        """Scores the step-wide top-k ranks, from the gathered step scores [M, n]."""
        return gathered

    def denominator(self, valid: Tensor) -> Tensor:
        return torch.tensor(
            sum(kept_count(valid[..., k].sum(), self.k_percent) for k in range(valid.shape[-1]))
        )

    # -- scope = step: rank all tokens of the optimizer step (all micro-batches, ranks) ---
    def step_weights(
        self, parts: list[StepInputs], info: dist.DistInfo | None = None
    ) -> list[Tensor]:
        """Keep masks [B, S, n] (float) of every micro-batch of this rank's step."""
        info = info or dist.DistInfo()
        excess, valid = [], []
        for p in parts:
            excess.append(self._step_scores(p).flatten(0, 1))
            valid.append(p.inputs.valid.flatten(0, 1))
        all_e, all_v = torch.cat(excess), torch.cat(valid)  # [B*S summed, n]
        rows = all_v.any(dim=1)  # only positions with a target travel
        mine = torch.where(all_v[rows], all_e[rows], torch.nan)  # [M, n]
        gathered = dist.all_gather_rows(mine, info)  # rank order, the same on every rank
        everything = torch.cat(gathered)
        scores = self._order(everything)
        offset = sum(g.shape[0] for g in gathered[: info.rank])
        keep_rows = torch.zeros(mine.shape, dtype=torch.bool, device=mine.device)
        self._stats = {}
        for k in range(mine.shape[1]):
            col = everything[:, k]
            ok = ~col.isnan()
            kept = top_mask(scores[:, k], ok, kept_count(ok.sum(), self.k_percent))
            keep_rows[:, k] = kept[offset : offset + mine.shape[0]]
            if kept.any() and self.needs_reference:
                self._stats[f"rho1/excess_kept_mean_head{k}"] = col[kept].mean().item()
        keep = torch.zeros_like(all_v)
        keep[rows] = keep_rows
        out, start = [], 0
        for p in parts:
            b, s, n = p.inputs.valid.shape
            out.append(keep[start : start + b * s].view(b, s, n).float())
            start += b * s
        return out

    def stats(self) -> dict[str, float]:
        return dict(self._stats)


class RandomKeepWeighting(Rho1Weighting):
    """Rho-1's control (``weighting=rho1_control``): keep a uniformly random ``k_percent``
    of the valid targets instead of the highest excess loss.

    Everything else is Rho-1's: the same ``scope`` (step-wide over every micro-batch and
    rank, or per micro-batch), the same ``kept_count`` per head and step, the same
    denominator (the kept count). No reference and no extra forward are needed.
    Rho-1 minus this control isolates *which* tokens are kept from *how many*.

    Each target's random score is a hash of (a per-call draw, its record's id, its position,
    its head), :func:`uniform_scores`: the draw comes from torch's global CPU generator
    (seeded by ``runtime.seed`` on every rank, saved in checkpoints, so a resumed run keeps
    the same tokens), and a score does not depend on where the record sits in the step, so
    one process, accumulated micro-batches and several ranks keep the same tokens (a record
    drawn twice into one step gets the same scores at both places).
    """

    needs_reference = False
    needs_step_ce = False

    def _micro_scores(self, k: int, ce: Tensor, ref_ce: Tensor | None) -> Tensor:
        if k == 0:
            self._draw = _draw()
        return uniform_scores(self._draw, self._record_ids, ce.shape, k).to(ce.device)

    def weights(self, inputs: WeightingInputs) -> HeadWeightFn:
        self._record_ids = _ids(inputs)
        return super().weights(inputs)

    def _step_scores(self, part: StepInputs) -> Tensor:
        b, s, n = part.inputs.targets.shape
        scores = [uniform_scores(self._draw, _ids(part.inputs), (b, s), k) for k in range(n)]
        return torch.stack(scores, dim=-1).to(part.inputs.targets.device)

    def step_weights(
        self, parts: list[StepInputs], info: dist.DistInfo | None = None
    ) -> list[Tensor]:
        self._draw = _draw()  # one per step, the same on every rank
        return super().step_weights(parts, info)


def _draw() -> int:
    return int(torch.randint(0, _MASK, (1,)))


def _ids(inputs: WeightingInputs) -> Tensor:
    """Record ids [B] (their rows in the batch where unknown)."""
    b = inputs.targets.shape[0]
    ids = inputs.record_ids
    return torch.arange(b) if ids is None else ids.cpu().long()


_MASK = 2**31 - 1  # values stay below 2**31, so products of two fit in int64


def _mix(x: Tensor) -> Tensor:
    for mult in (0x5BD1E995 & _MASK, 0x27D4EB2F):
        x = (x * mult + 0x165667B1) & _MASK
        x = x ^ (x >> 15)
    return x


def uniform_scores(draw: int, record_ids: Tensor, shape: tuple[int, int], head: int) -> Tensor:
    """Scores in [0, 1) [B, S] (float64, CPU), a hash of (draw, record id, position, head):
    independent uniform-looking values, the same for a target wherever its record sits."""
    b, s = shape
    pos = torch.arange(s, dtype=torch.int64)[None, :]
    x = _mix(torch.full((b, 1), draw, dtype=torch.int64) ^ (record_ids[:, None] & _MASK))
    x = _mix(x ^ ((pos * 64 + head) & _MASK))
    return x.double() / _MASK
