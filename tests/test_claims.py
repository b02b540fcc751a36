"""The claims' rules on hand-made numbers: the primary endpoint alone decides, descriptive rows are
Holm-adjusted within their claim, intervals and ratios by hand."""

import math

import numpy as np
import pytest

from tf_ntk.study import claims
from tf_ntk.study import collect
from tf_ntk.study import plan
from tf_ntk.study import presets
from tf_ntk.study import report
from tf_ntk.study import stats

IMAGES = 200
T_975_2DF = 4.302652729911275


def _bits(correct):
    """An evaluation record whose robust outcome is the first ``correct`` of IMAGES images."""
    bits = "1" * correct + "0" * (IMAGES - correct)
    return {"robust": correct / IMAGES, "benign": 0.9, "per_example": {"robust": bits},
            "sanity_failed": [], "transfer": [], "output_terms": None}


def _preset():
    return presets.PRESETS["smoke"].replace(seeds=3, seed_base=0, spawn_epochs=(0.0, 1.0, 2.0))


def _collected(c3_child=72):
    """Seeds 0-2: C2 holds at the last spawn (2) but its spawn-1 row points the other way; C3's ratio
    is (c3_child + 2s) / (80 + 2s) with standard training at 0."""
    evals = {}
    for s in range(3):
        for mode in ("clean", "adv"):
            evals[plan.phase2_name("centered", mode, "standard", s, 0.0)] = _bits(10)
            evals[plan.phase2_name("centered", mode, "adversarial", s, 2.0)] = _bits(
                (60 if mode == "clean" else c3_child) + 2 * s)
            evals[plan.phase2_name("centered", mode, "standard", s, 2.0)] = _bits(4 + s)
            evals[plan.phase2_name("centered", mode, "adversarial", s, 1.0)] = _bits(10 + s)
            evals[plan.phase2_name("centered", mode, "standard", s, 1.0)] = _bits(50 + s)
        evals[plan.phase1_name("adversarial", s)] = _bits(80 + 2 * s)
        evals[plan.phase1_name("standard", s)] = _bits(0)
    comparisons, kernels = {}, {}
    final = 2.0
    for s in range(3):
        comparisons[(f"standard-s{s}", f"adversarial-s{s}")] = {final: 0.30 + 0.01 * s, 1.0: 0.1}
        comparisons[(f"standard-s{s}", f"standard-s{s}-rep")] = {final: 0.05, 1.0: 0.02}
        comparisons[(f"adversarial-s{s}", f"adversarial-s{s}-rep")] = {final: 0.07, 1.0: 0.03}
        kernels[f"standard-s{s}"] = [{"epoch": 0.5, "distance_to_final": 0.08},
                                     {"epoch": final, "distance_to_init": 0.10, "distance_to_final": 0.0}]
        kernels[f"adversarial-s{s}"] = [{"epoch": 0.5, "distance_to_final": 0.02 + 0.01 * s},
                                        {"epoch": final, "distance_to_init": 0.20,
                                         "distance_to_final": 0.0}]
    return collect.Collected(evals, kernels, comparisons, {}, [])


def _primary(tests):
    (primary,) = [t for t in tests if t.primary]
    return primary


