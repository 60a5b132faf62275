"""``python -m weighted_mtp setup``: the micro assets for local runs and tests, offline.

Writes, under ``--storage`` (default ``storage/``), deterministically and idempotently:
the synthetic verifiable task set (``datasets/synthetic/processed/{train,valid,test}.jsonl``
with indexes), a SentencePiece tokenizer trained on it, the micro MTP policy in Meta's
directory format (``models/micro-mtp``) and the micro reference in Hugging Face Llama
format (``models/micro-ref``). Nothing is downloaded. The local profile points at these.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "create the micro models, tokenizer and synthetic data (offline, idempotent)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", type=Path, default=Path("storage"), help="storage root")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and model init")


def setup(storage: Path, seed: int = 0) -> dict[str, Path]:
    """Create every micro asset under ``storage``; returns the synthetic split files."""
    from weighted_mtp.data.synthetic import write_synthetic
    from weighted_mtp.models.assets import build_micro_assets

    splits = write_synthetic(storage / "datasets" / "synthetic" / "processed", seed=seed)
    build_micro_assets(storage, [splits["train"]], seed=seed)
    return splits


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    splits = setup(args.storage, args.seed)
    for name, path in splits.items():
        print(f"  data {name}: {path}")
    models = args.storage / "models"
    print(f"  models: {models / 'micro-mtp'}, {models / 'micro-ref'}")
    print(f"setup done in {time.perf_counter() - t0:.1f}s")
    return 0
