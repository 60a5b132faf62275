"""What a stage trains, and the forward/backward of one micro-batch (shared by all stages).

A stage is a :class:`Task`: whether the policy is trained, which weighting shapes the MTP
loss (None: no MTP loss), an optional value head with its loss coefficient, and an
optional frozen reference. Data flow of one micro-batch::

    trunk once -> value head on the trunk output -> weighting -> weighted MTP loss
    (head by head) + value_coef * value loss -> one backward through the trunk
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from weighted_mtp.data.collate import Batch
from weighted_mtp.distributed import DistInfo
from weighted_mtp.errors import UserError
from weighted_mtp.models.mtp import MTPTransformer
from weighted_mtp.training.losses import backward_trunk, mtp_loss, mtp_targets
from weighted_mtp.training.trunk_cache import TrunkCache
from weighted_mtp.training.value import value_loss, value_mask, value_targets
from weighted_mtp.weighting.base import StepInputs, Weighting, WeightingInputs
from weighted_mtp.weighting.diagnostics import diagnostic_sums, label_weights

POLICY_RECORDS = ("all", "correct")  # training.policy_records

# batch -> reference per-token CE [B, S] (CE of the token at each position; 0 elsewhere)
ReferenceCE = Callable[[Batch], Tensor]


@dataclass
class Task:
    train_policy: bool
    weighting: Weighting | None = None
    value_head: nn.Module | None = None
    value_coef: float = 0.0
    value_loss_type: str = "mse"
    gamma: float = 1.0
    lam: float = 1.0
    reference: ReferenceCE | None = None
    # tokens per logits chunk of the MTP loss (training.loss_chunk_size, set by
    # weighted_mtp.training.compile.apply)
    chunk_size: int = 1024
    # called once before the first step with every batch this rank will train on
    # (rho1: the reference scores them into its cache, then is released)
    prepare: Callable[[Iterable[Batch]], None] | None = None
    provenance: dict[str, str] = field(default_factory=dict)
    # the frozen trunk's outputs kept across epochs (critic: training.frozen_trunk_cache_mb)
    trunk_cache: TrunkCache | None = None
    # which records the policy's MTP loss sees (training.policy_records): all, or the
    # correct ones only (the value head still learns from every record)
    policy_records: str = "all"
    # weights of this optimizer step's micro-batches (``begin_step``), keyed by id(batch)
    step_weights: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def begin_step(
        self, model: MTPTransformer, batches: list[Batch], info: DistInfo | None = None
    ) -> None:
        """Once per optimizer step, before :func:`denominators` and the micro-steps (under
        the step's autocast): a weighting with ``needs_step_pass`` sees every micro-batch
        and fixes the weights of the whole step (e.g. Rho-1's step-wide top-k, all ranks
        together). The trunk runs (no grad) only for what the weighting asks for: the
        policy's per-token CE (``needs_step_ce``) or the value head's values
        (``needs_values``); rho1_control needs neither."""
        self.step_weights = {}
        w = self.weighting
        if w is None or not w.needs_step_pass:
            return
        n = model.n_future_tokens
        parts = []
        with torch.no_grad():
            for b in batches:
                targets = self.targets(b, n)
                values = ce = None
                want_values = w.needs_values and self.value_head is not None
                if want_values or w.needs_step_ce:
                    h = model.trunk(b.input_ids, b.attention_mask)
                if want_values:
                    values = self.value_head(h).float()
                if w.needs_step_ce:
                    ce = mtp_loss(
                        model, h, b.attention_mask, targets, backward=False, return_token_ce=True
                    ).token_ce
                parts.append(StepInputs(self._inputs(b, targets, values), ce))
        for b, weights in zip(batches, w.step_weights(parts, info), strict=True):
            self.step_weights[id(b)] = weights

    def targets(self, batch: Batch, n_heads: int) -> Tensor:
        """The MTP loss's targets [B, S, n] (``mtp_targets``); with ``policy_records =
        correct`` the rows of incorrect records have none (-100)."""
        targets = mtp_targets(batch.labels, n_heads)
        if self.policy_records == "correct":
            targets[batch.reward <= 0] = -100
        return targets

    def trunk(self, model: MTPTransformer, batch: Batch, grad: bool = False) -> Tensor:
        """The trunk's hidden states of ``batch`` (from the cache when the stage has one)."""
        if self.trunk_cache is not None:
            return self.trunk_cache.trunk(model, batch.input_ids, batch.attention_mask)
        with torch.set_grad_enabled(grad):
            return model.trunk(batch.input_ids, batch.attention_mask)

    def _inputs(self, batch: Batch, targets: Tensor, values: Tensor | None) -> WeightingInputs:
        return WeightingInputs(
            targets=targets,
            response_mask=batch.response_mask,
            reward=batch.reward,
            values=values,
            ref_ce=self.reference(batch) if self.reference is not None else None,
            record_ids=batch.record_ids,
        )

    def check_inputs(self) -> None:
        """The weighting's declared inputs exist (a UserError names the mismatch)."""
        w = self.weighting
        if w is None:
            return
        if w.needs_values and self.value_head is None:
            raise UserError(
                f"weighting {type(w).__name__} needs a value head (TD errors): use it with "
                "stage=verifiable, or choose another weighting._target_"
            )
        if w.needs_reference and self.reference is None:
            raise UserError(
                f"weighting {type(w).__name__} needs a reference model: use it with "
                "stage=rho1, or choose another weighting._target_"
            )

    def trainable_modules(self, model: MTPTransformer) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {}
        if self.train_policy:
            mods["policy"] = model
        if self.value_head is not None:
            mods["value_head"] = self.value_head
        return mods


def prepare_policy(model: MTPTransformer, task: Task, adapted: bool = False) -> None:
    """Before the policy's weights are loaded: a frozen policy (critic) or the base of LoRA
    adapters (``adapted``) keeps its storage dtype; a fully trained one gets float32
    master weights, since AdamW cannot update fp16/bf16 weights (eps underflows, small
    steps round away); low-precision compute comes from ``runtime.mixed_precision``."""
    if not task.train_policy or adapted:
        model.requires_grad_(False)
    elif next(model.parameters()).dtype != torch.float32:
        model.float()


@dataclass
class Denominators:
    """Token-exact normalisers of one optimizer step (summed over its micro-batches)."""

    mtp: Tensor
    value: Tensor

    def scaled(self, loss_scale: float) -> Denominators:
        """Denominators that multiply every loss by ``loss_scale`` (fp16 grad scaling)."""
        return Denominators(self.mtp / loss_scale, self.value / loss_scale)


def denominators(task: Task, batches: list[Batch], n_heads: int) -> Denominators:
    mtp = torch.zeros((), dtype=torch.float64)
    val = torch.zeros((), dtype=torch.float64)
    for b in batches:
        if id(b) in task.step_weights:
            mtp += task.step_weights[id(b)].sum().double().cpu()
        elif task.weighting is not None:
            valid = task.targets(b, n_heads) != -100
            mtp += task.weighting.denominator(valid).double().cpu()
        if task.value_head is not None:
            val += value_mask(b.labels).sum().double().cpu()
    return Denominators(mtp.clamp(min=1), val.clamp(min=1))


def micro_step(
    task: Task,
    model: MTPTransformer,
    batch: Batch,
    den: Denominators,
    backward: bool,
    before_last_backward: Callable[[nn.Module], None] | None = None,
) -> dict[str, Tensor]:
    """Forward (and backward, when ``backward``) of one micro-batch.

    ``before_last_backward`` is passed to :func:`~weighted_mtp.training.losses.mtp_loss`
    (the parallelism's hook, see :mod:`weighted_mtp.training.parallel`).

    Returns detached loss terms: ``loss`` (this micro-batch's share of the step loss),
    ``mtp_loss``, ``value_loss``, ``head_ce`` [n], and the value head's ``values`` [B, S];
    when training the policy, the weight diagnostics (``weight_sums``: the
    :data:`~weighted_mtp.weighting.diagnostics.SUMS`, ``label_weights``).
    """
    n = model.n_future_tokens
    targets = task.targets(batch, n)
    h = task.trunk(model, batch, grad=backward and task.train_policy)
    out: dict[str, Tensor] = {}
    extra: list[Tensor] = []
    values = None
    if task.value_head is not None:
        with torch.set_grad_enabled(backward):
            values = task.value_head(h if task.train_policy else h.detach()).float()
        vmask = value_mask(batch.labels)
        vt = value_targets(values, batch.reward, vmask, task.gamma, task.lam)
        vl = value_loss(values, vt, vmask, task.value_loss_type, den.value.to(values.device))
        extra.append(task.value_coef * vl)
        out["value_loss"] = vl.detach()
        out["values"] = values.detach()
    total = sum((e.detach() for e in extra), torch.zeros((), device=h.device))
    if task.weighting is not None:
        weights = task.step_weights.get(id(batch))
        if weights is None and task.weighting.needs_step_pass:
            raise RuntimeError(
                f"{type(task.weighting).__name__} ranks the whole optimizer step: call "
                "task.begin_step(model, batches) before the step's micro-steps"
            )
        if weights is None:
            v = None if values is None else values.detach()
            weights = task.weighting.weights(task._inputs(batch, targets, v))
        res = mtp_loss(
            model,
            h,
            batch.attention_mask,
            targets,
            weights,
            denominator=den.mtp.to(h.device),
            chunk_size=task.chunk_size,
            backward=backward and task.train_policy,
            return_token_ce=backward and task.train_policy,
            return_weights=backward and task.train_policy,
            before_last_backward=before_last_backward,
        )
        if backward and task.train_policy:
            backward_trunk(h, res, *extra)
        elif backward and extra:
            torch.autograd.backward(sum(extra))
        out["mtp_loss"] = res.loss
        out["head_ce"] = res.head_ce
        out["head_valid"] = res.head_valid
        if res.token_weight is not None and res.token_ce is not None:
            valid = targets != -100
            out["weight_sums"] = diagnostic_sums(
                res.token_weight, res.token_ce, valid, batch.reward
            )
            out["label_weights"] = label_weights(res.token_weight, valid, batch.reward)
        total = total + res.loss.to(total.device)
    elif backward and extra:
        torch.autograd.backward(sum(extra))
    out["loss"] = total
    return out
