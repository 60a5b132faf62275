"""``python -m weighted_mtp setup``: the micro assets for local runs and tests, offline.

Writes, under ``--storage`` (default ``storage/``), deterministically and idempotently:
the synthetic verifiable task set (``datasets/synthetic/processed/{train,valid,test}.jsonl``
with indexes), a SentencePiece tokenizer trained on it, the micro MTP policy in Meta's
directory format (``models/micro-mtp``, pretrained on correct solutions of problems in no
split) and the micro reference in Hugging Face Llama format (``models/micro-ref``: the
policy's next-token part fine-tuned on the training split's correct solutions, Rho-1's
reference). Nothing is downloaded. The local profile points at these.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "create the micro models, tokenizer and synthetic data (offline, idempotent)"
PRETRAIN_PROBLEMS = 8000  # problems in the disjoint pretraining corpus
PRETRAIN_STEPS = 950  # AdamW steps (16 records each) of the micro policy on it
REFERENCE_STEPS = 100  # fine-tuning steps (16 records each) of the reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", type=Path, default=Path("storage"), help="storage root")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and model init")
    parser.add_argument(
        "--pretrain-problems",
        type=int,
        default=PRETRAIN_PROBLEMS,
        help="problems (in no split) whose correct solutions the micro models pretrain on",
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=PRETRAIN_STEPS, help="pretraining steps (policy)"
    )
    parser.add_argument(
        "--reference-steps",
        type=int,
        default=REFERENCE_STEPS,
        help="fine-tuning steps of the reference on the training split's correct solutions",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="2: train data parallel over two processes; 1: inline"
    )


def setup(
    storage: Path,
    seed: int = 0,
    pretrain_problems: int = PRETRAIN_PROBLEMS,
    pretrain_steps: int = PRETRAIN_STEPS,
    jobs: int = 2,
    reference_steps: int = REFERENCE_STEPS,
) -> dict[str, Path]:
    """Create every micro asset under ``storage``; returns the synthetic split files.

    The micro policy pretrains on correct solutions of ``pretrain_problems`` synthetic
    problems that are in no split (``datasets/synthetic/pretrain.jsonl``); the reference is
    its next-token part fine-tuned for ``reference_steps`` on the training split's correct
    solutions. ``jobs`` > 1 trains data parallel over two worker processes (the same
    weights). Assets built with another seed or budget are rebuilt."""
    from weighted_mtp.assets import assets_complete, build_micro_assets
    from weighted_mtp.data.dataset import ProcessedDataset
    from weighted_mtp.data.index import Index, JsonlWriter
    from weighted_mtp.data.synthetic import pretrain_corpus, write_synthetic

    splits = write_synthetic(storage / "datasets" / "synthetic" / "processed", seed=seed)
    build = {
        "seed": seed,
        "pretrain_problems": pretrain_problems,
        "pretrain_steps": pretrain_steps,
        "reference_steps": reference_steps,
    }
    if not assets_complete(storage, build):
        used = {p for f in splits.values() for p in Index.for_jsonl(f).problems}
        corpus = pretrain_corpus(pretrain_problems, seed, used)
        with JsonlWriter(storage / "datasets" / "synthetic" / "pretrain.jsonl") as w:
            for r in corpus:
                w.write(r)
        train = ProcessedDataset(splits["train"])
        correct = train.records(i for i, ok in enumerate(train.index.is_correct) if ok)
        build_micro_assets(
            storage, [splits["train"]], seed, pretrain_steps, corpus, jobs=jobs, build=build,
            reference_records=correct, reference_steps=reference_steps,
        )  # fmt: skip
    return splits


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    splits = setup(
        args.storage, args.seed, args.pretrain_problems, args.pretrain_steps, args.jobs,
        args.reference_steps,
    )  # fmt: skip
    for name, path in splits.items():
        print(f"  data {name}: {path}")
    models = args.storage / "models"
    print(f"  models: {models / 'micro-mtp'}, {models / 'micro-ref'}")
    print(f"setup done in {time.perf_counter() - t0:.1f}s")
    return 0
