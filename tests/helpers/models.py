"""The tiny Meta-layout MTP model the unit tests build."""

from __future__ import annotations

import torch

from weighted_mtp.models.mtp import ModelArgs, MTPTransformer

#: width 32, 5 layers (3 heads: 3 trunk layers + 2 extra head blocks), GQA 4:2, vocab 61
TINY = dict(
    dim=32,
    n_layers=5,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=61,
    multiple_of=16,
    n_future_tokens=3,
    rope_theta=1000.0,
)


def tiny_mtp(
    seed: int = 0, std: float = 0.1, dtype: torch.dtype = torch.float32, **args
) -> MTPTransformer:
    """:data:`TINY` (``args`` override its fields), weights Normal(0, ``std``) drawn from
    ``seed``."""
    m = MTPTransformer(ModelArgs(**{**TINY, **args}), dtype=dtype)
    m.init_weights(torch.Generator().manual_seed(seed), std=std)
    return m
