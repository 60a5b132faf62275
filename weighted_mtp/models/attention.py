"""Attention plumbing for ``mtp.py``: rotary tables, masks and a KV cache.

One ``AttnContext`` is built per forward and shared by every block (trunk and heads), so
the mask and the rotary tables are computed once per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class AttnContext:
    """What each attention layer needs besides its input.

    cos, sin: [S, head_dim/2] fp32 for the S new positions. mask: None (plain causal, via
    ``is_causal``) or a bool [B,1,S,kv_len] (True = may attend). start_pos: absolute
    position of the first new token (0 without a cache).

    rows: for a right-padded batch without a cache, the flat indices (into B*S) of its real
    tokens, with their rotary tables ``rows_cos`` / ``rows_sin`` [N, head_dim/2]: blocks
    then run every projection on the real tokens only and pad them just for the attention
    product (``unpadded``), which computes the same values at every real token.
    """

    cos: Tensor
    sin: Tensor
    mask: Tensor | None
    start_pos: int = 0
    rows: Tensor | None = None
    rows_cos: Tensor | None = None
    rows_sin: Tensor | None = None


def rope_tables(
    head_dim: int, theta: float, start_pos: int, seq_len: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Meta's ``precompute_freqs_cis`` as real cos/sin tables [seq_len, head_dim/2]."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim)
    )
    pos = torch.arange(start_pos, start_pos + seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    return freqs.cos(), freqs.sin()


def is_right_padded(attention_mask: Tensor) -> bool:
    """True when every row is 1...1 0...0 (tokens first, padding last)."""
    m = attention_mask.bool()
    return bool((m[:, 1:] <= m[:, :-1]).all())


def build_context(
    cos: Tensor,
    sin: Tensor,
    seq_len: int,
    attention_mask: Tensor | None = None,
    start_pos: int = 0,
    kv_len: int | None = None,
) -> AttnContext:
    """Causal + padding mask for queries start_pos..start_pos+seq_len-1 over kv_len keys.

    With right padding and no cache the causal mask alone is exact at every real token
    (real tokens come first), so the fast ``is_causal`` path is used, and the blocks skip
    the padding in their projections (``AttnContext.rows``). Otherwise padded keys
    are masked explicitly; each query may always attend to itself, so rows of padding never
    become all -inf (NaN) — their outputs are garbage and must be masked out of losses.
    attention_mask: [B, kv_len] (or [B, seq_len] without a cache), 1 = token, 0 = padding.
    """
    kv_len = start_pos + seq_len if kv_len is None else kv_len
    if (
        start_pos == 0
        and kv_len == seq_len
        and (attention_mask is None or is_right_padded(attention_mask))
    ):
        if attention_mask is None or bool(attention_mask.all()):
            return AttnContext(cos, sin, None, start_pos)
        rows = attention_mask.reshape(-1).nonzero().squeeze(1)
        pos = rows % seq_len
        return AttnContext(cos, sin, None, start_pos, rows, cos[pos], sin[pos])
    device = cos.device
    q_pos = torch.arange(start_pos, start_pos + seq_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None, None]  # [1,1,S,K]
    if attention_mask is not None:
        keys = attention_mask[:, :kv_len].bool()[:, None, None, :]
        allowed = (allowed & keys) | (k_pos == q_pos)[None, None]
    return AttnContext(cos, sin, allowed, start_pos)


@dataclass
class KVCache:
    """Pre-allocated keys/values of one block: [B, n_kv_heads, max_len, head_dim]."""

    k: Tensor
    v: Tensor

    @classmethod
    def empty(
        cls,
        batch: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> KVCache:
        shape = (batch, n_kv_heads, max_len, head_dim)
        return cls(
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
        )

    def update(self, k: Tensor, v: Tensor, start_pos: int) -> tuple[Tensor, Tensor]:
        """Write the new positions, return all keys/values up to them."""
        end = start_pos + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions, asked for {end}")
        self.k[:, :, start_pos:end] = k
        self.v[:, :, start_pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]
