"""Seed statistics against closed forms on hand-made numbers."""

import math

import pytest

from tf_ntk import stats


def test_summary_is_mean_and_sample_std():
    s = stats.summary([1.0, 2.0, 3.0, 6.0])
    assert s.mean == 3.0 and s.n == 4
    # Sample variance: ((−2)² + (−1)² + 0² + 3²) / 3 = 14/3.
    assert s.std == pytest.approx(math.sqrt(14 / 3))
    assert stats.summary([0.25]).std == 0.0 and str(stats.summary([0.25])) == "0.250"
    with pytest.raises(ValueError, match="no values"):
        stats.summary([])
    with pytest.raises(ValueError, match="non-finite"):
        stats.summary([1.0, float("nan")])


def test_t_interval_matches_the_t_table():
    # n = 3: t_{0.975, 2} = 4.302653; mean 2, s = 1 → half-width 4.302653/√3.
    interval = stats.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert (interval.low, interval.high) == pytest.approx((2 - half, 2 + half), rel=1e-9)
    # n = 5, 90%: t_{0.95, 4} = 2.131847; values 0.1 … 0.5, mean 0.3, s = 0.158114.
    interval = stats.t_interval([0.1, 0.2, 0.3, 0.4, 0.5], confidence=0.9)
    half = 2.13184678632665 * math.sqrt(0.025) / math.sqrt(5)
    assert interval.high - interval.mean == pytest.approx(half, rel=1e-9)
    one = stats.t_interval([0.4])
    assert math.isnan(one.low) and stats.verdict(one) == "inconclusive"


def test_paired_difference_and_verdicts():
    a, b = [0.30, 0.35, 0.32], [0.05, 0.02, 0.04]
    d = stats.paired_difference(a, b)
    assert d.mean == pytest.approx(0.2866667, rel=1e-6)
    assert stats.verdict(d) == "holds" and d.excludes_zero()
    assert stats.verdict(stats.paired_difference(b, a)) == "does not hold at this scale"
    noisy = stats.paired_difference([0.3, 0.1, 0.2], [0.1, 0.3, 0.2])
    assert stats.verdict(noisy) == "inconclusive"
    with pytest.raises(ValueError, match="equal shapes"):
        stats.paired_difference([1.0, 2.0], [1.0])
