"""pass@k estimator against the exact combinatorial formula, and difficulty aggregation."""

from __future__ import annotations

import math

import pytest

from weighted_mtp.evaluation.passk import aggregate, pass_at_k


def exact(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_matches_exact_combinatorial_formula() -> None:
    checked = 0
    for n in range(1, 41):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(exact(n, c, k), abs=1e-12)
                checked += 1
    assert checked > 10_000


def test_large_n_is_stable() -> None:
    # C(1000, 500) overflows float; the product form must still match the exact rational.
    from fractions import Fraction

    n, c, k = 1000, 3, 500
    want = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(want), rel=1e-12)


def test_edge_cases() -> None:
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(10, 1, 10) == 1.0  # n - c < k: every k-subset contains the correct one
    for n in (1, 5, 17, 200):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 2, 6), (0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0)])
def test_invalid_arguments_raise(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_aggregate_overall_and_by_difficulty() -> None:
    results = [(10, 10, 0.1), (10, 0, 0.2), (10, 5, 0.5), (10, 1, 1.0), (10, 3, None), (10, 2, 7.0)]
    bins = {"easy": [0.0, 0.4], "medium": [0.4, 0.7], "hard": [0.7, 1.0]}
    out = aggregate(results, ks=[1, 5], bins=bins)
    assert out["n_problems"] == 6
    assert out["pass@1"] == pytest.approx((1.0 + 0.0 + 0.5 + 0.1 + 0.3 + 0.2) / 6)
    assert out["pass@5"] == pytest.approx(sum(exact(10, c, 5) for _, c, _ in results) / 6)
    easy, medium, hard = (out["by_difficulty"][b] for b in ("easy", "medium", "hard"))
    assert easy["n_problems"] == 2 and easy["pass@1"] == pytest.approx(0.5)
    assert medium["n_problems"] == 1 and medium["pass@1"] == pytest.approx(0.5)
    assert hard["n_problems"] == 1 and hard["pass@1"] == pytest.approx(0.1)  # top edge included
    assert out["unbinned"] == 2  # None and 7.0


def test_aggregate_bin_edges_half_open_and_empty_bins() -> None:
    bins = {"a": [0, 1], "b": [1, 2], "c": [5, 6]}
    out = aggregate([(4, 4, 1), (4, 0, 0)], ks=[1], bins=bins)
    assert out["by_difficulty"]["a"]["pass@1"] == 0.0
    assert out["by_difficulty"]["b"]["pass@1"] == 1.0
    assert out["by_difficulty"]["c"]["n_problems"] == 0
    assert math.isnan(out["by_difficulty"]["c"]["pass@1"])
    assert "by_difficulty" not in aggregate([(4, 4, 1)], ks=[1])


def test_aggregate_rejects_k_above_n_and_bad_bins() -> None:
    with pytest.raises(ValueError, match="pass@10"):
        aggregate([(20, 1, None), (5, 1, None)], ks=[1, 10])
    with pytest.raises(ValueError, match="bin"):
        aggregate([(5, 1, 0.5)], ks=[1], bins={"x": [1.0, 0.0]})
    with pytest.raises(ValueError):
        aggregate([(5, 1, 0.5)], ks=[])
