"""Exact, deterministic, resumable sampling of record ids (the ``data_sampling`` section).

The run is one stream of ``total = round(n_epochs * n_samples)`` record ids; epoch ``e``
is positions ``[e * n_samples, (e + 1) * n_samples)`` (the last may be partial).
Progress ``p = position / total`` picks the curriculum phase: phase ``i`` covers the
positions from the end of phase ``i - 1`` up to ``round(b_i * total)``. The stream is cut
into *segments* (one per epoch x phase overlap). In each segment:

1. the segment length is apportioned over difficulty bins by the phase's weights
   (largest remainder; without curriculum there is one bin holding every record);
2. with ``balance_correct`` each bin's count is split into correct / incorrect so that
   the segment holds exactly ``round(correct_ratio * length)`` correct records and each
   bin is within one record of ``correct_ratio`` (controlled rounding). Without
   ``balance_correct``, ``correct_ratio`` 1.0 / 0.0 means correct-only / incorrect-only
   and any other value draws from all records of the bin in the data's own proportion
   (a warning says so): the exact ratio is only imposed with ``balance_correct: true``;
3. each cell (bin x correctness) takes its next records from a seeded permutation of
   its pool for this epoch, and the segment is shuffled (seeded).

Shortage rule (one rule): when an epoch asks a cell for more records than it holds, the
cell is sampled *with replacement by cycling*: the whole pool once in a seeded order,
then a fresh permutation, and so on, so each record repeats at most once more than any
other. A warning names the cell, the epoch, the requested and the available counts. A
cell that is empty but requested is a UserError. Otherwise records do not repeat within
an epoch.

Ranks: the global stream is interleaved, rank ``r`` of ``W`` yields positions ``r, r + W,
...``. ``state_dict()`` stores how many ids this rank has yielded; a resumed sampler
regenerates only the current epoch's order (cheap, deterministic) and continues there.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from weighted_mtp.data.curriculum import curriculum_problems
from weighted_mtp.data.index import Index
from weighted_mtp.errors import UserError

log = logging.getLogger(__name__)


def apportion(total: int, weights: Sequence[float]) -> np.ndarray:
    """Split ``total`` into integer counts proportional to ``weights`` (largest remainder).

    Ties go to the earlier entry; zero weights always get 0.
    """
    w = np.asarray(weights, dtype=np.float64)
    counts = np.zeros(len(w), dtype=np.int64)
    if total <= 0 or w.sum() <= 0:
        return counts
    quotas = total * w / w.sum()
    counts = np.floor(quotas).astype(np.int64)
    rest = total - int(counts.sum())
    frac = np.where(w > 0, quotas - counts, -1.0)
    order = np.argsort(-frac, kind="stable")
    counts[order[:rest]] += 1
    return counts


def _plain(x: Any) -> Any:
    """OmegaConf containers (or any mapping / sequence) -> plain dicts and lists."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, Sequence) and not isinstance(x, str):
        return [_plain(v) for v in x]
    return x


@dataclass(frozen=True)
class Segment:
    """Positions ``[start, end)`` of one epoch within one phase and its cell counts."""

    start: int
    end: int
    epoch: int
    phase: int
    counts: np.ndarray  # per cell, sums to end - start


