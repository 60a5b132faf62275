"""Weight probe: the weight a trained run's weighting puts on a known bug.

The synthetic task set records where each incorrect program departs from its closest
correct one (``metadata.bug_offset``, a character offset into ``output``; see
:mod:`weighted_mtp.data.synthetic`). For those records of a processed jsonl, the probe
reports the mean token weight at each record's *first diverging token* against the mean
over the records' other response tokens::

    bug_token_weights(checkpoint_dir, "storage/.../test.jsonl")
    -> {"n_records", "first_diverging_mean", "rest_mean", "ratio", ...}

A verifiable run that learned what it should gives its bugs less weight than the rest
(``ratio`` < 1: the TD error drops where the program goes wrong).

Definitions:

- The response tokens of a record are ``tokenizer.encode(output) + [EOS]`` (after the
  prompt, :func:`~weighted_mtp.data.collate.encode_record`). The first diverging token
  is the first one whose decoded prefix is longer than ``bug_offset``, i.e. the token
  that holds character ``bug_offset``; the EOS when ``bug_offset == len(output)`` (the
  program stops where a correct one goes on): :func:`first_diverging_token`. A record
  whose first diverging token was cut by ``dataset.max_length`` is skipped (counted in
  ``n_truncated``).
- The token weight of the response token at sequence position ``p`` is ``w[p - 1, 0]``
  of ``weighting.weights(inputs)`` ([B, S, n]: ``w[t, k]`` weighs head k's target at t,
  token ``t + k + 1``), i.e. head 0's weight for predicting that token. For
  :class:`~weighted_mtp.weighting.td.TDErrorWeighting` this is the per-token weight
  ``clip(exp(A_j / beta), clip_min, clip_max)`` of token j itself (every head that
  predicts token j gets the same weight, ``token_to_head_weights``).
- The inputs are built as in training (:meth:`weighted_mtp.training.task.Task._inputs`):
  targets ``mtp_targets(labels, n_heads)`` of every record (also when the run trained
  with ``training.policy_records=correct``, whose loss never uses an incorrect record's
  weights: the probe then says what they would have been), the value head's fp32 values
  on the policy's trunk (no grad, no autocast), reward = ``is_correct``. A weighting that
  ranks the whole step (``needs_step_pass``, e.g. ``advantage_norm=step``) sees all the
  probed records as one step; weightings that need a reference model are not supported.
- ``first_diverging_mean``: mean over records of the first diverging token's weight;
  ``rest_mean``: mean over all the other response tokens of those records (pooled);
  ``ratio`` = first_diverging_mean / rest_mean; ``frac_below_rest``: the fraction of
  records whose first diverging token weighs less than the mean of their own other
  tokens (:func:`split_means`).

The run's checkpoint (``checkpoint.save_dir/checkpoint_final``, which for the
verifiable stage holds the trained policy and value head) gives the policy, tokenizer,
value head, ``dataset.max_length`` and, by default, the weighting (its config's
``weighting`` node, :func:`weighting_of`). Pass another ``weighting`` to probe a value
head under a weighting its run did not train with (the verifiable control run's value
head under the TD weighting, say).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from weighted_mtp.data.collate import Batch, Collator
from weighted_mtp.data.records import Record, read_records
from weighted_mtp.data.synthetic import bug_offset
from weighted_mtp.errors import UserError
from weighted_mtp.training.losses import mtp_loss, mtp_targets
from weighted_mtp.weighting.base import StepInputs, Weighting, WeightingInputs


class DecodingTokenizer(Protocol):
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def first_diverging_token(tokenizer: DecodingTokenizer, output: str, offset: int) -> int:
    """Index among the response tokens (``tokenizer.encode(output)`` then EOS) of the
    token that holds character ``offset`` of ``output``: the first token whose decoded
    prefix is longer than ``offset``; ``len(encode(output))`` (the EOS) when none is."""
    if not 0 <= offset <= len(output):
        raise ValueError(f"bug_offset {offset} is outside the output (length {len(output)})")
    ids = tokenizer.encode(output)
    for k in range(len(ids)):
        if len(tokenizer.decode(ids[: k + 1])) > offset:
            return k
    return len(ids)


def split_means(weights: Tensor, response_mask: Tensor, bug_index: Sequence[int]) -> dict:
    """The first diverging token's weight against the other response tokens.

    weights: [B, S] token weights; response_mask: [B, S] bool; ``bug_index[b]``: the
    index of row b's first diverging token among its response tokens (the k-th true
    position of ``response_mask[b]``), or < 0 to leave the row out. Returns
    ``n_records`` (rows counted), ``first_diverging_mean`` (mean over rows),
    ``rest_mean`` (mean over the rows' other response tokens, pooled), ``ratio`` (their
    quotient), ``n_rest_tokens`` and ``frac_below_rest`` (rows whose first diverging
    token weighs less than the mean of their own other tokens); NaN where undefined.
    """
    bug_sum = rest_sum = 0.0
    n = rest_n = below = with_rest = 0
    for b, k in enumerate(bug_index):
        if k < 0:
            continue
        w = weights[b][response_mask[b]].double()
        if k >= w.numel():
            raise ValueError(f"row {b}: bug index {k} but {w.numel()} response tokens")
        rest = torch.cat([w[:k], w[k + 1 :]])
        bug = w[k].item()
        n += 1
        bug_sum += bug
        rest_sum += rest.sum().item()
        rest_n += rest.numel()
        if rest.numel():
            with_rest += 1
            below += int(bug < rest.mean().item())
    first = bug_sum / n if n else math.nan
    rest_mean = rest_sum / rest_n if rest_n else math.nan
    return {
        "n_records": n,
        "first_diverging_mean": first,
        "rest_mean": rest_mean,
        "ratio": first / rest_mean if rest_n and rest_mean != 0 else math.nan,
        "n_rest_tokens": rest_n,
        "frac_below_rest": below / with_rest if with_rest else math.nan,
    }


def token_weights(head_weights: Tensor, response_mask: Tensor) -> Tensor:
    """[B, S, n] weights of a weighting -> [B, S]: at each response position p, head 0's
    weight of its target at p - 1 (the token at p); 0 elsewhere."""
    w = torch.zeros(response_mask.shape, dtype=torch.float64, device=head_weights.device)
    w[:, 1:] = head_weights[:, :-1, 0].double()
    return torch.where(response_mask, w, torch.zeros_like(w))


def weighting_of(checkpoint: str | Path) -> Weighting:
    """The weighting a run trained with: its checkpoint config's ``weighting`` node."""
    from hydra.utils import instantiate

    from weighted_mtp.training.checkpoint import Checkpoint

    node = Checkpoint(checkpoint).config.get("weighting")
    if not node:
        raise UserError(f"{checkpoint}: its config has no weighting; pass weighting=")
    return instantiate(node)


