"""Statistics over seeds: mean ± sample standard deviation, and paired differences with a
t-interval, the evidence each claim of the reproduction rests on.

With n seeds the 95% interval of a mean difference is d̄ ± t_{0.975, n−1} · s_d / √n (Student's t,
s_d the sample standard deviation of the per-seed differences). A claim "A > B" holds when the
interval lies above 0, does not hold when it lies below 0 (or inside the stated margin), and is
inconclusive otherwise.

Per-example outcomes (seeds × test images, e.g. 0/1 correctness) carry two sources of noise, the
seeds and the finite test set; `crossed_bootstrap` resamples both (Owen's pigeonhole bootstrap) for
differences and ratios of grand means. `t_pvalue` and `holm` turn a family of per-seed tests into
decisions controlling the family-wise error, and `seeds_for_power` sizes a study.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import dataclasses
import math
from typing import Any
from typing import Literal
from typing import overload

import numpy as np
import numpy.typing as npt
from scipy import stats as _scipy_stats


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and count of a set of numbers."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f}" if self.n > 1 else f"{self.mean:.3f}"


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean with its two-sided confidence interval [low, high] (NaN bounds for n < 2), n seeds;
    ``method`` is "t" (Student's t over seeds) or "bootstrap" (`crossed_bootstrap`)."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float
    method: str = "t"

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        if self.n < 2:
            if self.method == "bootstrap" and math.isfinite(self.low) and math.isfinite(self.high):
                return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}] (one seed: images only)"
            return f"{self.mean:+.3f} (one seed, no interval)"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def summary(values: npt.ArrayLike) -> Summary:
    """`Summary` of ``values`` (a sequence of floats, NaNs not allowed)."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ValueError("summary of no values")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"non-finite values in {values.tolist()}")
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return Summary(float(np.mean(values)), std, int(values.size))


def t_interval(values: npt.ArrayLike, confidence: float = 0.95) -> Interval:
    """The Student-t `Interval` of the mean of ``values`` (n ≥ 2 for finite bounds)."""
    s = summary(values)
    if s.n < 2:
        return Interval(s.mean, math.nan, math.nan, s.n, confidence)
    half = _scipy_stats.t.ppf(0.5 + confidence / 2, s.n - 1) * s.std / math.sqrt(s.n)
    return Interval(s.mean, s.mean - half, s.mean + half, s.n, confidence)