class RecordSampler:
    """Yields this rank's record ids (rows of ``index``) for the whole run; see module doc.

    Config keyword args come from ``data_sampling``; ``index``, ``n_epochs``, ``rank`` and
    ``world_size`` are passed at run time.
    """

    def __init__(
        self,
        n_samples: int,
        correct_ratio: float = 1.0,
        balance_correct: bool = False,
        seed: int = 42,
        curriculum_learning: bool = False,
        difficulty_bins: Mapping[str, Sequence[int]] | None = None,
        curriculum_schedule: Sequence[Mapping[str, Any]] | None = None,
        allow_unbinned: bool = False,
        *,
        index: Index,
        n_epochs: float,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n_samples <= 0 or n_epochs <= 0:
            raise UserError("data_sampling.n_samples and training.n_epochs must be > 0")
        if not 0.0 <= correct_ratio <= 1.0:
            raise UserError(f"data_sampling.correct_ratio={correct_ratio} must be in [0, 1]")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in [0, world_size={world_size})")
        self.n_samples = int(n_samples)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.total = max(1, round(n_epochs * n_samples))
        bins = _plain(difficulty_bins or {}) if curriculum_learning else {}
        phases = _plain(curriculum_schedule or []) if curriculum_learning else []
        problems = curriculum_problems(bins, phases) if curriculum_learning else []
        if problems:
            raise UserError(
                "; ".join(f"{k} = {v!r}: {rule}. Fix: {fix}" for k, v, rule, fix in problems)
            )
        self._fingerprint = hashlib.sha256(
            repr(
                (
                    n_samples,
                    correct_ratio,
                    balance_correct,
                    seed,
                    bins,
                    phases,
                    self.total,
                    len(index),
                )
            ).encode()
        ).hexdigest()[:16]
        self.bin_names, bin_of = self._bin_records(index, bins, allow_unbinned)
        self.cell_names, self._pools = self._make_cells(
            index, bin_of, correct_ratio, balance_correct
        )
        self._ratio, self._balance = correct_ratio, balance_correct
        self.segments = self._plan(self._phases(phases, curriculum_learning))
        self._check_supply()
        self._consumed = 0
        self._cache: tuple[int, np.ndarray] | None = None

    # --- plan ------------------------------------------------------------------------
    def _bin_records(
        self, index: Index, bins: dict, allow_unbinned: bool
    ) -> tuple[list[str], np.ndarray]:
        if not bins:
            return ["all"], np.zeros(len(index), dtype=np.int64)
        names = list(bins)
        bin_of = np.full(len(index), -1, dtype=np.int64)
        diff = index.difficulty
        for b, name in reversed(list(enumerate(names))):  # first matching bin wins
            lo, hi = bins[name]
            bin_of[(diff >= lo) & (diff <= hi)] = b
        outside = bin_of < 0
        if outside.any():
            values, counts = np.unique(diff[outside], return_counts=True)
            pairs = zip(values.tolist(), counts.tolist(), strict=True)
            seen = ", ".join(f"{v}: {c}" for v, c in pairs)
            what = (
                f"{int(outside.sum())} of {len(index)} training records have a difficulty "
                f"outside every data_sampling.difficulty_bins {bins} (difficulty: records "
                f"{seen})"
            )
            if not allow_unbinned:
                raise UserError(
                    f"{what}: the curriculum would never sample them. Cover them with a "
                    "bin, re-run `prepare codecontests` (it maps CodeContests' difficulty "
                    "onto the 1..11 curriculum scale), or set "
                    "data_sampling.allow_unbinned=true to drop them knowingly"
                )
            log.warning("%s: never sampled (data_sampling.allow_unbinned=true)", what)
        return names, bin_of

    def _make_cells(
        self, index: Index, bin_of: np.ndarray, ratio: float, balance: bool
    ) -> tuple[list[tuple[str, str]], list[np.ndarray]]:
        correct = index.is_correct
        if balance:
            kinds = ["correct", "incorrect"]
        elif ratio >= 1.0:
            kinds = ["correct"]
        elif ratio <= 0.0:
            kinds = ["incorrect"]
        else:
            kinds = ["any"]
            log.warning(
                "correct_ratio=%s is only imposed with balance_correct=true; drawing records "
                "in the data's own proportion (%.1f%% correct)",
                ratio,
                100.0 * float(correct.mean()) if len(correct) else 0.0,
            )
        masks = {"correct": correct, "incorrect": ~correct, "any": np.ones_like(correct)}
        names, pools = [], []
        for b, bname in enumerate(self.bin_names):
            in_bin = bin_of == b
            for kind in kinds:
                names.append((bname, kind))
                pools.append(np.flatnonzero(in_bin & masks[kind]))
        return names, pools

    def _phases(self, phases: list[dict], curriculum: bool) -> list[tuple[int, np.ndarray]]:
        """[(end position, weight per bin)], in order."""
        if not curriculum:
            return [(self.total, np.ones(1))]
        out = []
        for ph in phases:  # checked by curriculum_problems: ordered, covering [0, 1]
            weights = ph.get("difficulty_weights", {})
            w = np.array([float(weights.get(n, 0.0)) for n in self.bin_names])
            out.append((round(float(ph["epoch_range"][1]) * self.total), w))
        out[-1] = (self.total, out[-1][1])
        return out

    def _split_cells(self, bin_counts: np.ndarray) -> np.ndarray:
        """Bin counts -> counts per cell (controlled rounding of the correct share)."""
        per_bin = len(self.cell_names) // len(self.bin_names)
        if per_bin == 1:
            return bin_counts.copy()
        quotas = bin_counts * self._ratio
        correct = np.floor(quotas + 1e-9).astype(np.int64)
        target = int(apportion(int(bin_counts.sum()), [self._ratio, 1 - self._ratio])[0])
        frac = np.where(bin_counts > 0, quotas - correct, -1.0)
        order = np.argsort(-frac, kind="stable")
        correct[order[: max(0, target - int(correct.sum()))]] += 1
        correct = np.minimum(correct, bin_counts)
        return np.stack([correct, bin_counts - correct], axis=1).reshape(-1)

    def _plan(self, phases: list[tuple[int, np.ndarray]]) -> list[Segment]:
        cuts = {0, self.total} | {end for end, _ in phases}
        cuts |= set(range(self.n_samples, self.total, self.n_samples))
        cuts = sorted(c for c in cuts if 0 <= c <= self.total)
        segments, phase = [], 0
        for start, end in zip(cuts, cuts[1:], strict=False):
            if end <= start:
                continue
            while phases[phase][0] <= start:
                phase += 1
            bins = apportion(end - start, phases[phase][1])
            counts = self._split_cells(bins)
            segments.append(Segment(start, end, start // self.n_samples, phase, counts))
        return segments

    def _check_supply(self) -> None:
        n_epochs = (self.total + self.n_samples - 1) // self.n_samples
        need = np.zeros((n_epochs, len(self.cell_names)), dtype=np.int64)
        for seg in self.segments:
            need[seg.epoch] += seg.counts
        for c, (bname, kind) in enumerate(self.cell_names):
            have, worst = len(self._pools[c]), int(need[:, c].max())
            cell = f"(bin={bname}, {kind})"
            if worst and not have:
                raise UserError(
                    f"sampling cell {cell} is requested ({worst} records in an epoch) but the "
                    "data has none; give that bin weight 0 or change correct_ratio"
                )
            if worst > have:
                e = int(need[:, c].argmax())
                log.warning(
                    "sampling cell %s: epoch %d needs %d records but only %d exist; sampling "
                    "with replacement within the cell (cycling through its records)",
                    cell,
                    e,
                    worst,
                    have,
                )

    # --- stream ----------------------------------------------------------------------
    def epoch_ids(self, epoch: int) -> np.ndarray:
        """The global stream of record ids for ``epoch`` (all ranks), regenerated on demand."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        segs = [s for s in self.segments if s.epoch == epoch]
        need = np.sum([s.counts for s in segs], axis=0)
        streams = []
        for c, pool in enumerate(self._pools):
            rng = np.random.default_rng([self.seed, epoch, c])
            k, reps = int(need[c]), []
            while sum(len(r) for r in reps) < k:
                reps.append(rng.permutation(pool))
            streams.append(np.concatenate(reps)[:k] if reps else pool[:0])
        cursor = np.zeros(len(self._pools), dtype=np.int64)
        parts = []
        for s in segs:
            seg = np.concatenate(
                [streams[c][cursor[c] : cursor[c] + k] for c, k in enumerate(s.counts)]
            )
            cursor += s.counts
            np.random.default_rng([self.seed, epoch, 1 << 20, s.start]).shuffle(seg)
            parts.append(seg)
        ids = np.concatenate(parts).astype(np.int64)
        self._cache = (epoch, ids)
        return ids

    def __len__(self) -> int:
        return (self.total - self.rank + self.world_size - 1) // self.world_size

    def __iter__(self) -> Iterator[int]:
        for local in range(self._consumed, len(self)):
            pos = self.rank + local * self.world_size
            epoch = pos // self.n_samples
            rid = int(self.epoch_ids(epoch)[pos - epoch * self.n_samples])
            self._consumed = local + 1
            yield rid

    @property
    def progress(self) -> float:
        """Share of the run consumed, in [0, 1]."""
        return min(1.0, self._consumed * self.world_size / self.total)

    @property
    def epoch(self) -> float:
        """Epochs consumed (fractional)."""
        return self._consumed * self.world_size / self.n_samples

    def state_dict(self) -> dict[str, Any]:
        """Position (ids yielded by this rank) plus a fingerprint of config and data."""
        return {
            "consumed": self._consumed,
            "world_size": self.world_size,
            "fingerprint": self._fingerprint,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue after the ids a saved sampler had yielded (world size may change if
        the consumed global position divides evenly)."""
        if state["fingerprint"] != self._fingerprint:
            raise UserError(
                "sampler state was saved with a different data_sampling config, n_epochs or "
                "dataset; resume with the same settings or start a new run"
            )
        global_pos = int(state["consumed"]) * int(state["world_size"])
        if global_pos % self.world_size:
            raise UserError(
                f"cannot resume position {global_pos} on {self.world_size} ranks evenly; "
                f"resume with world_size={state['world_size']}"
            )
        self._consumed = min(global_pos // self.world_size, len(self))


def validation_indices(
    index: Index, correct_only: bool = True, n: int | None = None, seed: int = 0
) -> np.ndarray:
    """Deterministic validation subset: ``n`` record ids (all if ``n`` is None or larger),
    only correct records when ``correct_only``; returned sorted.

    With both labels, the subset is stratified: the correct records keep their share of
    the file (rounded), and each label gets at least one record when both exist and
    ``n >= 2``, so AUROC and the correct records' CE are always defined."""
    pool = np.flatnonzero(index.is_correct) if correct_only else np.arange(len(index))
    if n is None or n >= len(pool):
        return pool
    rng = np.random.default_rng([seed, 7])
    if correct_only:
        return np.sort(rng.choice(pool, size=n, replace=False))
    good = np.flatnonzero(index.is_correct)
    bad = np.flatnonzero(~np.asarray(index.is_correct, dtype=bool))
    n_good = round(n * len(good) / len(pool))
    if len(good) and len(bad) and n >= 2:
        n_good = min(max(n_good, 1), n - 1)
    n_good = min(max(n_good, n - len(bad)), len(good))
    picked = rng.choice(good, size=n_good, replace=False)
    rest = rng.choice(bad, size=n - n_good, replace=False)
    return np.sort(np.concatenate([picked, rest]))


def build_sampler(node: Any, **runtime: Any) -> RecordSampler:
    """``instantiate(cfg.data_sampling, **runtime)``; a :class:`UserError` raised by the
    sampler stays a UserError (Hydra would wrap it into an InstantiationException)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **runtime)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, UserError):
            raise exc.__cause__ from None
        raise
