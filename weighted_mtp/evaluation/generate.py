"""KV-cached sampling from an MTP policy with its next-token head (head 0).

Batching uses left padding: every row's prompt is right-aligned at column ``P`` (the
longest prompt), padded columns are masked out of attention, and all rows then decode in
lock step at the same absolute position. The model's cache and rotary tables assume one
``start_pos`` for the whole batch; a row with ``p`` pad columns therefore sees its tokens
at positions shifted by ``p``. Rotary attention scores depend only on position
*differences*, so a row's logits equal those of the same prompt decoded alone (up to
float rounding). Nothing in ``models/`` is changed.

Sampling (``temperature > 0``) draws each row from its own ``torch.Generator`` seeded with
``seed + row index`` by inverse-CDF on one uniform draw per step, so a row's tokens depend
on its seed, not on what else is in the batch. ``temperature == 0`` is greedy (argmax).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from weighted_mtp.models.attention import KVCache
from weighted_mtp.models.mtp import MTPTransformer


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen: greedy when ``temperature == 0``; nucleus top-p otherwise."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_top_p(probs: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p``; renormalise.

    probs: [B, V] (rows sum to 1) -> [B, V]. The most likely token is always kept.
    """
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(-1) - sorted_p
    sorted_p = sorted_p.masked_fill(mass_before >= top_p, 0.0)
    out = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return out / out.sum(-1, keepdim=True)


def choose(
    logits: Tensor, params: SamplingParams, generators: Sequence[torch.Generator] | None
) -> Tensor:
    """Next token per row from logits [B, V] -> [B] (argmax, or a draw per row's generator)."""
    if params.temperature == 0:
        return logits.argmax(-1)
    if generators is None or len(generators) != logits.shape[0]:
        raise ValueError("sampling needs one torch.Generator per row")
    probs = filter_top_p(torch.softmax(logits.float() / params.temperature, -1), params.top_p)
    u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators])
    cdf = probs.cumsum(-1)
    # right=True: the first token whose cdf exceeds the draw (never a zero-probability one)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


class HeadZeroDecoder:
    """Left-padded batch decoding state: caches, attention mask and the next position."""

    def __init__(self, model: MTPTransformer, prompts: Sequence[Sequence[int]], max_new: int):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self.model = model
        self.device = model.output.weight.device
        self.width = max(len(p) for p in prompts)
        total = self.width + max_new
        b = len(prompts)
        self.ids = torch.zeros(b, self.width, dtype=torch.long, device=self.device)
        self.mask = torch.zeros(b, total, dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):
            self.ids[i, self.width - len(p) :] = torch.as_tensor(list(p), device=self.device)
            self.mask[i, self.width - len(p) :] = 1
        n_trunk = len(model.layers) - 1
        caches = model.new_kv_caches(b, total)
        self.trunk_caches: list[KVCache] = caches[:n_trunk]
        self.head_cache: KVCache = caches[n_trunk]  # head 0 only; extra heads unused
        self.pos = 0

    def prefill(self) -> Tensor:
        """Run the prompts; head-0 logits [B, V] for the first new token."""
        return self._forward_head_all(self.ids)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row [B]; head-0 logits [B, V] for the next one."""
        return self._forward_head_all(tokens[:, None])

    def _forward_head_all(self, ids: Tensor) -> Tensor:
        """Trunk and head 0 over every new position (head 0's cache needs them all)."""
        s = ids.shape[1]
        kv_len = self.pos + s
        ctx = self.model.context(
            s, self.device, attention_mask=self.mask[:, :kv_len], start_pos=self.pos, kv_len=kv_len
        )
        h = self.model.trunk(ids, ctx=ctx, caches=self.trunk_caches)
        h = self.model.head_hidden(0, h, ctx=ctx, cache=self.head_cache)
        self.pos = kv_len
        return self.model.output(h[:, -1]).float()


@torch.no_grad()
def generate(
    model: MTPTransformer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    eos_id: int | None = None,
    seeds: Sequence[int] | None = None,
) -> list[list[int]]:
    """Generate a continuation per prompt (one batch); each stops after ``eos_id``.

    Returns the new tokens per prompt, without the EOS. ``seeds`` (one per prompt) is
    required when ``params.temperature > 0``.
    """
    model.eval()
    gens = None
    if params.temperature > 0:
        if seeds is None or len(seeds) != len(prompts):
            raise ValueError("sampling needs one seed per prompt")
        device = model.output.weight.device
        gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    dec = HeadZeroDecoder(model, prompts, params.max_new_tokens)
    b = len(prompts)
    out: list[list[int]] = [[] for _ in range(b)]
    done = torch.zeros(b, dtype=torch.bool)
    logits = dec.prefill()
    for t in range(params.max_new_tokens):
        tokens = choose(logits, params, gens)
        for i, tok in enumerate(tokens.tolist()):
            if done[i]:
                continue
            if eos_id is not None and tok == eos_id:
                done[i] = True
            else:
                out[i].append(tok)
        if bool(done.all()) or t == params.max_new_tokens - 1:
            break
        logits = dec.step(tokens)
    return out


def generate_batched(
    model: MTPTransformer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    eos_id: int | None = None,
    seeds: Sequence[int] | None = None,
    batch_size: int = 16,
    on_batch=None,
) -> list[list[int]]:
    """:func:`generate` over many prompts, ``batch_size`` at a time, grouped by length.

    Prompts are sorted by length so each batch pads little; results come back in input
    order. ``on_batch(n)`` is called after each batch with its size (progress bars).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        chunk_seeds = None if seeds is None else [seeds[i] for i in idx]
        res = generate(model, [prompts[i] for i in idx], params, eos_id, chunk_seeds)
        for i, toks in zip(idx, res, strict=True):
            out[i] = toks
        if on_batch is not None:
            on_batch(len(idx))
    return out
