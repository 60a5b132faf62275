"""Self-speculative decoding statistics of evaluated problems (``evaluate``'s
``speculative_drafts``; ``compare``'s per-stage table). Pure: numbers in, numbers out.

A greedy evaluation with ``speculative_drafts > 0`` decodes every problem's prompt once
more with :func:`~weighted_mtp.evaluation.speculative.speculative_generate` and adds to
its ``results.jsonl`` row (:data:`ROW_FIELDS`):

- ``spec_forwards``: model forwards, the prompt's prefill included (it yields the first
  token, as a plain greedy decode's prefill does);
- ``spec_proposed`` / ``spec_accepted``: drafts proposed by the extra heads / accepted;
- ``spec_tokens``: emitted tokens, the EOS included when one was emitted;
- ``spec_identical``: the speculative output tokens equal the evaluation's greedy tokens.

Aggregates are ratios of sums over problems, exactly as
:class:`~weighted_mtp.evaluation.speculative.SpeculativeStats` sums them (and
``benchmarks/decode.py`` prints): acceptance = sum accepted / sum proposed (0 when nothing
was proposed), tokens per forward = sum tokens / sum forwards. Plain greedy decoding has
tokens per forward exactly 1.0 under this definition (the prefill counts as the forward of
the first token), so the value is directly the tokens-per-forward speed-up factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from weighted_mtp.evaluation.bootstrap import Interval, replicate_means

#: the speculative fields of a results.jsonl row
ROW_FIELDS = ("spec_forwards", "spec_proposed", "spec_accepted", "spec_tokens", "spec_identical")


def has_speculative(row: Mapping[str, Any]) -> bool:
    """Whether a results.jsonl row carries the speculative fields."""
    return all(key in row for key in ROW_FIELDS)


def speculative_totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``acceptance``, ``tokens_per_forward`` (ratios of sums, see the module docstring),
    ``identical_fraction`` (problems whose output equals greedy / problems) and
    ``n_problems`` of rows that all carry :data:`ROW_FIELDS` (at least one)."""
    if not rows:
        raise ValueError("no rows")
    forwards = sum(int(r["spec_forwards"]) for r in rows)
    proposed = sum(int(r["spec_proposed"]) for r in rows)
    accepted = sum(int(r["spec_accepted"]) for r in rows)
    tokens = sum(int(r["spec_tokens"]) for r in rows)
    return {
        "acceptance": accepted / proposed if proposed else 0.0,
        "tokens_per_forward": tokens / forwards if forwards else 0.0,
        "identical_fraction": sum(bool(r["spec_identical"]) for r in rows) / len(rows),
        "n_problems": len(rows),
    }


def tokens_per_forward_interval(
    rows: Sequence[Mapping[str, Any]], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Tokens per forward (sum tokens / sum forwards) with a percentile bootstrap interval:
    each replicate resamples the rows (problems) with replacement and takes the ratio of
    the resampled sums (:func:`~weighted_mtp.evaluation.bootstrap.replicate_means`, one
    shared draw for tokens and forwards)."""
    x = np.array(
        [[[float(r["spec_tokens"]) for r in rows]], [[float(r["spec_forwards"]) for r in rows]]]
    )  # [2 (tokens, forwards), 1 seed, n problems]
    reps = replicate_means(x, n_boot, seed)
    ratio = reps[0] / np.maximum(reps[1], 1e-12)
    lo, hi = np.percentile(ratio, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    mean = x[0].sum() / max(x[1].sum(), 1e-12)
    return Interval(float(mean), float(lo), float(hi))


def speculative_table(
    per_stage_rows: Mapping[str, Sequence[Mapping[str, Any]]],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per stage, how useful its MTP heads are as self-speculative drafters.

    ``per_stage_rows``: ``{stage: rows}``, the rows being the per-problem dicts of a greedy
    evaluation's ``results.jsonl`` (e.g. ``eval/<stage>/greedy/results.jsonl`` of a demo
    run, read with ``json.loads`` per line; rows of several seeds may be concatenated).
    Only rows carrying the ``spec_*`` fields (evaluated with ``speculative_drafts > 0``)
    count; a stage with none is left out of the result, so a caller shows "-" for it.

    Returns ``{stage: {...}}`` in the input's stage order, each with

    - ``n_problems``: rows counted;
    - ``acceptance``: accepted drafts / proposed drafts, summed over the rows;
    - ``tokens_per_forward``: emitted tokens / model forwards, summed over the rows
      (prefill counted as a forward; plain greedy = 1.0);
    - ``tokens_per_forward_ci``: ``{"mean", "lo", "hi"}``, its ``level`` (95%) percentile
      bootstrap interval over rows (``n_boot`` replicates, rows resampled with
      replacement); ``Interval(**d).fmt(".2f")`` of :mod:`~weighted_mtp.evaluation.bootstrap`
      formats it as compare's other cells;
    - ``identical_fraction``: share of rows whose speculative output equals the greedy
      output (below 1.0 only through float rounding of batched vs one-token forwards).

    Example (compare)::

        table = speculative_table({s: list(r[s]["greedy"].values()) for s in stages})
        cell = Interval(**table[s]["tokens_per_forward_ci"]).fmt(".2f")
    """
    out: dict[str, dict[str, Any]] = {}
    for stage, rows in per_stage_rows.items():
        spec = [r for r in rows if has_speculative(r)]
        if not spec:
            continue
        totals = speculative_totals(spec)
        ci = tokens_per_forward_interval(spec, n_boot, level, seed)
        out[stage] = {
            "n_problems": totals["n_problems"],
            "acceptance": totals["acceptance"],
            "tokens_per_forward": totals["tokens_per_forward"],
            "tokens_per_forward_ci": vars(ci),
            "identical_fraction": totals["identical_fraction"],
        }
    return out
