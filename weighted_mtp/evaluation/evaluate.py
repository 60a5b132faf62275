"""pass@k of a policy checkpoint on a processed split with tests.

One problem = one ``metadata.problem_id`` (the processed files hold several solutions per
problem): its prompt is built once with the training template (``encode_prompt``), ``n``
programs are sampled from head 0, each distinct program is run once in the sandbox
against the problem's tests (stdio or HumanEval), and pass@k is the unbiased estimate
(needs ``n >= k``). Writes ``results.jsonl`` (one row per problem) and ``summary.json``
(overall and per difficulty bin) into ``out_dir``; logs to MLflow when a URI is given.

Every setting is checked, and the sandbox's isolation self-tested, before the model is
loaded. A problem whose prompt is longer than ``max_prompt_tokens`` (default: the model's
context minus ``max_new_tokens``) is skipped, counted and listed in the summary
(``skipped_long_prompt``), never truncated: a cut statement is a different problem.

With ``speculative_drafts > 0`` a greedy evaluation (temperature 0) also decodes every
problem's prompt with :func:`~weighted_mtp.evaluation.speculative.speculative_generate`
(batch 1, that many drafts from the extra heads per forward, same ``max_new_tokens`` and
EOS) and records how useful the MTP heads are as drafters: ``spec_*`` fields per problem
(:mod:`~weighted_mtp.evaluation.spec_summary`) and ``speculative/*`` keys in the summary.
The programs scored are still the batched greedy ones; a sampled evaluation ignores the
setting.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from weighted_mtp.data.records import ReadStats
from weighted_mtp.errors import UserError
from weighted_mtp.evaluation.checks import CheckResult
from weighted_mtp.evaluation.config import (
    DEFAULT_CONTEXT,
    EvalConfig,
    check_speculative_drafts,
)
from weighted_mtp.evaluation.generate import SamplingParams
from weighted_mtp.evaluation.passk import aggregate, pass_at_k
from weighted_mtp.evaluation.problems import Problem, load_problems, score_all
from weighted_mtp.evaluation.spec_summary import speculative_totals
from weighted_mtp.progress import Progress
from weighted_mtp.sandbox.isolation import require_isolation

log = logging.getLogger(__name__)


def integer_bins(bins: dict[str, list[int]]) -> dict[str, list[float]]:
    """Inclusive integer bins [lo, hi] (the config's meaning) as aggregate's [lo, hi + 1)."""
    return {name: [float(lo), float(hi) + 1.0] for name, (lo, hi) in bins.items()}


def problem_row(
    problem: Problem,
    programs: list[str],
    checks: list[CheckResult],
    ks: list[int],
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The results.jsonl row of one problem (``spec``: its ``spec_*`` fields, if any)."""
    n, c = len(programs), sum(r.passed for r in checks)
    return {
        "problem_id": problem.problem_id,
        "task_id": problem.record.task_id,
        "difficulty": problem.record.difficulty,
        "kind": problem.kind,
        "n": n,
        "c": c,
        **{f"pass@{k}": pass_at_k(n, c, k) for k in ks},
        **(spec or {}),
        "samples": [
            {
                "completion": prog,
                "passed": r.passed,
                "n_passed": r.n_passed,
                "n_tests": r.n_tests,
                "status": r.first_failure.status if r.first_failure else "ok",
            }
            for prog, r in zip(programs, checks, strict=True)
        ],
    }


def prompt_budget(cfg: EvalConfig, model: Any) -> int:
    """Longest prompt (tokens) that is generated from: ``max_prompt_tokens``, else the
    model's context (params.json ``max_seq_len``, else DEFAULT_CONTEXT) minus
    ``max_new_tokens``."""
    if cfg.max_prompt_tokens is not None:
        return cfg.max_prompt_tokens
    context = int(model.args.extra.get("max_seq_len", DEFAULT_CONTEXT))
    if context <= cfg.max_new_tokens:
        raise UserError(
            f"max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in the model's "
            f"context of {context} tokens: lower --max-new-tokens"
        )
    return context - cfg.max_new_tokens


def speculative_fields(
    model: Any,
    prompts: list[list[int]],
    greedy: list[list[int]],
    max_new_tokens: int,
    eos_id: int | None,
    drafts: int,
) -> list[dict[str, Any]]:
    """Per prompt, the ``spec_*`` fields of a self-speculative greedy decode with ``drafts``
    drafts per forward (batch 1); ``spec_identical``: its tokens equal ``greedy``'s."""
    from weighted_mtp.evaluation.speculative import speculative_generate

    bar = Progress(len(prompts), "speculative", "prompts")
    out = []
    for prompt, ref in zip(prompts, greedy, strict=True):
        toks, st = speculative_generate(model, prompt, max_new_tokens, eos_id, drafts)
        out.append(
            {
                "spec_forwards": st.forwards,
                "spec_proposed": st.proposed,
                "spec_accepted": st.accepted,
                "spec_tokens": st.tokens,
                "spec_identical": toks == ref,
            }
        )
        bar.update()
    bar.close()
    return out


def speculates(cfg: EvalConfig) -> bool:
    """Whether this evaluation also decodes self-speculatively (drafts set, greedy)."""
    return cfg.speculative_drafts > 0 and cfg.temperature == 0


def sample_programs(
    cfg: EvalConfig, problems: list[Problem]
) -> tuple[list[list[str] | None], dict]:
    """Load the policy, sample ``n_samples`` programs per problem; returns programs + stats.

    A problem whose prompt is longer than :func:`prompt_budget` gets ``None`` (skipped).
    When :func:`speculates`, the stats also hold ``speculative_rows`` (``{problem_id:
    spec_* fields}`` of the problems generated from), ``speculative/drafts`` and
    ``speculative/seconds`` (wall time of the speculative decodes).
    """
    from weighted_mtp.data.collate import encode_prompt
    from weighted_mtp.evaluation.generate import generate_batched
    from weighted_mtp.training.checkpoint import load_policy
    from weighted_mtp.training.runtime import resolve_device

    device = resolve_device(cfg.device)
    model, tok = load_policy(cfg.checkpoint, device)
    check_speculative_drafts(cfg.speculative_drafts, model.n_future_tokens)
    if cfg.speculative_drafts and not speculates(cfg):
        log.info("speculative_drafts ignored: a sampled evaluation (temperature > 0)")
    params = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    budget = prompt_budget(cfg, model)
    # A token spells at most `longest` characters (NFKC may merge a few; margin 4): longer
    # texts cannot fit and are skipped without tokenizing (a 50 MB statement costs nothing).
    longest = max(len(tok.id_to_piece(i)) for i in range(tok.vocab_size))
    encoded = [
        encode_prompt(p.record, tok)
        if len(p.record.instruction) + len(p.record.input) <= 4 * longest * budget
        else None
        for p in problems
    ]
    kept = [i for i, ids in enumerate(encoded) if ids is not None and len(ids) <= budget]
    prompts = [encoded[i] for i in kept for _ in range(cfg.n_samples)]
    seed_gen = torch.Generator().manual_seed(cfg.seed)
    top = torch.iinfo(torch.int64).max
    seeds = torch.randint(top, (len(prompts),), generator=seed_gen).tolist()
    bar = Progress(len(prompts), "generate", "samples")
    t0 = time.perf_counter()
    outs = generate_batched(
        model, prompts, params, tok.eos_id, seeds, cfg.batch_size, on_batch=bar.update
    )
    seconds = time.perf_counter() - t0
    bar.close()
    texts = [tok.decode(o) for o in outs]
    n_tokens = sum(len(o) for o in outs)
    per = cfg.n_samples
    grouped: list[list[str] | None] = [None] * len(problems)
    for j, i in enumerate(kept):
        grouped[i] = texts[j * per : (j + 1) * per]
    stats = {
        "gen_tokens": n_tokens,
        "gen_seconds": seconds,
        "tokens_per_s": n_tokens / max(seconds, 1e-9),
        "max_prompt_tokens": budget,
    }
    if speculates(cfg):
        t0 = time.perf_counter()
        spec = speculative_fields(
            model, prompts, outs, cfg.max_new_tokens, tok.eos_id, cfg.speculative_drafts
        )
        stats["speculative_rows"] = {
            problems[i].problem_id: fields for i, fields in zip(kept, spec, strict=True)
        }
        stats["speculative/drafts"] = cfg.speculative_drafts
        stats["speculative/seconds"] = time.perf_counter() - t0
    return grouped, stats


def summarize(
    rows: list[dict[str, Any]], ks: list[int], bins: dict[str, list[int]]
) -> dict[str, Any]:
    """pass@k overall and per difficulty bin (inclusive integer bins) from problem rows."""
    triples = [(r["n"], r["c"], r["difficulty"]) for r in rows]
    summary = aggregate(triples, ks, integer_bins(bins))
    summary["bins"] = bins
    return summary


SPEC_METRICS = (
    "speculative/acceptance",
    "speculative/tokens_per_forward",
    "speculative/identical_fraction",
    "speculative/seconds",
)


def json_safe(obj: Any, key: str = "") -> tuple[Any, list[str]]:
    """``obj`` with every NaN / infinite float as None (JSON has no NaN: ``NaN`` in a file
    breaks strict parsers), and the dotted keys that became None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [key]
    if isinstance(obj, dict):
        out, nulls = {}, []
        for k, v in obj.items():
            out[k], sub = json_safe(v, f"{key}.{k}" if key else str(k))
            nulls += sub
        return out, nulls
    if isinstance(obj, list | tuple):
        items = [json_safe(v, f"{key}[{i}]") for i, v in enumerate(obj)]
        return [v for v, _ in items], [n for _, sub in items for n in sub]
    return obj, []


NULL_NOTE = (
    "null: not defined for this evaluation, e.g. pass@k of a difficulty bin with no "
    "problems (humaneval has no difficulty levels, so every bin is empty)"
)


def summary_json(summary: dict[str, Any]) -> str:
    """summary.json's text: strict JSON, with a note naming the fields that are null."""
    safe, nulls = json_safe(summary)
    if nulls:
        safe["null_fields"] = nulls
        safe["null_note"] = NULL_NOTE
    return json.dumps(safe, indent=2, allow_nan=False) + "\n"


def metrics_of(summary: dict[str, Any], ks: list[int]) -> dict[str, float]:
    """Flat MLflow metrics: eval/pass_at_k overall and per bin (NaN bins left out)."""
    out = {f"eval/pass_at_{k}": summary[f"pass@{k}"] for k in ks}
    for name, b in summary.get("by_difficulty", {}).items():
        out |= {f"eval/{name}/pass_at_{k}": b[f"pass@{k}"] for k in ks}
    for key in ("n_problems", "tokens_per_s", "gen_seconds", "exec_seconds", *SPEC_METRICS):
        if key in summary:
            out[f"eval/{key}"] = float(summary[key])
    return {k: v for k, v in out.items() if not math.isnan(v)}


def evaluate(
    cfg: EvalConfig, scored: dict[tuple[str, str], CheckResult] | None = None
) -> dict[str, Any]:
    """Run one evaluation (see the module docstring); returns the summary. ``scored``:
    results of programs already run against this data's problems with these limits
    (:func:`~weighted_mtp.evaluation.problems.score_all`), shared by evaluations in turn."""
    from weighted_mtp.tracking import create_tracker

    cfg.check()
    require_isolation(cfg.isolation)  # exit 2 naming the cause; "none" prints a warning
    read = ReadStats()
    problems, skipped = load_problems(cfg.data, cfg.limit, cfg.skip_invalid, read)
    if read.skipped:
        log.warning("%d malformed lines of %s skipped (--skip-invalid)", read.skipped, cfg.data)
    if not problems:
        raise UserError(f"{cfg.data}: no problem has tests (metadata.tests or humaneval)")
    if skipped:
        log.warning("%d problems of %s have no tests and are skipped", skipped, cfg.data)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = cfg.run_name or f"eval-{Path(cfg.checkpoint).stem}"
    tracker = create_tracker(
        {
            "mlflow": {"tracking_uri": cfg.mlflow_uri, "experiment": cfg.mlflow_experiment},
            "experiment": {"name": name, "stage": "evaluate", "tags": ["evaluation"]},
            "evaluation": asdict(cfg),
        }
    )
    with tracker:
        sampled, gen_stats = sample_programs(cfg, problems)
        spec = gen_stats.pop("speculative_rows", None)
        too_long = [p.problem_id for p, progs in zip(problems, sampled, strict=True) if not progs]
        if too_long:
            log.warning(
                "%d problems skipped: prompt longer than %d tokens (max_prompt_tokens)",
                len(too_long), gen_stats["max_prompt_tokens"],
            )  # fmt: skip
        kept = [(p, progs) for p, progs in zip(problems, sampled, strict=True) if progs]
        if not kept:
            raise UserError(
                f"every prompt of {cfg.data} is longer than {gen_stats['max_prompt_tokens']} "
                "tokens: raise --max-prompt-tokens (within the model's context)"
            )
        problems, programs = [p for p, _ in kept], [progs for _, progs in kept]
        t0 = time.perf_counter()
        checks = score_all(problems, programs, cfg.limits(), cfg.concurrency, scored)
        exec_seconds = time.perf_counter() - t0
        rows = [
            problem_row(p, progs, chk, cfg.ks, spec[p.problem_id] if spec else None)
            for p, progs, chk in zip(problems, programs, checks, strict=True)
        ]
        with open(out / "results.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(json_safe(row)[0], ensure_ascii=False, allow_nan=False) + "\n")
        summary = summarize(rows, cfg.ks, cfg.difficulty_bins)
        if spec:
            totals = speculative_totals(rows)
            summary |= {
                f"speculative/{key}": totals[key]
                for key in ("acceptance", "tokens_per_forward", "identical_fraction")
            }
        summary |= gen_stats | {
            "exec_seconds": exec_seconds,
            "skipped_no_tests": skipped,
            "skipped_invalid_lines": read.skipped,
            "skipped_long_prompt": len(too_long),
            "skipped_long_prompt_ids": too_long,
            "isolation": cfg.isolation,
            "n_samples": cfg.n_samples,
            "checkpoint": str(cfg.checkpoint),
            "data": str(cfg.data),
            "mlflow_run_id": tracker.run_id,
        }
        (out / "summary.json").write_text(summary_json(summary))
        tracker.log_metrics(metrics_of(summary, cfg.ks), step=0)
        tracker.log_artifact(out / "summary.json")
        tracker.log_artifact(out / "results.jsonl")
    return summary


def evaluate_config(cfg: Any) -> dict[str, Any]:
    """Hydra form (``wmtp-eval``): ``cfg.evaluation`` holds the EvaluationConfig fields."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        section = OmegaConf.to_container(cfg.evaluation, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise UserError(f"{exc.full_key} is required: add {exc.full_key}=<value>") from None
    return evaluate(EvalConfig(**section))


def format_summary(summary: dict[str, Any], ks: list[int]) -> str:
    """A short text table: overall and per-bin pass@k."""
    head = f"{'bin':<10}{'problems':>9}" + "".join(f"{f'pass@{k}':>10}" for k in ks)
    lines = [head]

    def line(name: str, part: dict[str, Any]) -> str:
        return f"{name:<10}{part['n_problems']:>9}" + "".join(
            f"{part[f'pass@{k}']:>10.3f}" for k in ks
        )

    for name, part in summary.get("by_difficulty", {}).items():
        lines.append(line(name, part))
    lines.append(line("all", summary))
    if "speculative/drafts" in summary:
        lines.append(
            f"self-speculative, {summary['speculative/drafts']} drafts: acceptance "
            f"{summary['speculative/acceptance']:.3f}, "
            f"{summary['speculative/tokens_per_forward']:.2f} tokens/forward, output = greedy "
            f"on {summary['speculative/identical_fraction']:.1%} of problems "
            f"({summary['speculative/seconds']:.1f} s)"
        )
    return "\n".join(lines)
