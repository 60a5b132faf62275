"""Unbiased pass@k estimator (Chen et al. 2021) and per-difficulty aggregation.

For a problem with ``n`` sampled programs of which ``c`` pass, the unbiased estimate is
``1 - C(n - c, k) / C(n, k)``, computed stably as ``1 - prod(1 - k / i for i in n-c+1..n)``.
``k > n`` has no unbiased estimate and raises ``ValueError`` (both in ``pass_at_k`` and in
``aggregate``, which requires every problem to have at least ``k`` samples).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ProblemResult = tuple[int, int, float | None]
"""``(n samples, c correct, difficulty or None)`` for one problem."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem; raises ValueError if ``k > n`` or counts are invalid."""
    if n < 1 or k < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs n >= 1, k >= 1 and 0 <= c <= n; got n={n} c={c} k={k}")
    if k > n:
        raise ValueError(f"pass@{k} is undefined with only n={n} samples (need k <= n)")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _mean_pass(rows: Sequence[ProblemResult], ks: Sequence[int]) -> dict[str, float]:
    """``{"pass@k": mean over rows}``; NaN when ``rows`` is empty."""
    out: dict[str, float] = {}
    for k in ks:
        vals = [pass_at_k(n, c, k) for n, c, _ in rows]
        out[f"pass@{k}"] = sum(vals) / len(vals) if vals else math.nan
    return out


def _bin_of(d: float, bins: Mapping[str, Sequence[float]], top: float) -> str | None:
    """Name of the first bin with ``lo <= d < hi`` (``d == hi`` allowed for the topmost bin)."""
    for name, (lo, hi) in bins.items():
        if lo <= d < hi or (d == hi == top):
            return name
    return None


def aggregate(
    results: Iterable[ProblemResult],
    ks: Sequence[int] = (1,),
    bins: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Mean pass@k over problems, overall and per difficulty bin.

    ``results`` holds ``(n, c, difficulty)`` per problem. ``bins`` maps a name to ``[lo, hi]``;
    a problem belongs to the first bin with ``lo <= difficulty < hi`` (the bin(s) with the
    largest ``hi`` also include ``hi``). Problems with no difficulty or outside every bin are
    counted under ``"unbinned"``. Empty bins report ``n_problems == 0`` and NaN scores.

    Returns ``{"n_problems": N, "pass@k": ..., "by_difficulty": {name: {"n_problems": m,
    "pass@k": ...}}, "unbinned": u}`` (the last two only when ``bins`` is given).
    """
    rows = [(int(n), int(c), d) for n, c, d in results]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {list(ks)}")
    short = [n for n, _, _ in rows if n < max(ks)]
    if short:
        raise ValueError(
            f"pass@{max(ks)} needs >= {max(ks)} samples per problem; min n={min(short)}"
        )
    summary: dict[str, Any] = {"n_problems": len(rows), **_mean_pass(rows, ks)}
    if bins is None:
        return summary
    for name, edges in bins.items():
        if len(edges) != 2 or not edges[0] < edges[1]:
            raise ValueError(f"difficulty bin {name!r} must be [lo, hi] with lo < hi, got {edges}")
    top = max(hi for _, hi in bins.values())
    members: dict[str, list[ProblemResult]] = {name: [] for name in bins}
    unbinned = 0
    for row in rows:
        name = None if row[2] is None else _bin_of(float(row[2]), bins, top)
        if name is None:
            unbinned += 1
        else:
            members[name].append(row)
    summary["by_difficulty"] = {
        name: {"n_problems": len(m), **_mean_pass(m, ks)} for name, m in members.items()
    }
    summary["unbinned"] = unbinned
    return summary
