"""The rules of a difficulty curriculum, in one place: validation reports them before a
run, the sampler refuses a schedule that breaks them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

BINS_KEY = "data_sampling.difficulty_bins"
SCHEDULE_KEY = "data_sampling.curriculum_schedule"
_TOL = 1e-6
#: The curriculum's difficulty scale 1..11 (CodeContests' ratings mapped onto it) in thirds.
DEFAULT_DIFFICULTY_BINS: dict[str, list[int]] = {"low": [1, 3], "medium": [4, 7], "high": [8, 11]}

#: (field, value, rule, fix)
Problem = tuple[str, Any, str, str]


def curriculum_problems(
    bins: Mapping[str, Sequence[int]], schedule: Sequence[Mapping[str, Any]]
) -> list[Problem]:
    """Every way ``bins`` / ``schedule`` break the rules: bins are disjoint ``[low, high]``
    ranges; phases are ordered, start where the previous ends and cover [0, 1]; each
    phase's weights name bins, are >= 0 and sum to 1."""
    out: list[Problem] = []
    spans: list[tuple[int, int, str]] = []
    for name, span in bins.items():
        key = f"{BINS_KEY}.{name}"
        if len(span) != 2 or span[0] > span[1]:
            out.append((key, list(span), "must be [low, high] with low <= high", f"{key}=[1,3]"))
            continue
        spans.append((span[0], span[1], name))
    spans.sort()
    for (_, hi_a, a), (lo_b, _, b) in zip(spans, spans[1:], strict=False):
        if lo_b <= hi_a:
            out.append(
                (
                    f"{BINS_KEY}.{b}",
                    list(bins[b]),
                    f"overlaps bin {a} {list(bins[a])}",
                    f"make bins disjoint, e.g. start {b} at {hi_a + 1}",
                )
            )
    if not schedule:
        out.append(
            (
                SCHEDULE_KEY,
                [],
                "must have at least one phase when curriculum_learning is true",
                "add phases or --override data_sampling.curriculum_learning=false",
            )
        )
        return out
    expected_start = 0.0
    for i, phase in enumerate(schedule):
        pk = f"{SCHEDULE_KEY}[{i}]"
        rng = list(phase["epoch_range"])
        if len(rng) != 2 or not rng[0] < rng[1]:
            out.append(
                (
                    f"{pk}.epoch_range",
                    rng,
                    "must be [start, end] with start < end",
                    f"{pk}.epoch_range=[0.0,0.3]",
                )
            )
        else:
            if not math.isclose(rng[0], expected_start, abs_tol=_TOL):
                out.append(
                    (
                        f"{pk}.epoch_range",
                        rng,
                        f"must start where the previous phase ends ({expected_start}); phases "
                        "are ordered and cover [0, 1] without gaps or overlaps",
                        f"{pk}.epoch_range=[{expected_start},{rng[1]}]",
                    )
                )
            expected_start = rng[1]
        weights = dict(phase.get("difficulty_weights") or {})
        for name, w in weights.items():
            if name not in bins:
                out.append(
                    (
                        f"{pk}.difficulty_weights.{name}",
                        w,
                        f"names no difficulty bin (bins: {', '.join(bins)})",
                        f"use a bin name from {BINS_KEY}",
                    )
                )
            elif w < 0:
                out.append(
                    (f"{pk}.difficulty_weights.{name}", w, "must be >= 0",
                     f"{pk}.difficulty_weights.{name}=0.0")
                )  # fmt: skip
        total = sum(weights.values())
        if not math.isclose(total, 1.0, abs_tol=_TOL):
            out.append(
                (
                    f"{pk}.difficulty_weights",
                    weights,
                    f"must sum to 1 (sum is {total:g})",
                    "rescale the phase's weights so they add up to 1",
                )
            )
    if not math.isclose(expected_start, 1.0, abs_tol=_TOL):
        last = f"{SCHEDULE_KEY}[{len(schedule) - 1}].epoch_range"
        out.append(
            (
                last,
                list(schedule[-1]["epoch_range"]),
                "the last phase must end at 1.0 (phases cover [0, 1])",
                f"{last}=[...,1.0]",
            )
        )
    return out
