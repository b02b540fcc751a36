"""Statistics over seeds: mean ± sample standard deviation, and paired differences with a
t-interval, the evidence each claim of the reproduction rests on.

With n seeds the 95% interval of a mean difference is d̄ ± t_{0.975, n−1} · s_d / √n (Student's t,
s_d the sample standard deviation of the per-seed differences). A claim "A > B" holds when the
interval lies above 0, does not hold when it lies below 0 (or inside the stated margin), and is
inconclusive otherwise.
"""

import dataclasses
import math

import numpy as np
from scipy import stats as _scipy_stats


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and count of a set of numbers."""

    mean: float
    std: float
    n: int

    def __str__(self):
        return f"{self.mean:.3f} ± {self.std:.3f}" if self.n > 1 else f"{self.mean:.3f}"


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean with its two-sided confidence interval [low, high] (NaN bounds for n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    def excludes_zero(self):
        return self.low > 0 or self.high < 0

    def __str__(self):
        if self.n < 2:
            return f"{self.mean:+.3f} (one seed, no interval)"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def summary(values):
    """`Summary` of ``values`` (a sequence of floats, NaNs not allowed)."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ValueError("summary of no values")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"non-finite values in {values.tolist()}")
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return Summary(float(np.mean(values)), std, int(values.size))


def t_interval(values, confidence=0.95):
    """The Student-t `Interval` of the mean of ``values`` (n ≥ 2 for finite bounds)."""
    s = summary(values)
    if s.n < 2:
        return Interval(s.mean, math.nan, math.nan, s.n, confidence)
    half = _scipy_stats.t.ppf(0.5 + confidence / 2, s.n - 1) * s.std / math.sqrt(s.n)
    return Interval(s.mean, s.mean - half, s.mean + half, s.n, confidence)


def paired_difference(a, b, confidence=0.95):
    """`Interval` of the mean of a − b over paired values (the same seeds, in the same order)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    return t_interval(a - b, confidence)


def verdict(interval, margin=0.0):
    """"holds" if the interval lies above ``margin``, "does not hold at this scale" if it lies
    below it, "inconclusive" otherwise (or with fewer than 2 seeds)."""
    if interval.n < 2:
        return "inconclusive"
    if interval.low > margin:
        return "holds"
    if interval.high < margin:
        return "does not hold at this scale"
    return "inconclusive"