def test_the_primary_decides_even_when_a_descriptive_row_points_the_other_way():
    verdicts = claims.claims(_preset(), _collected())
    verdict, tests, family = verdicts["C2"]
    primary = _primary(tests)
    assert primary.test.startswith("centered phase 2 on clean data from spawn epoch 2")
    d = np.array([60 - 4, 62 - 5, 64 - 6]) / IMAGES
    half = T_975_2DF * d.std(ddof=1) / math.sqrt(3)
    assert (primary.interval.low, primary.interval.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert primary.bootstrap.low > 0 and primary.verdict == verdict == claims.HOLDS
    early = next(t for t in tests if "spawn epoch 1" in t.test)
    assert early.interval.high < 0 and not early.primary  # the other way, and it does not decide
    control = next(t for t in tests if t.control)
    assert control.verdict == "control" and control.interval.mean == pytest.approx(10 / IMAGES)


def test_descriptive_rows_are_holm_adjusted_within_their_claim():
    _, tests, family = claims.claims(_preset(), _collected())["C2"]
    rows = [t for t in tests if not t.primary and not t.control and math.isfinite(t.pvalue)]
    assert family == len(rows) == 1  # centered clean from spawn 1 (no kernel machine at epoch 1)
    assert rows[0].pvalue == pytest.approx(stats.t_pvalue(rows[0].values))
    _, adjusted = stats.holm([t.pvalue for t in rows])
    assert [t.adjusted for t in rows] == pytest.approx(adjusted)
    assert rows[0].verdict == "below 0 (Holm)"
    # A family of two: the adjusted p-values are Holm's, not the raw ones.
    _, tests, family = claims.claims(_preset(), _collected())["C3"]
    rows = [t for t in tests if not t.primary and not t.control and math.isfinite(t.pvalue)]
    assert family == len(rows) >= 2
    assert [t.adjusted for t in rows] == pytest.approx(stats.holm([t.pvalue for t in rows])[1])


def test_c3_is_non_inferiority_on_the_ratio_of_gains():
    verdict, tests, _ = claims.claims(_preset(), _collected())["C3"]
    primary = _primary(tests)
    ratios = [(72 + 2 * s) / (80 + 2 * s) for s in range(3)]
    assert primary.values == pytest.approx(ratios) and primary.margin == 0.75
    assert primary.bootstrap.low > 0.75 and verdict == claims.HOLDS
    # Half the gain: both intervals below the margin.
    verdict, tests, _ = claims.claims(_preset(), _collected(c3_child=40))["C3"]
    assert _primary(tests).interval.high < 0.75 and _primary(tests).bootstrap.high < 0.75
    assert verdict == claims.FAILS
    # Close to the margin: the intervals straddle it.
    verdict, _, _ = claims.claims(_preset(), _collected(c3_child=60))["C3"]
    assert verdict == claims.OPEN


def test_c1_against_the_matched_floor_and_the_share_of_the_way_covered():
    verdicts = claims.claims(_preset(), _collected())
    verdict, tests, _ = verdicts["C1a"]
    primary = _primary(tests)
    assert primary.a == pytest.approx([0.30, 0.31, 0.32]) and primary.b == pytest.approx([0.07] * 3)
    assert primary.values == pytest.approx([0.23, 0.24, 0.25]) and verdict == claims.HOLDS
    verdict, tests, _ = verdicts["C1b"]
    primary = _primary(tests)
    assert _preset().early_epoch() == 0.5
    assert primary.values == pytest.approx([0.9, 0.85, 0.8]) and verdict == claims.HOLDS
    assert "(6 optimizer steps)" in primary.test  # 0.5 epoch x 6 batches = 3, two updates each


def test_both_intervals_must_agree():
    t = stats.Interval(0.1, 0.01, 0.2, 5, 0.95)
    wide = stats.Interval(0.1, -0.05, 0.25, 5, 0.95, method="bootstrap")
    assert claims.primary_verdict(t, wide, 0.0) == claims.OPEN
    assert claims.primary_verdict(t, stats.Interval(0.1, 0.02, 0.2, 5, 0.95), 0.0) == claims.HOLDS
    assert claims.primary_verdict(t, None, 0.0) == claims.OPEN


def test_missing_runs_decide_nothing():
    verdicts = claims.claims(_preset(), collect.Collected({}, {}, {}, {}, []))
    assert {v for v, _, _ in verdicts.values()} == {claims.MISSING}
    assert set(verdicts) == set(claims.PRIMARY) == {"C1a", "C1b", "C2", "C3"}


def test_wall_time_adds_the_invocations_that_ran_jobs(tmp_path):
    assert report.wall_time_text(str(tmp_path)) == ""
    report.record_time(str(tmp_path), 300.0, 50, 2)
    report.record_time(str(tmp_path), 5.0, 0, 2)  # a rerun that only rewrote the report
    report.record_time(str(tmp_path), 150.0, 10, 2)
    text = report.wall_time_text(str(tmp_path))
    assert text.startswith("Wall time measured: 7.5 min in 2 invocations (resumed), 60 jobs, 2 workers on ")
