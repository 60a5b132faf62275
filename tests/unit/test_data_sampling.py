"""RecordSampler: exact mixes per phase (counted), determinism, ranks, resume, shortages."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from weighted_mtp.config.schema import DataSamplingConfig
from weighted_mtp.data.index import ROW_DTYPE, Index
from weighted_mtp.data.sampling import (
    RecordSampler,
    apportion,
    build_sampler,
    validation_indices,
)
from weighted_mtp.errors import UserError

BINS = {"low": [1, 3], "medium": [4, 7], "high": [8, 11]}
SCHEDULE = [
    {"epoch_range": [0.0, 0.3], "difficulty_weights": {"low": 0.7, "medium": 0.3, "high": 0.0}},
    {"epoch_range": [0.3, 0.7], "difficulty_weights": {"low": 0.3, "medium": 0.6, "high": 0.1}},
    {"epoch_range": [0.7, 1.0], "difficulty_weights": {"low": 0.1, "medium": 0.5, "high": 0.4}},
]


def make_index(n: int = 2000, correct_share: float = 0.4, seed: int = 0) -> Index:
    rng = np.random.default_rng(seed)
    rows = np.zeros(n, dtype=ROW_DTYPE)
    rows["offset"] = np.arange(n) * 100
    rows["is_correct"] = rng.random(n) < correct_share
    rows["difficulty"] = rng.integers(1, 12, n)
    rows["problem"] = np.arange(n) // 4
    return Index(rows, [f"p{i}" for i in range(n // 4 + 1)], {"size": n * 100})


def curriculum(index: Index, **kw) -> RecordSampler:
    args = dict(
        n_samples=300, correct_ratio=0.5, balance_correct=True, seed=7,
        curriculum_learning=True, difficulty_bins=BINS, curriculum_schedule=SCHEDULE,
        index=index, n_epochs=2.5,
    )  # fmt: skip
    args.update(kw)
    return RecordSampler(**args)


def bin_of(d: int) -> str:
    return next(name for name, (lo, hi) in BINS.items() if lo <= d <= hi)


def test_apportion_is_exact_largest_remainder() -> None:
    assert apportion(10, [0.7, 0.3, 0.0]).tolist() == [7, 3, 0]
    assert apportion(7, [1, 1, 1]).tolist() == [3, 2, 2]
    assert apportion(5, [0.1, 0.5, 0.4]).tolist() == [1, 2, 2]
    assert apportion(3, [0.0, 1.0]).tolist() == [0, 3]


def test_curriculum_and_correct_mix_are_exact_per_segment() -> None:
    index = make_index()
    s = curriculum(index)
    ids = np.array(list(s))
    assert len(ids) == len(s) == 750
    phase_cuts = [0, 225, 525, 750]  # round(0.3 * 750), round(0.7 * 750)
    assert [seg.start for seg in s.segments] == [0, 225, 300, 525, 600]
    for seg in s.segments:
        part = ids[seg.start : seg.end]
        n = len(part)
        weights = SCHEDULE[seg.phase]["difficulty_weights"]
        assert phase_cuts[seg.phase] <= seg.start < phase_cuts[seg.phase + 1]
        bins = Counter(bin_of(int(index.difficulty[i])) for i in part)
        expected = apportion(n, [weights[b] for b in BINS])
        assert [bins.get(b, 0) for b in BINS] == expected.tolist()
        n_correct = int(index.is_correct[part].sum())
        assert n_correct == apportion(n, [0.5, 0.5])[0]
        for b in BINS:  # each bin within one record of the ratio
            in_bin = [i for i in part if bin_of(int(index.difficulty[i])) == b]
            assert abs(int(index.is_correct[in_bin].sum()) - 0.5 * len(in_bin)) <= 0.5 + 1e-9
    assert s.progress == 1.0


def test_no_repeats_within_an_epoch_when_supply_suffices() -> None:
    s = curriculum(make_index(), correct_ratio=0.3)
    ids = np.array(list(s))
    for e in range(3):
        chunk = ids[e * 300 : (e + 1) * 300]
        assert len(set(chunk.tolist())) == len(chunk)
    expected = sum(apportion(seg.end - seg.start, [0.3, 0.7])[0] for seg in s.segments[:2])
    assert int(make_index().is_correct[ids[:300]].sum()) == expected


def test_deterministic_for_a_seed() -> None:
    index = make_index()
    assert list(curriculum(index)) == list(curriculum(index))
    assert list(curriculum(index)) != list(curriculum(index, seed=8))


def test_ranks_interleave_to_the_single_rank_stream() -> None:
    index = make_index()
    single = list(curriculum(index))
    ranks = [list(curriculum(index, rank=r, world_size=3)) for r in range(3)]
    assert [len(curriculum(index, rank=r, world_size=3)) for r in range(3)] == [250] * 3
    merged = [ranks[i % 3][i // 3] for i in range(len(single))]
    assert merged == single


@pytest.mark.parametrize("stop", [1, 149, 150, 151, 374])
def test_resume_continues_the_uninterrupted_stream(stop: int) -> None:
    index = make_index()
    full = list(curriculum(index, rank=1, world_size=2))
    first = curriculum(index, rank=1, world_size=2)
    it = iter(first)
    head = [next(it) for _ in range(stop)]
    state = first.state_dict()
    resumed = curriculum(index, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert resumed.progress == pytest.approx(stop * 2 / 750)
    assert head + list(resumed) == full
    behind = curriculum(index, rank=1, world_size=2)
    behind.load_state_dict({**first.state_dict(), "consumed": stop - 1})  # one id earlier
    assert list(behind) == full[stop - 1 :]


def test_resume_on_another_world_size_and_config_mismatch() -> None:
    index = make_index()
    single = list(curriculum(index))
    s = curriculum(index, rank=0, world_size=2)
    it = iter(s)
    [next(it) for _ in range(100)]
    one = curriculum(index)
    one.load_state_dict(s.state_dict())
    assert list(one) == single[200:]
    with pytest.raises(UserError, match="different data_sampling"):
        curriculum(index, seed=1).load_state_dict(s.state_dict())


def test_shortage_cycles_within_the_cell_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    index = make_index(1000)
    high_bad = np.flatnonzero((index.difficulty >= 8) & ~index.is_correct)
    keep = np.ones(len(index), dtype=bool)
    keep[high_bad[5:]] = False  # only 5 incorrect high-difficulty records remain
    rows = index.rows[keep]
    small = Index(rows, index.problems, {"size": 1})
    with caplog.at_level(logging.WARNING, logger="weighted_mtp.data.sampling"):
        s = curriculum(small, n_epochs=1.0)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("(bin=high, incorrect)" in m and "only 5 exist" in m for m in msgs)
    ids = np.array(list(s))
    high_bad_ids = [i for i in ids if small.difficulty[i] >= 8 and not small.is_correct[i]]
    counts = Counter(high_bad_ids)
    assert len(counts) == 5 and max(counts.values()) - min(counts.values()) <= 1
    for seg in s.segments:  # the ratio is still exact
        part = ids[seg.start : seg.end]
        assert int(small.is_correct[part].sum()) == apportion(len(part), [0.5, 0.5])[0]


def test_empty_requested_cell_is_a_user_error() -> None:
    index = make_index(500)
    rows = index.rows[index.difficulty < 8]
    with pytest.raises(UserError, match=r"\(bin=high, correct\)"):
        curriculum(Index(rows, index.problems, {"size": 1}))


def test_without_balance_ratio_one_is_correct_only_and_fractional_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    index = make_index()
    s = RecordSampler(n_samples=500, correct_ratio=1.0, index=index, n_epochs=1.0)
    ids = list(s)
    assert len(ids) == 500 and index.is_correct[ids].all() and len(set(ids)) == 500
    with caplog.at_level(logging.WARNING):
        RecordSampler(n_samples=50, correct_ratio=0.7, index=index, n_epochs=1.0)
    assert any("only imposed with balance_correct" in r.getMessage() for r in caplog.records)


def test_bad_schedule_is_a_user_error() -> None:
    bad = [{"epoch_range": [0.0, 0.5], "difficulty_weights": {"low": 1.0}},
           {"epoch_range": [0.6, 1.0], "difficulty_weights": {"low": 1.0}}]  # fmt: skip
    with pytest.raises(UserError, match="without gaps"):
        curriculum(make_index(), curriculum_schedule=bad)
    with pytest.raises(UserError, match="names no difficulty bin"):
        curriculum(make_index(), curriculum_schedule=[
            {"epoch_range": [0.0, 1.0], "difficulty_weights": {"easy": 1.0}}])  # fmt: skip


def test_built_by_hydra_from_the_config_section() -> None:
    section = OmegaConf.to_container(OmegaConf.structured(DataSamplingConfig))
    section.update(
        _target_="weighted_mtp.data.sampling.RecordSampler", n_samples=300, correct_ratio=0.5,
        balance_correct=True, seed=7, curriculum_learning=True, curriculum_schedule=SCHEDULE,
    )  # fmt: skip
    cfg = OmegaConf.create(section)
    index = make_index()
    s = instantiate(cfg, index=index, n_epochs=2.5)
    assert isinstance(s, RecordSampler)
    assert list(s) == list(curriculum(index))


def test_validation_indices() -> None:
    index = make_index()
    a = validation_indices(index, correct_only=True, n=50, seed=3)
    assert len(a) == 50 and index.is_correct[a].all() and (np.diff(a) > 0).all()
    assert a.tolist() == validation_indices(index, True, 50, 3).tolist()
    assert len(validation_indices(index, correct_only=False, n=None)) == len(index)
    for n in (2, 3, 7, 50):  # stratified: both labels present, shares kept
        both = validation_indices(index, correct_only=False, n=n, seed=3)
        labels = np.asarray(index.is_correct)[both]
        assert len(set(both.tolist())) == n and 0 < labels.sum() < n
        share = np.asarray(index.is_correct).mean()
        assert abs(labels.sum() - n * share) <= 1


def test_build_sampler_keeps_user_errors(caplog: pytest.LogCaptureFixture) -> None:
    """A record outside every bin stops the run with a UserError (exit 2), not Hydra's
    InstantiationException; data_sampling.allow_unbinned drops it with a warning."""
    section = OmegaConf.to_container(OmegaConf.structured(DataSamplingConfig))
    section.update(n_samples=300, curriculum_learning=True, curriculum_schedule=SCHEDULE)
    index = make_index()
    index.rows["difficulty"][:3] = [0, 12, 12]
    with pytest.raises(UserError, match=r"3 of 2000 .*0: 1, 12: 2.*allow_unbinned"):
        build_sampler(OmegaConf.create(section), index=index, n_epochs=1)
    section["allow_unbinned"] = True
    with caplog.at_level(logging.WARNING):
        s = build_sampler(OmegaConf.create(section), index=index, n_epochs=1)
    assert "never sampled" in caplog.text
    assert not {0, 1, 2} & set(s.epoch_ids(0).tolist())
