"""Bootstrap confidence intervals over problems and seeds (``compare``).

Scores form an array ``x[stage, seed, problem]`` (one number per problem: greedy pass,
pass@1, pass@k). A replicate draws seeds with replacement and, independently, problems
with replacement — the same draw for every stage — and takes each stage's mean over the
drawn (seed, problem) cells. The 95% interval is the 2.5 / 97.5 percentile of the
replicates. Because every stage sees the same draw, the difference of two stages is a
*paired* bootstrap: problem difficulty and seed luck cancel in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float

    def fmt(self, spec: str = ".3f") -> str:
        return f"{self.mean:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}]"


def replicate_means(x: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """[n_stages, n_boot] means of ``x`` [n_stages, n_seeds, n_problems] over resampled
    seeds and problems (one shared draw per replicate)."""
    _, n_seeds, n_problems = x.shape
    rng = np.random.default_rng(seed)
    ws = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot)
    wp = rng.multinomial(n_problems, np.full(n_problems, 1 / n_problems), size=n_boot)
    return np.einsum("tsp,bs,bp->tb", x, ws, wp) / (n_seeds * n_problems)


def intervals(
    x: np.ndarray, baseline: int, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[list[Interval], list[Interval]]:
    """Per stage: mean with its interval, and the paired difference to stage ``baseline``."""
    reps = replicate_means(x, n_boot, seed)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    means = x.mean(axis=(1, 2))
    per_stage, diffs = [], []
    for t in range(x.shape[0]):
        lo, hi = np.percentile(reps[t], q)
        per_stage.append(Interval(float(means[t]), float(lo), float(hi)))
        d = reps[t] - reps[baseline]
        dlo, dhi = np.percentile(d, q)
        diffs.append(Interval(float(means[t] - means[baseline]), float(dlo), float(dhi)))
    return per_stage, diffs
