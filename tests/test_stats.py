"""Seed statistics against closed forms on hand-made numbers."""

import math
import tracemalloc

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tf_ntk.study import stats


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


# --- crossed bootstrap -------------------------------------------------------------------------


def _first(means):
    return means[0]


def test_crossed_bootstrap_variance_of_an_additive_matrix_is_the_closed_form():
    # x[s, i] = a[s] + b[i]: the resampled grand mean is mean_w(a) + mean_w(b), two independent
    # means of n and m draws, so its variance is var_pop(a)/n + var_pop(b)/m exactly.
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.0, 0.05, 8), rng.normal(0.0, 0.2, 50)
    x = a[:, None] + b[None, :]
    interval, values = stats.crossed_bootstrap([x], _first, replicates=20000, return_replicates=True)
    expected = math.sqrt(np.var(a) / 8 + np.var(b) / 50)
    assert np.std(values) == pytest.approx(expected, rel=0.03)
    assert np.mean(values) == pytest.approx(x.mean(), abs=0.05 * expected)
    assert interval.mean == pytest.approx(x.mean(), rel=1e-12)
    assert interval.method == "bootstrap" and interval.n == 8 and interval.confidence == 0.95
    # The percentile bounds of a near-normal mean: about mean ± 1.96 sd.
    assert interval.high - interval.low == pytest.approx(2 * 1.959964 * expected, rel=0.05)


def test_crossed_bootstrap_images_only_is_the_binomial_standard_error():
    # Identical rows: resampling seeds changes nothing, the image level gives sqrt(p(1 − p)/m).
    row = np.zeros(200)
    row[:60] = 1.0
    x = np.tile(row, (4, 1))
    _, values = stats.crossed_bootstrap([x], _first, replicates=20000, seed=1, return_replicates=True)
    assert np.std(values) == pytest.approx(math.sqrt(0.3 * 0.7 / 200), rel=0.03)


def test_crossed_bootstrap_seeds_only_for_seed_level_numbers():
    a = np.array([0.12, 0.30, 0.25, 0.08, 0.19, 0.22, 0.15, 0.40, 0.05, 0.27])
    interval, values = stats.crossed_bootstrap([a], _first, replicates=20000, seed=2, return_replicates=True)
    assert np.std(values) == pytest.approx(math.sqrt(np.var(a) / 10), rel=0.03)
    assert interval.n == 10 and interval.low < a.mean() < interval.high


def test_crossed_bootstrap_shares_the_draws_between_matrices():
    rng = np.random.default_rng(4)
    a = (rng.random((5, 300)) < 0.7).astype(float)
    interval, values = stats.crossed_bootstrap([a, a - 0.1], lambda m: m[0] - m[1], replicates=500,
                                               return_replicates=True)
    np.testing.assert_allclose(values, 0.1, atol=1e-12)
    assert (interval.mean, interval.low, interval.high) == pytest.approx((0.1, 0.1, 0.1), abs=1e-12)
    assert stats.verdict(interval) == "holds" and stats.verdict(interval, margin=0.2) == "does not hold at this scale"
    # Mixed: a seed-level vector beside the matrices, resampled with the same seed draws.
    s = a.mean(axis=1)
    _, values = stats.crossed_bootstrap([a, s], lambda m: m[0] - m[1], replicates=300, return_replicates=True)
    assert np.std(values) > 0  # images still resampled in a, not in s
    _, values = stats.crossed_bootstrap([np.tile(s[:, None], (1, 7)), s], lambda m: m[0] - m[1],
                                        replicates=300, return_replicates=True)
    np.testing.assert_allclose(values, 0.0, atol=1e-12)


