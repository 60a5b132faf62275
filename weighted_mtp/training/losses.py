"""Memory-efficient weighted multi-token prediction loss.

Shapes: B batch, S sequence, D model dim, n heads (``model.n_future_tokens``), V vocab.
Head k (0-based) at position t predicts token t+k+1. The loss is

    sum_k sum_t  w[t, k] * CE_k(t)  over valid targets  /  denominator

``mtp_loss`` runs head after head against a detached trunk output and computes the
vocabulary projection + CE in chunks of ``chunk_size`` tokens, so at most one chunk of
fp32 logits [chunk, V] exists at a time (the paper's O(V) instead of O(n·V) trick); the
chunk's CE (``_InPlaceCE``) turns that buffer in place into its own gradient, so it is
the only [chunk, V] buffer of the chunk's backward too. ``chunk_size`` is
``training.loss_chunk_size``.
Every head runs, even without valid targets (one empty chunk), so the passes through the
head units are the same on every rank (FSDP issues the same collectives); each chunk runs
autocast without its cast cache, so no chunk input outlives its chunk.

Backward protocol (``backward=True``)::

    h = model.trunk(input_ids, attention_mask)          # once per step, graph attached
    out = mtp_loss(model, h, attention_mask, targets, weights)
    backward_trunk(h, out, value_loss)                  # = h.backward(out.trunk_grad)

``mtp_loss`` already back-propagated into the head blocks, the shared norm and ``output``
(their ``.grad`` accumulate); ``out.trunk_grad`` is dLoss/dh, which the caller sends once
through the trunk, together with any other loss on ``h`` (e.g. the value head's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weighted_mtp.models.mtp import MTPTransformer
from weighted_mtp.weighting.base import HeadWeightFn

IGNORE_INDEX = -100


@dataclass
class MTPLossOutput:
    """Result of ``mtp_loss`` / ``naive_mtp_loss``.

    loss: 0-dim fp32 (detached for ``mtp_loss``; attached for ``naive_mtp_loss``).
    head_ce: [n] mean unweighted CE per head over its valid targets (0 where none).
    head_loss: [n] sum(w*CE)/denominator per head (sums to ``loss``), detached.
    n_valid: number of valid (head, token) targets. head_valid: [n] the same per head.
    token_ce: [B,S,n] detached per-token CE (0 at invalid targets) if asked, else None.
    token_weight: [B,S,n] the weights the loss used (0 at invalid targets) if asked, else None.
    trunk_grad: [B,S,D] dLoss/d trunk_hidden (``mtp_loss`` with backward=True), else None.
    """

    loss: Tensor
    head_ce: Tensor
    head_loss: Tensor
    n_valid: int
    head_valid: Tensor
    token_ce: Tensor | None = None
    token_weight: Tensor | None = None
    trunk_grad: Tensor | None = None


def mtp_targets(labels: Tensor, n: int) -> Tensor:
    """labels [B,S] (token ids, -100 on prompt/padding) -> targets [B,S,n].

    targets[b, t, k] = labels[b, t+k+1], or -100 past the end of the sequence.
    """
    b, s = labels.shape
    out = labels.new_full((b, s, n), IGNORE_INDEX)
    for k in range(n):
        if k + 1 < s:
            out[:, : s - k - 1, k] = labels[:, k + 1 :]
    return out


def _denominator(denominator: float | Tensor | None, n_valid: int) -> float | Tensor:
    return max(n_valid, 1) if denominator is None else denominator


def _uncached_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast as it is, but without its cast cache: a chunk's input is a leaf that
    requires grad, whose low-precision copy autocast would otherwise keep until the
    outermost autocast region ends (one copy per chunk, for the whole micro-batch)."""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    dtype = torch.get_autocast_dtype(device.type)
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


#: the chunk's CE with a gradient through :class:`_InPlaceCE` (one [chunk, V] fp32 buffer);
#: False: ``F.cross_entropy`` (autograd keeps the log-softmax, then makes the gradient).
#: An internal switch for benchmarks/compile.py's comparison.
FUSED_CE = True


