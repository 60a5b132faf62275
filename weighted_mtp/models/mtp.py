"""Trainable multi-token prediction transformer in Meta's layout (plain PyTorch).

Layout (Gloeckle et al. 2024, Meta's released ``model.py``): ``layers`` holds
``n_layers - n_future_tokens + 1`` blocks; ``layers[:-1]`` is the shared trunk and
``layers[-1]`` the next-token head. ``extra_heads`` holds ``n_future_tokens - 1`` blocks
for tokens t+2 .. t+n. Every head block takes the trunk output (heads are parallel), then
one shared RMSNorm ``norm`` and one shared bias-free ``output`` projection.

Parameter names equal Meta's state-dict keys, so a ``consolidated.pth`` loads directly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from weighted_mtp.models.attention import AttnContext, KVCache, build_context, rope_tables


@dataclass
class ModelArgs:
    """Hyper-parameters, mirroring Meta's ``params.json``.

    ``n_layers`` counts every block: trunk + next-token head + extra heads.
    Keys this class does not know are kept in ``extra`` and written back on save.
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = -1
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    n_future_tokens: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> ModelArgs:
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in params.items() if k in known}
        extra = {k: v for k, v in params.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_params_json(cls, path: str | Path) -> ModelArgs:
        """Read ``params.json`` (a file, or a directory that contains it)."""
        p = Path(path)
        if p.is_dir():
            p = p / "params.json"
        return cls.from_dict(json.loads(p.read_text()))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        if d["ffn_dim_multiplier"] is None:
            del d["ffn_dim_multiplier"]
        return {**extra, **d}

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """Meta's FFN width rule (dim 4096, multiple_of 256 -> 11008)."""
        h = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            h = int(self.ffn_dim_multiplier * h)
        return self.multiple_of * ((h + self.multiple_of - 1) // self.multiple_of)

    def check(self) -> None:
        """Raise ValueError on inconsistent values."""
        if self.dim % self.n_heads or self.n_heads % int(self.n_kv_heads or 1):
            raise ValueError(
                f"dim {self.dim}, n_heads {self.n_heads}, n_kv_heads "
                f"{self.n_kv_heads}: dim % n_heads and n_heads % n_kv_heads must be 0"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if not 1 <= self.n_future_tokens <= self.n_layers:
            raise ValueError(f"n_future_tokens {self.n_future_tokens} must be in 1..n_layers")
        if self.vocab_size <= 0:
            raise ValueError(f"vocab_size {self.vocab_size} must be set (> 0)")


class RMSNorm(nn.Module):
    """Meta's RMSNorm: normalise in fp32, cast back, then scale."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Meta's rotary embedding on interleaved pairs (x0, x1), (x2, x3), ...

    x: [B, H, S, hd] with cos, sin [S, hd/2], or the unpadded [N, H, hd] with [N, 1, hd/2]
    (fp32). Computed in fp32, cast back.
    """
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class Attention(nn.Module):
    """Grouped-query attention (n_kv_heads <= n_heads) via scaled_dot_product_attention."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = args.n_heads, int(args.n_kv_heads or args.n_heads)
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x: Tensor, ctx: AttnContext, cache: KVCache | None = None) -> Tensor:
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
        if cache is not None:
            k, v = cache.update(k, v, ctx.start_pos)
        out = self._attend(q, k, v, ctx.mask, s)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))

    def unpadded(self, x: Tensor, ctx: AttnContext, b: int, s: int) -> Tensor:
        """The same on the real tokens only: x [N, D] (the ``ctx.rows`` of a right-padded
        [B, S] batch) -> [N, D]; only the attention product sees the padded layout."""
        assert ctx.rows is not None and ctx.rows_cos is not None and ctx.rows_sin is not None
        n, rows = x.shape[0], ctx.rows
        cos, sin = ctx.rows_cos[:, None], ctx.rows_sin[:, None]  # [N, 1, hd/2]

        def padded(t: Tensor, heads: int, rope: bool) -> Tensor:
            t = t.view(n, heads, self.head_dim)
            if rope:
                t = apply_rope(t, cos, sin)
            full = t.new_zeros(b * s, heads, self.head_dim).index_copy(0, rows, t)
            return full.view(b, s, heads, self.head_dim).transpose(1, 2)

        q = padded(self.wq(x), self.n_heads, True)
        k = padded(self.wk(x), self.n_kv_heads, True)
        v = padded(self.wv(x), self.n_kv_heads, False)
        out = self._attend(q, k, v, None, s).transpose(1, 2).reshape(b * s, -1)
        return self.wo(out.index_select(0, rows))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, s: int) -> Tensor:
        rep = self.n_heads // self.n_kv_heads
        if rep > 1:  # same order as Meta's / HF's repeat_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and s > 1
        )


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(attention_norm(x)), then + ffn(ffn_norm(h))."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    # set by ``MTPTransformer.set_compile``: a ``torch.compile``d ``(block, x, ctx)`` ->
    # ``block._forward(x, ctx)``, shared by every block (one graph for all of them); the
    # module's hooks (FSDP2's all-gather / reduce-scatter) stay outside it, run eagerly
    compiled_forward: Callable[[TransformerBlock, Tensor, AttnContext], Tensor] | None = None

    def forward(self, x: Tensor, ctx: AttnContext, cache: KVCache | None = None) -> Tensor:
        if self.compiled_forward is not None and cache is None:
            return self.compiled_forward(self, x, ctx)
        return self._forward(x, ctx, cache)

    def _forward(self, x: Tensor, ctx: AttnContext, cache: KVCache | None = None) -> Tensor:
        if ctx.rows is not None and cache is None:  # right padding: skip it (same values)
            b, s, d = x.shape
            flat = x.reshape(b * s, d)
            r = flat.index_select(0, ctx.rows)
            h = r + self.attention.unpadded(self.attention_norm(r), ctx, b, s)
            h = h + self.feed_forward(self.ffn_norm(h))
            return flat.index_copy(0, ctx.rows, h).view(b, s, d)
        h = x + self.attention(self.attention_norm(x), ctx, cache)
        return h + self.feed_forward(self.ffn_norm(h))


#: torch.compile backend of ``training.compile``: ``inductor`` (the default, generates
#: Triton / C++ kernels), or from the environment variable WEIGHTED_MTP_COMPILE_BACKEND
#: (an internal knob: the CPU tests use ``aot_eager``, which traces the same graphs
#: without generating code, since inductor's C++ compile is slow on a small CPU)
COMPILE_BACKEND = os.environ.get("WEIGHTED_MTP_COMPILE_BACKEND", "inductor")

_COMPILED: dict[str, Callable] = {}


def _block_forward(block: TransformerBlock, x: Tensor, ctx: AttnContext) -> Tensor:
    return block._forward(x, ctx)


def compiled_block_forward(backend: str | None = None) -> Callable:
    """``torch.compile(_block_forward)`` for ``backend`` (None: :data:`COMPILE_BACKEND`),
    made once per backend. The block is an argument, not a closure: with dynamo's inlined
    nn modules its parameters are graph inputs, so all blocks share one graph (compiled
    once per shape family), and a ``deepcopy`` of the model shares nothing stale. Shapes
    that vary (sequence length, the real-token count of a padded batch) get one dynamic
    graph after the first recompile (dynamo's automatic dynamic shapes)."""
    name = backend or COMPILE_BACKEND
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(_block_forward, backend=name)
    return _COMPILED[name]


class MTPTransformer(nn.Module):
    """Meta-layout MTP model; parameter names equal Meta's checkpoint keys."""

    def __init__(self, args: ModelArgs, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        args.check()
        self.args = args
        self.n_future_tokens = args.n_future_tokens
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        n_layers = args.n_layers - args.n_future_tokens + 1
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(n_layers))
        self.extra_heads = nn.ModuleList(
            TransformerBlock(args) for _ in range(args.n_future_tokens - 1)
        )
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.activation_checkpointing = False
        self.compiled = False  # set_compile
        self._checkpointed: set[int] = set()  # id() of the blocks recomputed in backward
        if dtype is not None:
            self.to(dtype)

    # --- building blocks the loss and the weighting reuse -------------------------------
    def head_blocks(self) -> list[TransformerBlock]:
        """Head k (0-based) predicts token t+k+1: [layers[-1], *extra_heads]."""
        return [self.layers[-1], *self.extra_heads]

    def set_activation_checkpointing(self, enabled: bool, blocks: int | None = None) -> None:
        """Recompute block activations in backward instead of storing them: every block,
        or (``blocks``) only the first ``blocks`` of trunk blocks then head blocks (a trunk
        block's activations live until the trunk's backward; a head block's only during its
        own head's pass, so checkpointing trunk blocks saves the most)."""
        order = [*self.layers[:-1], *self.head_blocks()]
        n = len(order) if blocks is None else max(0, min(blocks, len(order)))
        self._checkpointed = {id(b) for b in order[:n]} if enabled else set()
        self.activation_checkpointing = bool(self._checkpointed)

    def set_compile(self, enabled: bool, backend: str | None = None) -> None:
        """Regional ``torch.compile`` (``training.compile``): every trunk and head block runs
        its forward through one compiled function (:func:`compiled_block_forward`); the
        embeddings, the shared norm/output and the head-by-head chunked loss stay eager.
        Call before sharding (FSDP2 hooks stay eager around each block's compiled body)
        and it composes with activation checkpointing (``run_block`` checkpoints the block
        call, the recompute runs the compiled forward again). KV-cache decoding stays
        eager. ``backend``: None = :data:`COMPILE_BACKEND`."""
        fn = compiled_block_forward(backend) if enabled else None
        for block in [*self.layers, *self.extra_heads]:
            block.compiled_forward = fn
        self.compiled = enabled

    def context(
        self,
        seq_len: int,
        device: torch.device,
        attention_mask: Tensor | None = None,
        start_pos: int = 0,
        kv_len: int | None = None,
    ) -> AttnContext:
        """Rotary tables + attention mask for one forward over ``seq_len`` new positions."""
        cos, sin = rope_tables(self.args.head_dim, self.args.rope_theta, start_pos, seq_len, device)
        return build_context(cos, sin, seq_len, attention_mask, start_pos, kv_len)

    def run_block(
        self, block: TransformerBlock, x: Tensor, ctx: AttnContext, cache: KVCache | None = None
    ) -> Tensor:
        if id(block) in self._checkpointed and torch.is_grad_enabled() and cache is None:
            return checkpoint(block, x, ctx, use_reentrant=False)
        return block(x, ctx, cache)

    def trunk(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        ctx: AttnContext | None = None,
        caches: list[KVCache] | None = None,
    ) -> Tensor:
        """Embeddings + shared trunk blocks. input_ids [B,S] -> hidden [B,S,D] (not normed).

        attention_mask [B,S] (1 = token, 0 = padding) is optional: for right padding the
        causal mask alone already gives the same values at every real token.
        """
        if ctx is None:
            ctx = self.context(input_ids.shape[1], input_ids.device, attention_mask)
        h = self.tok_embeddings(input_ids)
        for i, layer in enumerate(self.layers[:-1]):
            h = self.run_block(layer, h, ctx, caches[i] if caches else None)
        return h

    def head_hidden(
        self,
        k: int,
        trunk_hidden: Tensor,
        attention_mask: Tensor | None = None,
        ctx: AttnContext | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Head k's block and the shared norm: [B,S,D] -> normed [B,S,D] (before ``output``)."""
        if ctx is None:
            ctx = self.context(trunk_hidden.shape[1], trunk_hidden.device, attention_mask)
        return self.norm(self.run_block(self.head_blocks()[k], trunk_hidden, ctx, cache))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Naive forward (tests, generation): logits [B,S,n_future_tokens,V]."""
        ctx = self.context(input_ids.shape[1], input_ids.device, attention_mask)
        h = self.trunk(input_ids, ctx=ctx)
        heads = [self.output(self.head_hidden(k, h, ctx=ctx)) for k in range(self.n_future_tokens)]
        return torch.stack(heads, dim=2)

    def new_kv_caches(self, batch: int, max_len: int) -> list[KVCache]:
        """One cache per block (trunk blocks, then head blocks) for incremental decoding."""
        p = self.output.weight
        return [
            KVCache.empty(
                batch,
                int(self.args.n_kv_heads or 0),
                max_len,
                self.args.head_dim,
                p.dtype,
                p.device,
            )
            for _ in range(len(self.layers) + len(self.extra_heads))
        ]

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02) -> None:
        """Normal(0, std) init; residual projections (wo, w2) scaled by 1/sqrt(2*n_layers)."""
        resid_std = std / math.sqrt(2 * self.args.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                s = resid_std if name.endswith(("wo.weight", "w2.weight")) else std
                p.copy_(torch.randn(p.shape, generator=generator) * s)