def test_crossed_bootstrap_ratio_drops_non_finite_replicates():
    # Seed-level ratio (m0 − m2) / (m1 − m2); m1 − m2 is 1 on 4 of 40 seeds, 0 elsewhere, so a
    # replicate's denominator is 0 when none of the 4 is drawn: probability (36/40)^40 ≈ 1.5%.
    n = 40
    base = np.linspace(0.0, 1.0, n)
    gap = np.zeros(n)
    gap[[3, 11, 25, 38]] = 1.0
    top = base + 0.5 * gap + np.linspace(0.0, 0.2, n)
    ratio = lambda m: (m[0] - m[2]) / (m[1] - m[2])  # noqa: E731
    interval, values = stats.crossed_bootstrap([top, base + gap, base], ratio, replicates=4000,
                                               return_replicates=True)
    dropped = np.count_nonzero(~np.isfinite(values))
    assert 0.005 * 4000 < dropped < 0.03 * 4000
    assert interval.mean == pytest.approx((top - base).mean() / gap.mean(), rel=1e-12)
    finite = values[np.isfinite(values)]
    assert (interval.low, interval.high) == pytest.approx(tuple(np.percentile(finite, [2.5, 97.5])), rel=1e-12)
    # One seed carries the whole denominator: ≈ 36% of replicates are 0/0 or x/0 → NaN bounds.
    gap = np.zeros(n)
    gap[7] = 1.0
    interval = stats.crossed_bootstrap([base + gap, base + gap, base], ratio, replicates=1000)
    assert interval.mean == pytest.approx(1.0) and math.isnan(interval.low) and math.isnan(interval.high)
    assert stats.verdict(interval) == "inconclusive"


def test_crossed_bootstrap_is_deterministic_per_seed():
    rng = np.random.default_rng(5)
    x, y = rng.random((6, 40)), rng.random((6, 40))
    diff = lambda m: m[0] - m[1]  # noqa: E731
    one, v1 = stats.crossed_bootstrap([x, y], diff, replicates=300, seed=7, return_replicates=True)
    two, v2 = stats.crossed_bootstrap([x, y], diff, replicates=300, seed=7, return_replicates=True)
    other, v3 = stats.crossed_bootstrap([x, y], diff, replicates=300, seed=8, return_replicates=True)
    assert one == two and np.array_equal(v1, v2)
    assert not np.array_equal(v1, v3) and (one.low, one.high) != (other.low, other.high)


def test_crossed_bootstrap_with_one_seed_resamples_images_only():
    row = np.zeros((1, 100))
    row[0, :25] = 1.0
    interval, values = stats.crossed_bootstrap([row], _first, replicates=4000, return_replicates=True)
    assert interval.n == 1 and interval.low < 0.25 < interval.high
    assert np.std(values) == pytest.approx(math.sqrt(0.25 * 0.75 / 100), rel=0.06)
    assert str(interval).endswith("(one seed: images only)")
    nothing = stats.crossed_bootstrap([np.array([0.3])], _first, replicates=100)
    assert nothing.mean == 0.3 and math.isnan(nothing.low) and str(nothing) == "+0.300 (one seed, no interval)"


def test_crossed_bootstrap_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same seeds"):
        stats.crossed_bootstrap([np.zeros((3, 5)), np.zeros((4, 5))], _first)
    with pytest.raises(ValueError, match="same seeds"):
        stats.crossed_bootstrap([np.zeros((3, 5)), np.zeros((3, 6))], _first)
    with pytest.raises(ValueError, match="same seeds"):
        stats.crossed_bootstrap([np.zeros((3, 5)), np.zeros(4)], _first)
    with pytest.raises(ValueError, match="n_seeds"):
        stats.crossed_bootstrap([np.zeros((3, 5, 2))], _first)
    with pytest.raises(ValueError, match="at least one"):
        stats.crossed_bootstrap([], _first)
    with pytest.raises(ValueError, match="non-finite"):
        stats.crossed_bootstrap([np.array([1.0, np.nan])], _first)
    with pytest.raises(ValueError, match="confidence"):
        stats.crossed_bootstrap([np.zeros(3)], _first, confidence=1.5)