class _InPlaceCE(torch.autograd.Function):
    """Per-token CE of fp32 logits [N,V] against targets [N]; the logits tensor (a fresh
    one, owned by the caller: the chunk's projection output, which the projection's
    backward does not need) is overwritten with softmax - onehot and kept for backward,
    which scales it in place by the incoming per-token gradient (the weights / the
    denominator). So one [N,V] buffer lives per chunk instead of log-softmax + its
    gradient. Values: logsumexp(x) - x[target], the same CE as ``F.cross_entropy``."""

    @staticmethod
    def forward(ctx, logits: Tensor, tgt: Tensor) -> Tensor:  # type: ignore[override]
        lse = torch.logsumexp(logits, dim=-1)
        ce = lse - logits.gather(1, tgt[:, None]).squeeze(1)
        logits.sub_(lse[:, None]).exp_()
        logits[torch.arange(tgt.numel(), device=tgt.device), tgt] -= 1.0
        ctx.save_for_backward(logits)
        return ce

    @staticmethod
    def backward(ctx, grad_ce: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (g,) = ctx.saved_tensors
        return g.mul_(grad_ce[:, None]), None


def _chunk_ce(model: MTPTransformer, z: Tensor, tgt: Tensor) -> Tensor:
    """Per-token CE of normed hidden rows z [N,D] against targets [N] (fp32 logits)."""
    logits = model.output(z).float()
    if FUSED_CE and torch.is_grad_enabled() and logits.requires_grad:
        return _InPlaceCE.apply(logits, tgt)
    return F.cross_entropy(logits, tgt, reduction="none")


def mtp_loss(
    model: MTPTransformer,
    trunk_hidden: Tensor,
    attention_mask: Tensor | None,
    targets: Tensor,
    weights: Tensor | HeadWeightFn | None = None,
    *,
    denominator: float | Tensor | None = None,
    chunk_size: int = 1024,
    backward: bool = True,
    return_token_ce: bool = False,
    return_weights: bool = False,
    before_last_backward: Callable[[nn.Module], None] | None = None,
) -> MTPLossOutput:
    """Weighted MTP loss, head by head, vocabulary projection in chunks.

    trunk_hidden [B,S,D] (``model.trunk`` output; it is detached here, never modified);
    attention_mask [B,S] or None; targets [B,S,n] (``mtp_targets``); weights [B,S,n], a
    ``HeadWeightFn`` (called per head with that head's CE, computed first under no_grad), or
    None (all 1). denominator: float or 0-dim tensor (default: number of valid targets).
    chunk_size: tokens per logits chunk (valid tokens only are projected).
    backward=True back-propagates into the head parameters and returns ``trunk_grad``
    (see the module docstring); backward=False computes values only (validation).
    return_token_ce / return_weights: also return the per-token CE / the weights used
    ([B,S,n], for the weight diagnostics).
    ``before_last_backward(module)`` is called right before the last backward pass
    through ``model.output`` (the last head's last chunk), then through ``model.norm``
    (the last head's block): the parallelism's hook (FSDP reduces their gradients there).
    """
    n = model.n_future_tokens
    b, s, d = trunk_hidden.shape
    if targets.shape != (b, s, n):
        raise ValueError(f"targets shape {tuple(targets.shape)} != {(b, s, n)}")
    valid = targets != IGNORE_INDEX
    head_valid = valid.sum(dim=(0, 1))
    n_valid = int(head_valid.sum())
    denom = _denominator(denominator, n_valid)
    h = trunk_hidden.detach().requires_grad_(backward)
    ctx = model.context(s, trunk_hidden.device, attention_mask)
    head_ce = torch.zeros(n, dtype=torch.float32, device=h.device)
    head_loss = torch.zeros(n, dtype=torch.float32, device=h.device)
    token_ce = torch.zeros(b * s, n, device=h.device) if return_token_ce else None
    token_weight = torch.zeros(b * s, n, device=h.device) if return_weights else None

    for k in range(n):
        tgt = targets[..., k].reshape(-1)
        idx = valid[..., k].reshape(-1).nonzero().squeeze(1)
        # every head runs, with at least one (possibly empty) chunk: the passes through the
        # head units do not depend on the data (the same collectives on every FSDP rank)
        chunks = idx.split(chunk_size) if idx.numel() else (idx,)
        last = k == n - 1
        with torch.set_grad_enabled(backward):
            z = model.head_hidden(k, h, ctx=ctx).reshape(b * s, d)
        zd = z.detach()
        w = None
        if callable(weights):
            ce_k = torch.zeros(b * s, device=h.device)
            with torch.no_grad():
                for c in chunks:
                    with _uncached_autocast(h.device):
                        ce_k[c] = _chunk_ce(model, zd[c], tgt[c])
            w = weights(k, ce_k.view(b, s)).detach().reshape(-1).float()
        elif weights is not None:
            w = weights[..., k].detach().reshape(-1).float()
        if token_weight is not None:
            token_weight[idx, k] = 1.0 if w is None else w[idx]
        gz = torch.zeros_like(zd) if backward else None
        for i, c in enumerate(chunks):
            zc = zd[c].requires_grad_(backward)
            with torch.set_grad_enabled(backward), _uncached_autocast(h.device):
                ce = _chunk_ce(model, zc, tgt[c])
                part = (ce if w is None else ce * w[c]).sum() / denom
            if backward:
                if last and i == len(chunks) - 1 and before_last_backward is not None:
                    before_last_backward(model.output)
                part.backward()
                gz.index_copy_(0, c, zc.grad)
            head_loss[k] += part.detach()
            head_ce[k] += ce.detach().sum()
            if token_ce is not None:
                token_ce[c, k] = ce.detach()
        if backward:
            if last and before_last_backward is not None:
                before_last_backward(model.norm)
            z.backward(gz)
        head_ce[k] /= max(idx.numel(), 1)

    trunk_grad = None
    if backward:
        trunk_grad = h.grad if h.grad is not None else torch.zeros_like(h)
    return MTPLossOutput(
        loss=head_loss.sum(),
        head_ce=head_ce,
        head_loss=head_loss,
        n_valid=n_valid,
        head_valid=head_valid,
        token_ce=token_ce.view(b, s, n) if token_ce is not None else None,
        token_weight=token_weight.view(b, s, n) if token_weight is not None else None,
        trunk_grad=trunk_grad,
    )


def backward_trunk(trunk_hidden: Tensor, out: MTPLossOutput, *extra_losses: Tensor) -> None:
    """Finish ``mtp_loss``'s backward: one pass through the trunk (plus extra losses)."""
    if out.trunk_grad is None:
        raise ValueError("mtp_loss was called with backward=False: no trunk gradient")
    tensors, grads = list(extra_losses), [None] * len(extra_losses)
    if trunk_hidden.requires_grad:  # not when nothing in the trunk trains (LoRA on heads only)
        tensors, grads = [trunk_hidden, *tensors], [out.trunk_grad, *grads]
    if tensors:
        torch.autograd.backward(tensors, grads)


def naive_mtp_loss(
    model: MTPTransformer,
    trunk_hidden: Tensor,
    attention_mask: Tensor | None,
    targets: Tensor,
    weights: Tensor | HeadWeightFn | None = None,
    *,
    denominator: float | Tensor | None = None,
    return_token_ce: bool = False,
) -> MTPLossOutput:
    """Reference implementation: all heads' full [B,S,n,V] fp32 logits at once.

    Same arguments and values as ``mtp_loss``; ``loss`` stays attached to the graph, so the
    caller runs ``out.loss.backward()``. For tests and the benchmark.
    """
    n = model.n_future_tokens
    b, s, _ = trunk_hidden.shape
    ctx = model.context(s, trunk_hidden.device, attention_mask)
    logits = torch.stack(
        [model.output(model.head_hidden(k, trunk_hidden, ctx=ctx)) for k in range(n)], dim=2
    ).float()
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(b, s, n)
    valid = targets != IGNORE_INDEX
    head_valid = valid.sum(dim=(0, 1))
    n_valid = int(head_valid.sum())
    if callable(weights):
        w = torch.stack([weights(k, ce[..., k].detach()) for k in range(n)], dim=-1)
    else:
        w = torch.ones_like(ce) if weights is None else weights
    head_loss = (ce * w.detach().float() * valid).sum(dim=(0, 1)) / _denominator(
        denominator, n_valid
    )
    head_ce = ce.detach().sum(dim=(0, 1)) / head_valid.clamp(min=1)
    return MTPLossOutput(
        loss=head_loss.sum(),
        head_ce=head_ce,
        head_loss=head_loss.detach(),
        n_valid=n_valid,
        head_valid=head_valid,
        token_ce=ce.detach() if return_token_ce else None,
    )