def probed_records(records: Sequence[Record]) -> list[tuple[Record, int]]:
    """(record, bug_offset) of every incorrect record that says where its bug is:
    ``metadata.bug_offset``, or for an older synthetic file without it, :func:`bug_offset`
    against the correct records of the same problem in ``records`` (none: left out)."""
    solutions: dict[str, list[str]] = {}
    for r in records:
        if r.is_correct:
            solutions.setdefault(r.problem_id, []).append(r.output)
    out = []
    for r in records:
        if r.is_correct:
            continue
        off = r.metadata.get("bug_offset")
        if off is None and r.metadata.get("bug") and solutions.get(r.problem_id):
            off = bug_offset(r.output, solutions[r.problem_id])
        if off is not None:
            out.append((r, int(off)))
    return out


def probe_records(
    model: nn.Module,
    value_head: nn.Module | None,
    tokenizer: Any,
    records: Sequence[tuple[Record, int]],
    weighting: Weighting,
    max_length: int,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
) -> dict:
    """:func:`split_means` of ``weighting``'s token weights over ``(record, bug_offset)``
    pairs (see the module docstring), ``model`` the policy (an MTPTransformer),
    ``value_head`` its value head (needed when ``weighting.needs_values``). Adds
    ``n_truncated`` (records whose first diverging token was cut)."""
    if weighting.needs_reference:
        raise UserError(f"{type(weighting).__name__} needs a reference model: not probed")
    if weighting.needs_values and value_head is None:
        raise UserError(f"{type(weighting).__name__} needs a value head: none given")
    collator = Collator(tokenizer, max_length)
    kept: list[tuple[Record, int]] = []
    truncated = 0
    for rec, off in records:
        k = first_diverging_token(tokenizer, rec.output, off)
        enc = collator.encode(rec)
        if k >= len(enc.ids) - enc.prompt_len:
            truncated += 1
        else:
            kept.append((rec, k))
    rows: list[Tensor] = []
    if kept:
        model.eval()
        n_heads = model.n_future_tokens
        batches = [
            collator([r for r, _ in kept[i : i + batch_size]]).to(device)
            for i in range(0, len(kept), batch_size)
        ]
        parts = [_step_inputs(model, value_head, b, weighting, n_heads) for b in batches]
        if weighting.needs_step_pass:
            weights = weighting.step_weights(parts)
        else:
            weights = [weighting.weights(p.inputs) for p in parts]
        for b, w in zip(batches, weights, strict=True):
            if not isinstance(w, Tensor):
                raise UserError(
                    f"{type(weighting).__name__} weighs tokens by the policy's CE per head "
                    "(a function, not weights): not probed"
                )
            tw = token_weights(w.detach(), b.response_mask).cpu()
            mask = b.response_mask.cpu()
            rows += [tw[i][mask[i]] for i in range(tw.shape[0])]
    padded = nn.utils.rnn.pad_sequence(rows, batch_first=True) if rows else torch.zeros(0, 0)
    lengths = torch.tensor([r.numel() for r in rows], dtype=torch.long)
    mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
    return split_means(padded, mask, [k for _, k in kept]) | {"n_truncated": truncated}


