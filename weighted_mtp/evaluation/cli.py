"""``python -m weighted_mtp evaluate``: pass@k of a checkpoint on a split with tests."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from weighted_mtp.errors import UserError

if TYPE_CHECKING:
    from weighted_mtp.evaluation.config import EvalConfig

HELP = "sample programs from a checkpoint, run them against the split's tests, report pass@k"


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes integers like 1,5; got {text!r}") from None
    if not ks:
        raise argparse.ArgumentTypeError("--k needs at least one value")
    return ks


def _bins(text: str) -> dict[str, list[int]]:
    try:
        bins = json.loads(text)
        return {str(k): [int(v[0]), int(v[1])] for k, v in bins.items()}
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        raise argparse.ArgumentTypeError(
            f'--bins takes JSON like {{"low": [1, 3]}}; got {text!r}'
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint directory (checkpoint_final/), or a Meta, safetensors or DCP model dir",
    )
    p.add_argument("--data", required=True, help="processed jsonl split with tests")
    p.add_argument("--k", type=_ks, default=[1], help="pass@k values, e.g. 1,5 (default 1)")
    p.add_argument("--n-samples", type=int, default=1, help="samples per problem (>= max k)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16, help="generation batch size")
    p.add_argument("--limit", type=int, default=None, help="first N problems only")
    p.add_argument("--concurrency", type=int, default=2, help="programs run at once")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per test run")
    p.add_argument(
        "--isolation", choices=("bwrap", "none"), default="bwrap",
        help="sandbox: bwrap (OS-level, default) or none (Python guards only; warns)",
    )  # fmt: skip
    p.add_argument(
        "--max-prompt-tokens", type=int, default=None,
        help="skip problems with longer prompts (default: model context - max new tokens)",
    )  # fmt: skip
    p.add_argument(
        "--skip-invalid", action="store_true", help="skip (and count) malformed data lines"
    )
    p.add_argument(
        "--speculative-drafts", type=int, default=0, metavar="N",
        help="greedy only: also decode self-speculatively with N drafts from the extra MTP "
        "heads (1..n_future_tokens-1) and report acceptance and tokens/forward (0 = off)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="output dir (default storage/eval/<time>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
    p.add_argument("--bins", type=_bins, default=None, help='JSON, e.g. {"low": [1, 3]}')
    p.add_argument("--mlflow-uri", default="", help='MLflow tracking URI ("" = off)')
    p.add_argument("--mlflow-experiment", default="", help="MLflow experiment name")
    p.add_argument("--run-name", default="", help="MLflow run name")


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The :class:`EvalConfig` the flags describe."""
    from weighted_mtp.data.curriculum import DEFAULT_DIFFICULTY_BINS
    from weighted_mtp.evaluation.config import EvalConfig

    out = args.out or str(Path("storage/eval") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    return EvalConfig(
        checkpoint=args.checkpoint,
        data=args.data,
        out_dir=out,
        ks=args.k,
        n_samples=args.n_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        limit=args.limit,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        isolation=args.isolation,
        max_prompt_tokens=args.max_prompt_tokens,
        skip_invalid=args.skip_invalid,
        seed=args.seed,
        device=args.device,
        difficulty_bins=args.bins or dict(DEFAULT_DIFFICULTY_BINS),
        mlflow_uri=args.mlflow_uri,
        mlflow_experiment=args.mlflow_experiment,
        run_name=args.run_name,
        speculative_drafts=args.speculative_drafts,
    )


def run(args: argparse.Namespace) -> int:
    from weighted_mtp.evaluation.evaluate import evaluate, format_summary

    cfg = config_from_args(args)
    try:
        summary = evaluate(cfg)
    except ValueError as exc:  # e.g. sampling parameters out of range
        raise UserError(str(exc)) from exc
    print(format_summary(summary, cfg.ks))
    if summary["skipped_long_prompt"]:
        print(
            f"skipped {summary['skipped_long_prompt']} problems whose prompt is longer than "
            f"{summary['max_prompt_tokens']} tokens (listed in summary.json)"
        )
    print(f"generation: {summary['tokens_per_s']:.0f} tokens/s")
    print(f"results in {cfg.out_dir} (results.jsonl, summary.json)", flush=True)
    return 0
