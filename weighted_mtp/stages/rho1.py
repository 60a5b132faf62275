"""Rho-1: weight tokens by excess loss against a frozen reference model.

The reference (``models.reference``, Hugging Face format, same vocabulary as the policy)
scores each training record once; its per-token losses are cached on disk under
``models.reference.cache_dir`` (see :mod:`weighted_mtp.training.reference_cache`) and
reused by later epochs and runs. Before the first step each rank scores the records it will
train on (its share) and releases the reference, so it never sits in memory during
training. The weighting (``weighting._target_``, Rho1Weighting) keeps the top
``training.k_percent`` of each head's tokens by excess loss, over the whole optimizer step
or per micro-batch (``training.selection_scope``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from weighted_mtp import distributed as dist
from weighted_mtp.data.index import Index
from weighted_mtp.models.reference import load_reference, reference_token_ce
from weighted_mtp.models.tokenizer import config_tokenizer_path, find_tokenizer_file
from weighted_mtp.training.loop import train
from weighted_mtp.training.reference_cache import ReferenceLossCache, cache_key
from weighted_mtp.training.task import Task


def token_ce(model: nn.Module, temperature: float, ids: Tensor, mask: Tensor, labels: Tensor):
    """The reference's CE of the token *at* each position (shifted from next-token CE)."""
    ce = reference_token_ce(model, ids, mask, labels, temperature=temperature)
    out = torch.zeros_like(ce)
    out[:, 1:] = ce[:, :-1]
    return out


def build_task(cfg: DictConfig, model, tokenizer, device) -> Task:
    ref_cfg = cfg.models.reference
    weighting = instantiate(cfg.weighting)
    records = cfg.training.policy_records
    if not weighting.needs_reference:  # rho1_control: the same stage without the reference
        return Task(train_policy=True, weighting=weighting, policy_records=records)
    temperature = float(cfg.training.temperature)
    reference = load_reference(ref_cfg.path, ref_cfg.dtype, tokenizer, device)
    Index.for_jsonl(cfg.dataset.train)  # the key hashes the index: build it first
    key = cache_key(
        ref_cfg.path,
        cfg.dataset.train,
        find_tokenizer_file(config_tokenizer_path(cfg)),
        cfg.dataset.max_length,
        temperature,
        ref_cfg.dtype,
        torch.device(device).type,
    )
    cache = ReferenceLossCache(
        partial(token_ce, reference, temperature),
        Path(ref_cfg.cache_dir) / key,
        rank=dist.env_info().rank,
    )
    return Task(
        train_policy=True,
        weighting=weighting,
        policy_records=records,
        reference=cache,
        prepare=cache.precompute,
        provenance={"reference": str(ref_cfg.path), "reference_cache": str(cache.dir)},
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    return train(cfg, build_task)