def _step_inputs(
    model: nn.Module, value_head: nn.Module | None, batch: Batch, weighting: Weighting, n: int
) -> StepInputs:
    """The batch's WeightingInputs as training builds them (no grad)."""
    targets = mtp_targets(batch.labels, n)
    with torch.no_grad():
        h = model.trunk(batch.input_ids, batch.attention_mask)
        values = value_head(h).float() if weighting.needs_values else None
        ce = None
        if weighting.needs_step_pass and weighting.needs_step_ce:
            ce = mtp_loss(
                model, h, batch.attention_mask, targets, backward=False, return_token_ce=True
            ).token_ce
    inputs = WeightingInputs(
        targets=targets, response_mask=batch.response_mask, reward=batch.reward, values=values
    )
    return StepInputs(inputs, ce)


def bug_token_weights(
    checkpoint: str | Path,
    data: str | Path,
    weighting: Weighting | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    limit: int | None = None,
    max_length: int | None = None,
) -> dict:
    """The probe on a trained run (see the module docstring).

    checkpoint: a training checkpoint directory with a value head (a verifiable run's
        ``checkpoint.save_dir/checkpoint_final``; the demo's ``result["checkpoint"]``).
    data: a processed jsonl with incorrect synthetic records (e.g. the held-out
        ``test.jsonl``). weighting: the weighting object to probe; None: the run's own
        (:func:`weighting_of`). limit: the first N probed records only. max_length:
        the truncation length; None: the run's ``dataset.max_length``.

    Returns :func:`split_means`'s dict plus ``n_truncated``.
    """
    from weighted_mtp.training.checkpoint import Checkpoint, load_policy, load_value_head

    device = torch.device(device)
    ck = Checkpoint(checkpoint)
    weighting = weighting if weighting is not None else weighting_of(checkpoint)
    if max_length is None:
        max_length = int(ck.config.get("dataset", {}).get("max_length") or 2048)
    records = probed_records(list(read_records(data)))
    if not records:
        raise UserError(
            f"{data}: no incorrect records with metadata.bug_offset (a synthetic split "
            "written by `prepare synthetic`)"
        )
    records = records[:limit] if limit is not None else records
    model, tokenizer = load_policy(checkpoint, device)
    head = load_value_head(checkpoint).to(device) if weighting.needs_values else None
    return probe_records(model, head, tokenizer, records, weighting, max_length, device, batch_size)
