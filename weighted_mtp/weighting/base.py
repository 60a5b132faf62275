"""The weighting interface.

A weighting maps one micro-batch to the weights of the MTP loss. Head ``k``
(0-based) at position ``t`` predicts token ``t + k + 1``; its target is ``targets[b, t, k]``
(``-100`` where there is none: prompt, padding, past the end). The loss is::

    sum(weights * CE * valid) / denominator

so a weighting also says what the loss is averaged over (``denominator``). To plug in
your own, subclass :class:`Weighting` and point ``weighting._target_`` at the class;
extra keys of the ``weighting`` config node are passed to its constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from weighted_mtp.distributed import DistInfo
from weighted_mtp.errors import UserError

HeadWeightFn = Callable[[int, Tensor], Tensor]
"""weight_fn(k, ce) -> weights: k = head index, ce = that head's detached per-token CE
[B,S] (0 at invalid targets); returns weights [B,S] (treated as constants)."""


@dataclass
class WeightingInputs:
    """What a weighting may look at for one micro-batch.

    targets: [B, S, n] long, target token of head k at position t, or -100.
    response_mask: [B, S] bool, positions that hold a response token.
    reward: [B] float, outcome reward R (1.0 correct, 0.0 incorrect).
    values: [B, S] float, V(s_t) from the value head at each position (detached), or None.
    ref_ce: [B, S] float, the reference model's next-token CE of the token *at* each
        position (0 where there is none), or None.
    record_ids: [B] long, each record's row in the dataset's index, or None.
    """

    targets: Tensor
    response_mask: Tensor
    reward: Tensor
    values: Tensor | None = None
    ref_ce: Tensor | None = None
    record_ids: Tensor | None = None

    @property
    def valid(self) -> Tensor:
        return self.targets != -100


@dataclass
class StepInputs:
    """One micro-batch of an optimizer step, for weightings that rank the whole step.

    inputs: the micro-batch's :class:`WeightingInputs` (with the value head's ``values``
        when the weighting ``needs_values``).
    head_ce: [B, S, n] the policy's detached per-token CE of each head (0 at invalid
        targets), from a no-grad forward with the step's parameters and precision; None
        when the weighting does not ask for it (``needs_step_ce = False``).
    """

    inputs: WeightingInputs
    head_ce: Tensor | None = None


class Weighting:
    """Base class: uniform denominator, no extra inputs, no statistics.

    ``needs_step_pass = True``: the weights of a micro-batch depend on the whole optimizer
    step; the loop then calls :meth:`step_weights` once per step, before any backward, and
    uses its weights (and their sum as the denominator) instead of :meth:`weights`; its
    no-grad pass computes the policy's per-token CE only when ``needs_step_ce``.
    """

    needs_values: bool = False
    needs_reference: bool = False
    needs_step_pass: bool = False
    needs_step_ce: bool = True
    #: constructor argument -> the config field that is its user's address (the stage's
    #: ``weighting`` section interpolates it: ``beta: ${training.beta}``); validation
    #: refuses a ``weighting.<arg>`` set anywhere else
    config_fields: dict[str, str] = {}

    def weights(self, inputs: WeightingInputs) -> Tensor | HeadWeightFn:
        """Per-head per-token weights [B, S, n] (constant w.r.t. gradients), or a
        function of each head's per-token CE (see :data:`HeadWeightFn`)."""
        raise NotImplementedError

    def denominator(self, valid: Tensor) -> Tensor:
        """What the loss averages over, given the valid-target mask [B, S, n]."""
        return valid.sum()

    def step_weights(self, parts: list[StepInputs], info: DistInfo | None = None) -> list[Tensor]:
        """Weights [B, S, n] of every micro-batch of this rank's optimizer step (only for
        ``needs_step_pass``); ``info`` names the ranks that share the step."""
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        """Statistics of the last call, for logging (``weight/...``)."""
        return {}


def token_to_head_weights(token_weights: Tensor, n_heads: int) -> Tensor:
    """Spread weights indexed by token position [B, S] onto heads: out[b, t, k] = w[b, t+k+1].

    Positions past the end get 0 (they have no target).
    """
    b, s = token_weights.shape
    out = token_weights.new_zeros(b, s, n_heads)
    for k in range(n_heads):
        if k + 1 < s:
            out[:, : s - k - 1, k] = token_weights[:, k + 1 :]
    return out


def masked_stats(x: Tensor, mask: Tensor, prefix: str) -> dict[str, float]:
    """mean/std/min/max of ``x`` where ``mask`` is true."""
    v = x[mask].float()
    if v.numel() == 0:
        return {}
    std = v.std(unbiased=False) if v.numel() > 1 else torch.zeros(())
    return {
        f"{prefix}/mean": v.mean().item(),
        f"{prefix}/std": std.item(),
        f"{prefix}/min": v.min().item(),
        f"{prefix}/max": v.max().item(),
    }


def bad_argument(weighting: Weighting, arg: str, value: object, rule: str) -> UserError:
    """The user error for a constructor argument out of range, named by its config
    address: ``weighting.<arg>`` (and the ``training.*`` field it comes from)."""
    field = type(weighting).config_fields.get(arg)
    fix = f"set {field} (weighting.{arg} follows it)" if field else f"set weighting.{arg}"
    return UserError(
        f"weighting.{arg} = {value!r}: {rule} ({type(weighting).__name__}). Fix: {fix}"
    )