def paired_difference(a: npt.ArrayLike, b: npt.ArrayLike, confidence: float = 0.95) -> Interval:
    """`Interval` of the mean of a − b over paired values (the same seeds, in the same order)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    return t_interval(a - b, confidence)


def verdict(interval: Interval, margin: float = 0.0) -> str:
    """"holds" if the interval lies above ``margin``, "does not hold at this scale" if it lies
    below it, "inconclusive" otherwise (or with fewer than 2 seeds)."""
    if interval.n < 2:
        return "inconclusive"
    if interval.low > margin:
        return "holds"
    if interval.high < margin:
        return "does not hold at this scale"
    return "inconclusive"


# Elements of one chunk of image (or seed) draw counts: at most two arrays of this many 8-byte values
# live at once (~40 MB), whatever the number of images and replicates.
_CHUNK_ELEMENTS = 2_500_000

# Below this fraction of finite replicates a bootstrap interval has NaN bounds.
_MIN_FINITE = 0.95


def _draw_counts(rng: np.random.Generator, k: int, size: int) -> np.ndarray:
    """Counts, shape (k, size) float64, of ``size`` draws with replacement from ``size`` indices, one
    row per replicate."""
    idx = rng.integers(0, size, size=(k, size))
    idx += (np.arange(k) * size)[:, None]
    counts = np.bincount(idx.ravel(), minlength=k * size)
    del idx
    return counts.reshape(k, size).astype(np.float64)


def _crossed_shapes(matrices: Sequence[npt.ArrayLike]) -> tuple[list[np.ndarray], int, int]:
    """The matrices as float64 arrays with the common number of seeds n and images m (1 if none
    has columns)."""
    if len(matrices) == 0:
        raise ValueError("crossed_bootstrap needs at least one matrix")
    arrays = [np.asarray(x, np.float64) for x in matrices]
    if any(a.ndim not in (1, 2) for a in arrays):
        raise ValueError(f"matrices must be (n_seeds,) or (n_seeds, n_images), got {[a.shape for a in arrays]}")
    rows = {a.shape[0] for a in arrays}
    columns = {a.shape[1] for a in arrays if a.ndim == 2}
    if len(rows) != 1 or len(columns) > 1:
        raise ValueError(f"matrices need the same seeds (rows) and images (columns), got {[a.shape for a in arrays]}")
    n, m = rows.pop(), columns.pop() if columns else 1
    if n == 0 or m == 0:
        raise ValueError(f"matrices without seeds or images: {[a.shape for a in arrays]}")
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError("non-finite values in the matrices")
    return arrays, n, m


@overload
def crossed_bootstrap(matrices: Sequence[npt.ArrayLike], statistic: Callable[[list[Any]], Any], *,
                      replicates: int = ..., seed: int = ..., confidence: float = ...,
                      return_replicates: Literal[False] = ...) -> Interval: ...


@overload
def crossed_bootstrap(matrices: Sequence[npt.ArrayLike], statistic: Callable[[list[Any]], Any], *,
                      replicates: int = ..., seed: int = ..., confidence: float = ...,
                      return_replicates: Literal[True]) -> tuple[Interval, np.ndarray]: ...


def crossed_bootstrap(matrices: Sequence[npt.ArrayLike], statistic: Callable[[list[Any]], Any], *,
                      replicates: int = 4000, seed: int = 0, confidence: float = 0.95,
                      return_replicates: bool = False) -> Interval | tuple[Interval, np.ndarray]:
    """Percentile-bootstrap `Interval` (method "bootstrap") of ``statistic`` of grand means over a
    crossed design of seeds × test images (Owen's pigeonhole bootstrap).

    ``matrices``: arrays of shape (n_seeds, n_images) (row s the same seed, column i the same image
    in all) or (n_seeds,) (a seed-level number: only seeds resampled). ``statistic(means)`` maps the
    list of grand means, one per matrix, to the statistic, element-wise on arrays of replicates
    (e.g. ``lambda m: m[0] - m[1]``). Each replicate draws n seeds and, independently, m images with
    replacement, the same draws for every matrix; its grand mean of M is w_sᵀ M w_i / (n m) with the
    draw counts w. Deterministic for a given ``seed``.

    mean = the statistic on the data; low/high = the (1 ∓ confidence)/2 quantiles of the finite
    replicates (non-finite ones, e.g. a ratio over 0, dropped), NaN if fewer than 95% are finite or
    nothing can be resampled (n = m = 1). With one seed only the images are resampled: the seed
    noise is then absent from the interval (and `verdict` still answers "inconclusive").
    ``return_replicates``: also return all replicate values, shape (replicates,), non-finite kept.
    """
    arrays, n, m = _crossed_shapes(matrices)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if int(replicates) != replicates or replicates < 1:
        raise ValueError(f"replicates must be a positive integer, got {replicates}")
    replicates = int(replicates)
    seed_rng, image_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    chunk = max(1, _CHUNK_ELEMENTS // max(n, m))
    values = np.empty(replicates)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mean = float(statistic([np.float64(a.mean()) for a in arrays]))
        for start in range(0, replicates, chunk):
            k = min(chunk, replicates - start)
            w_seeds = _draw_counts(seed_rng, k, n)
            w_images = _draw_counts(image_rng, k, m) if m > 1 else None
            means = []
            for a in arrays:
                if a.ndim == 1:
                    means.append(w_seeds @ a / n)
                else:
                    per_seed = a @ w_images.T if w_images is not None else np.repeat(a, k, axis=1)
                    means.append(np.einsum("ks,sk->k", w_seeds, per_seed) / (n * m))
            values[start:start + k] = np.broadcast_to(np.asarray(statistic(means), np.float64), (k,))
    finite = values[np.isfinite(values)]
    if (n < 2 and m < 2) or finite.size < _MIN_FINITE * replicates:
        low = high = math.nan
    else:
        low, high = (float(q) for q in np.quantile(finite, [(1 - confidence) / 2, (1 + confidence) / 2]))
    interval = Interval(mean, low, high, n, confidence, "bootstrap")
    return (interval, values) if return_replicates else interval


def t_pvalue(differences: npt.ArrayLike, margin: float = 0.0) -> float:
    """Two-sided p-value of the one-sample t-test of mean(``differences``) (per-seed, shape (n,))
    against ``margin``: NaN for n < 2; with all values equal 0.0 if they differ from the margin,
    1.0 if they equal it."""
    d = np.asarray(differences, np.float64).ravel()
    if not np.all(np.isfinite(d)):
        raise ValueError(f"non-finite values in {d.tolist()}")
    if d.size < 2:
        return math.nan
    if np.all(d == d[0]):
        return 1.0 if d[0] == margin else 0.0
    t = (d.mean() - margin) / (np.std(d, ddof=1) / math.sqrt(d.size))
    return float(2 * _scipy_stats.t.sf(abs(t), d.size - 1))


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """Holm–Bonferroni step-down over a family of p-values: ``(rejected, adjusted)``, two lists in
    the input's order. adjusted_(k) = min(1, max_{j ≤ k} (m − j + 1) p_(j)) over the m non-NaN
    p-values sorted ascending; rejected = adjusted ≤ alpha. NaN p-values: never rejected, not
    counted in m, adjusted NaN."""
    p = np.asarray(pvalues, np.float64).ravel()
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0) | (p[valid] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    adjusted = np.full(p.shape, math.nan)
    index = np.flatnonzero(valid)
    order = index[np.argsort(p[index], kind="stable")]
    m = order.size
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    rejected = [bool(ok and a <= alpha) for ok, a in zip(valid, adjusted)]
    return rejected, [float(a) for a in adjusted]


def _t_power(n: np.ndarray, effect: float, alpha: float) -> np.ndarray:
    """Power, shape like ``n``, of the two-sided one-sample t-test at level ``alpha`` with n values
    and standardised effect mean/sd."""
    df = n - 1
    critical = _scipy_stats.t.ppf(1 - alpha / 2, df)
    nc = effect * np.sqrt(n)
    return _scipy_stats.nct.sf(critical, df, nc) + _scipy_stats.nct.cdf(-critical, df, nc)


def seeds_for_power(mean: float, sd: float, *, power: float = 0.8, alpha: float = 0.05,
                    max_seeds: int = 10000) -> int | None:
    """Smallest number of seeds n ≥ 2 at which the two-sided paired (one-sample) t-test at level
    ``alpha`` detects a true mean difference ``mean`` with per-seed standard deviation ``sd`` (same
    units) with at least ``power`` (exact, noncentral t with df n − 1, noncentrality mean/sd·√n).
    None if mean = 0 or no n ≤ ``max_seeds`` reaches it; 2 if sd = 0 (and mean ≠ 0)."""
    if not (math.isfinite(mean) and math.isfinite(sd)) or sd < 0:
        raise ValueError(f"need a finite mean and sd ≥ 0, got mean={mean}, sd={sd}")
    if not (0 < power < 1 and 0 < alpha < 1):
        raise ValueError(f"power and alpha must lie in (0, 1), got {power}, {alpha}")
    if mean == 0 or max_seeds < 2:
        return None
    if sd == 0:
        return 2
    effect = abs(mean) / sd
    start, block = 2, 64
    while start <= max_seeds:
        n = np.arange(start, min(start + block, max_seeds + 1))
        reached = np.flatnonzero(_t_power(n, effect, alpha) >= power)
        if reached.size:
            return int(n[reached[0]])
        start, block = int(n[-1]) + 1, 2 * block
    return None
