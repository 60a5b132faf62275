"""Self-speculative greedy decoding with the MTP heads (Gloeckle et al. 2024, §3.2;
blockwise parallel decoding, Stern et al. 2018).

State after each forward: the next token ``t`` (head 0's argmax, certain) and ``n - 1``
drafts ``d_1..d_{n-1}`` (heads 1..n-1 at the same position: guesses for the tokens after
``t``). One forward over ``[t, d_1, .., d_{n-1}]`` gives head 0's logits at every one of
these positions: ``d_j`` is accepted when it equals head 0's argmax after ``d_{j-1}``
(``d_0 = t``), stopping at the first mismatch. With ``a`` drafts accepted, ``t, d_1..d_a``
are emitted, head 0's argmax after ``d_a`` becomes the next ``t`` and heads 1..n-1 at that
position the next drafts. Every emitted token is head 0's greedy choice given the tokens
before it, so the output equals plain greedy decoding (up to float rounding of batched
versus one-token forwards).

KV cache rollback: the forward writes ``n`` positions of every block's cache; only the
first ``a + 1`` hold accepted tokens. The cache length pointer moves to just after them,
so the rejected positions are never attended to (attention reads keys ``< pos + s`` only)
and the next forward overwrites them. Batch size 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from weighted_mtp.models.mtp import MTPTransformer


@dataclass
class SpeculativeStats:
    """Counts of one or more decodes: forwards (prefill included), drafts, tokens."""

    forwards: int = 0
    proposed: int = 0
    accepted: int = 0
    tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / proposed drafts (0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """Emitted tokens (EOS included) per model forward."""
        return self.tokens / self.forwards if self.forwards else 0.0

    def add(self, other: SpeculativeStats) -> None:
        self.forwards += other.forwards
        self.proposed += other.proposed
        self.accepted += other.accepted
        self.tokens += other.tokens


class _AllHeads:
    """Trunk + every head over new positions, with one KV cache per block (batch 1)."""

    def __init__(self, model: MTPTransformer, max_len: int) -> None:
        self.model = model
        self.device = model.output.weight.device
        caches = model.new_kv_caches(1, max_len)
        n_trunk = len(model.layers) - 1
        self.trunk_caches, self.head_caches = caches[:n_trunk], caches[n_trunk:]
        self.pos = 0  # number of valid (accepted) cached positions

    def forward(self, ids: Tensor) -> tuple[list[int], list[Tensor]]:
        """ids [1, S] at positions pos..pos+S-1 -> (head 0's argmax per position [S],
        normed hidden [S, D] of each extra head).

        Every head block runs on every position (its cache needs them); the output
        projection of the extra heads is left to :meth:`drafts`, for one position only.
        """
        s = ids.shape[1]
        ctx = self.model.context(s, self.device, start_pos=self.pos)
        h = self.model.trunk(ids, ctx=ctx, caches=self.trunk_caches)
        hidden = [
            self.model.head_hidden(k, h, ctx=ctx, cache=cache)[0]
            for k, cache in enumerate(self.head_caches)
        ]
        self.pos += s
        return self.model.output(hidden[0]).argmax(-1).tolist(), hidden[1:]

    def drafts(self, hidden: list[Tensor], at: int, n: int) -> list[int]:
        """Argmax of the first ``n`` extra heads at position ``at`` of the last forward."""
        if n == 0:
            return []
        rows = torch.stack([hd[at] for hd in hidden[:n]])  # [n, D]
        return self.model.output(rows).argmax(-1).tolist()

    def rollback(self, n_rejected: int) -> None:
        """Forget the last ``n_rejected`` positions (they are overwritten next time)."""
        self.pos -= n_rejected


@torch.no_grad()
def speculative_generate(
    model: MTPTransformer,
    prompt: Sequence[int],
    max_new_tokens: int,
    eos_id: int | None = None,
    n_draft: int | None = None,
) -> tuple[list[int], SpeculativeStats]:
    """Greedy continuation of ``prompt`` (without the EOS) and its speculation stats.

    ``n_draft``: drafts per forward (default and maximum: ``n_future_tokens - 1``; 0 is
    plain greedy decoding through the same code path).
    """
    n_max = model.n_future_tokens - 1
    n_draft = n_max if n_draft is None else n_draft
    if not 0 <= n_draft <= n_max:
        raise ValueError(f"n_draft must be in 0..{n_max}, got {n_draft}")
    if not prompt:
        raise ValueError("the prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    model.eval()
    run = _AllHeads(model, len(prompt) + max_new_tokens + n_draft + 1)
    stats = SpeculativeStats()
    ids = torch.as_tensor(list(prompt), device=run.device)[None]
    greedy, hidden = run.forward(ids)
    stats.forwards += 1
    nxt, drafts = greedy[-1], run.drafts(hidden, -1, n_draft)
    out: list[int] = []
    while True:
        out.append(nxt)
        if nxt == eos_id or len(out) >= max_new_tokens:
            break
        block = [nxt, *drafts]
        greedy, hidden = run.forward(torch.tensor([block], device=run.device))
        stats.forwards += 1
        stats.proposed += len(drafts)
        a = 0  # greedy[j] is head 0's choice after block[j]
        while a < len(drafts) and drafts[a] == greedy[a]:
            a += 1
        stats.accepted += a
        run.rollback(len(drafts) - a)
        stop = False
        for tok in drafts[:a]:
            out.append(tok)
            if tok == eos_id or len(out) >= max_new_tokens:
                stop = True
                break
        if stop:
            break
        nxt, drafts = greedy[a], run.drafts(hidden, a, n_draft)
    stats.tokens = len(out)
    if out and out[-1] == eos_id:
        out.pop()
    return out, stats