def test_crossed_bootstrap_memory_stays_bounded_for_ten_thousand_images():
    rng = np.random.default_rng(6)
    a = (rng.random((3, 10000)) < 0.9).astype(float)
    b = (rng.random((3, 10000)) < 0.8).astype(float)
    tracemalloc.start()
    try:
        interval = stats.crossed_bootstrap([a, b], lambda m: m[0] - m[1], replicates=4000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Unchunked, one (4000, 10000) array of counts alone would be 320 MB.
    assert peak < 100e6
    assert interval.low < a.mean() - b.mean() < interval.high


def test_interval_method_defaults_to_t():
    interval = stats.t_interval([1.0, 2.0, 3.0])
    assert interval.method == "t" and str(interval) == f"{2.0:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]"
    assert stats.Interval(0.1, 0.0, 0.2, 3, 0.95).method == "t"


# --- tests and multiplicity --------------------------------------------------------------------


def test_t_pvalue_matches_the_df2_closed_form_and_scipy():
    # df 2: P(|T| > t) = 1 − t / sqrt(2 + t²); [1, 2, 3]: t = 2 / (1/√3) = 2√3.
    t = 2 * math.sqrt(3)
    assert stats.t_pvalue([1.0, 2.0, 3.0]) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert stats.t_pvalue([1.0, 2.0, 3.0]) == pytest.approx(0.07418, abs=1e-5)
    rng = np.random.default_rng(8)
    for n, margin in ((5, 0.0), (12, 0.3), (30, -0.1)):
        d = rng.normal(0.2, 0.5, n)
        expected = scipy_stats.ttest_1samp(d, margin).pvalue
        assert stats.t_pvalue(d, margin) == pytest.approx(expected, rel=1e-9)
    assert math.isnan(stats.t_pvalue([0.4]))
    assert stats.t_pvalue([0.1, 0.1, 0.1]) == 0.0 and stats.t_pvalue([0.1, 0.1, 0.1], margin=0.1) == 1.0


def _holm_step_down(p, alpha):
    """Oracle: walk the sorted p-values, rejecting while p_(k) ≤ alpha / (m − k + 1)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = [False] * len(p)
    for k, i in enumerate(order):
        if p[i] > alpha / (len(p) - k):
            break
        rejected[i] = True
    return rejected


def test_holm_on_a_known_family():
    rejected, adjusted = stats.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert rejected == [True, False, False, True]
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)
    rejected, adjusted = stats.holm([0.01, float("nan"), 0.04, 0.03, 0.005])
    assert rejected == [True, False, False, False, True]
    assert math.isnan(adjusted[1])
    assert [adjusted[i] for i in (0, 2, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)
    # NaNs are not counted in m: [0.02, NaN, 0.03] is a family of two → 0.04, 0.04.
    rejected, adjusted = stats.holm([0.02, float("nan"), 0.03])
    assert rejected == [True, False, True] and adjusted[0] == pytest.approx(0.04) and adjusted[2] == pytest.approx(0.04)
    assert stats.holm([0.5, 0.6, 0.9]) == ([False, False, False], [1.0, 1.0, 1.0])
    assert stats.holm([]) == ([], [])
    with pytest.raises(ValueError, match="p-values"):
        stats.holm([0.2, 1.5])


def test_holm_agrees_with_the_step_down_definition():
    rng = np.random.default_rng(9)
    for _ in range(50):
        p = (rng.random(int(rng.integers(1, 10))) ** 3).tolist()
        rejected, adjusted = stats.holm(p, alpha=0.05)
        assert rejected == _holm_step_down(p, 0.05)
        order = np.argsort(p)
        assert np.all(np.diff(np.asarray(adjusted)[order]) >= 0) and max(adjusted) <= 1.0
        assert all(a >= q for a, q in zip(adjusted, p))


def test_seeds_for_power_matches_gpower():
    # G*Power, t test for a mean (one sample / matched pairs), two tails, α = 0.05, power 0.8.
    assert stats.seeds_for_power(0.5, 1.0) == 34
    assert stats.seeds_for_power(0.8, 1.0) == 15
    assert stats.seeds_for_power(1.0, 1.0) == 10
    # Only the standardised effect matters, not its sign or units.
    assert stats.seeds_for_power(-0.02, 0.04) == 34
    # Large n: the normal approximation ((z_{.975} + z_{.8}) / d)² + z_{.975}²/2 = 786.8 for d = 0.1.
    assert stats.seeds_for_power(0.1, 1.0) == 787
    assert stats.seeds_for_power(0.0, 1.0) is None
    assert stats.seeds_for_power(0.1, 1.0, max_seeds=500) is None
    assert stats.seeds_for_power(0.05, 0.0) == 2
    with pytest.raises(ValueError, match="sd"):
        stats.seeds_for_power(0.1, -1.0)
