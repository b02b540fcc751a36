"""The study's decisions: one primary endpoint per claim, declared here before any number is seen,
and the descriptive rows around it.

Four claims (the abstract of *Evolution of Neural Tangent Kernels under Benign and Adversarial
Training*, NeurIPS 2022, split where it makes two statements):

- C1a "a different kernel": at the last phase-1 epoch T, the distance d(K_std, K_adv) between the
  standard and the adversarial kernel of the same initialisation exceeds the matched noise floor:
  max(d(K_std, K_std'), d(K_adv, K_adv')), each run against its replica from the same
  initialisation with another data order and other attack starts. Per seed: cross − floor > 0.
- C1b "rapidly": at the kernel epoch e nearest 10% of phase 1, the adversarial kernel has covered
  more than half of its way to its final kernel: 1 − d(K_e, K_T) / d(K_0, K_T) > 0.5.
- C2 "robustness lives in the kernel": centered phase 2 on clean data from the last spawn: robust
  accuracy from the adversarial spawn minus from the standard spawn > 0.
- C3 "adversarial training on a fixed kernel reaches high robust accuracy": non-inferiority of
  centered adversarial phase 2 from the last adversarial spawn (C) to whole-network adversarial
  training (A), both over standard training (S): (C − S) / (A − S) > 0.75 (it keeps at least 75% of
  adversarial training's robust-accuracy gain).

A primary holds when its paired Student-t 95% interval and its bootstrap 95% interval (two levels:
seeds × test images, `tf_ntk.study.stats.crossed_bootstrap`; kernel endpoints: seeds) both lie above its
margin; it does not hold at this scale when both lie below; it is inconclusive otherwise. The claim's
verdict is its primary's. Every other row is descriptive: shown with its t-interval, a p-value
against its margin, Holm-adjusted within its claim's family (the number of tests stated), and the
seeds a paired t-test needs for 80% power at the observed effect and sd; it never decides.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
from typing import Any
from typing import cast

import numpy as np

from tf_ntk.study import collect
from tf_ntk.study import plan
from tf_ntk.study import presets
from tf_ntk.study import stats


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A claim and its primary endpoint.

    Attributes:
      claim: "C1a" … "C3". statement: the claim in words. primary: the endpoint in words.
      margin: the primary holds above it. unit: "distance", "share", "accuracy" or "ratio".
      reading: which sign supports the claim, and what the value means, in words.
    """

    claim: str
    statement: str
    primary: str
    margin: float
    unit: str
    reading: str = ""


PRIMARY = {
    "C1a": Endpoint("C1a", "Adversarial training moves the kernel to a different kernel than "
                    "standard training.",
                    "d(standard, adversarial) minus the matched noise floor at the last phase-1 "
                    "epoch, same initialisation", 0.0, "distance",
                    "above 0 supports the claim: the standard and the adversarial kernel of one "
                    "initialisation end further apart than either training ends from a rerun of "
                    "itself with another data order and other attack starts"),
    "C1b": Endpoint("C1b", "Under adversarial training the kernel converges rapidly.",
                    "share of the adversarial kernel's way to its final kernel covered at 10% of "
                    "phase 1, 1 − d(K_e, K_T) / d(K_0, K_T)", 0.5, "share",
                    "above 0.5 supports the claim: after a tenth of phase 1 the adversarial kernel "
                    "has covered more than half of the way it moves in all of phase 1 (1: it has "
                    "arrived; 0: it has not moved)"),
    "C2": Endpoint("C2", "Robustness lives in the kernel: clean training on a fixed adversarial "
                   "kernel keeps robust accuracy that a standard kernel does not give.",
                   "centered clean phase 2 from the last spawn: robust accuracy, adversarial minus "
                   "standard spawn", 0.0, "accuracy",
                   "above 0 supports the claim: with the same clean training of the same "
                   "linear model, the adversarial spawn's fixed kernel gives robust accuracy that "
                   "the standard spawn's does not (in accuracy points, 1 = 100%)"),
    "C3": Endpoint("C3", "Adversarial training on a fixed kernel reaches high robust accuracy.",
                   "(centered adversarial phase 2 from the last adversarial spawn − standard "
                   "training) / (adversarial training − standard training), robust accuracy", 0.75,
                   "ratio",
                   "above 0.75 supports the claim: adversarial training of the fixed kernel alone "
                   "keeps at least three quarters of whole-network adversarial training's "
                   "robust-accuracy gain over standard training (1: all of it). The paper's 76.1% "
                   "at CIFAR-10 scale is an absolute number that digits cannot test; the relative "
                   "margin is the scale-free form of \"high\""),
}
"""The primary endpoints, one per claim, fixed before any run."""

HOLDS = "holds"
FAILS = "does not hold at this scale"
OPEN = "inconclusive"
MISSING = "inconclusive (missing runs)"


@dataclasses.dataclass
class Test:
    """One row of the claims table.

    Attributes:
      claim, test: the claim and what the row measures.
      values: the per-seed statistic (a paired difference, a share, a ratio), the t-interval's data.
      a_label, a, b_label, b: the two sides shown beside it (per seed), when it compares two.
      margin: the row's null value; primary: the claim's primary endpoint; control: a row whose
        expected value is known (spawn epoch 0), shown, never tested.
      bootstrap: the primary's two-level bootstrap `stats.Interval`.
      sanity: failed sanity checks of the row's runs ("" when none or not run).
    Computed: interval (t), pvalue, adjusted (Holm, descriptive rows), verdict, power (seeds for 80%).
    """

    claim: str
    test: str
    values: list
    a_label: str = ""
    a: Sequence[Any] = ()
    b_label: str = ""
    b: Sequence[Any] = ()
    margin: float = 0.0
    primary: bool = False
    control: bool = False
    bootstrap: stats.Interval | None = None
    sanity: str = ""
    interval: stats.Interval | None = None
    pvalue: float = math.nan
    adjusted: float = math.nan
    verdict: str = MISSING
    power: int | None = None

    def __post_init__(self) -> None:
        values = [v for v in self.values if v is not None and math.isfinite(v)]
        if len(values) != len(self.values) or not values:
            self.values = values
            return
        self.interval = stats.t_interval(values)
        if self.control:
            self.verdict = "control"
            return
        self.pvalue = stats.t_pvalue(values, self.margin)
        s = stats.summary(values)
        self.power = stats.seeds_for_power(s.mean - self.margin, s.std) if s.n > 1 else None
        if self.primary:
            self.verdict = primary_verdict(self.interval, self.bootstrap, self.margin)
        else:
            self.verdict = stats.verdict(self.interval, self.margin)


def primary_verdict(t: stats.Interval, boot: stats.Interval | None, margin: float) -> str:
    """Both intervals above the margin: holds; both below: does not hold; else inconclusive."""
    if boot is None or t.n < 2:
        return OPEN
    verdicts = {stats.verdict(t, margin), stats.verdict(boot, margin)}
    return verdicts.pop() if len(verdicts) == 1 else OPEN


def holm_family(tests: Sequence[Test], alpha: float = 0.05) -> int:
    """Holm-adjusts the p-values of a claim's descriptive rows (in place); returns how many."""
    family = [t for t in tests if not t.primary and not t.control and math.isfinite(t.pvalue)]
    if not family:
        return 0
    rejected, adjusted = stats.holm([t.pvalue for t in family], alpha)
    for t, r, p in zip(family, rejected, adjusted):
        t.adjusted = p
        above = cast(stats.Interval, t.interval).mean > t.margin  # set by __post_init__
        t.verdict = ("above " if above else "below ") + f"{t.margin:g} (Holm)" if r else "not resolved"
    return len(family)


# --- reading what the sweep measured (a `tf_ntk.study.collect.Collected`) ---

def distance(collected: collect.Collected, a: str, b: str, epoch: float) -> float | None:
    d = collected.comparisons.get((a, b)) or collected.comparisons.get((b, a)) or {}
    return d.get(epoch)


def kernel_at(collected: collect.Collected, run: str, epoch: float, metric: str) -> float | None:
    for row in collected.kernels.get(run, []):
        if row["epoch"] == epoch:
            value = row.get(metric)
            return None if value is None or value != value else value
    return None


def remaining(collected: collect.Collected, run: str, epoch: float, final: float) -> float | None:
    """d(k_epoch, k_final) / d(k_0, k_final): the share of the kernel's total movement still ahead
    at ``epoch`` (0: it has reached its final kernel)."""
    ahead = kernel_at(collected, run, epoch, "distance_to_final")
    total = kernel_at(collected, run, final, "distance_to_init")
    if ahead is None or not total:
        return None
    return ahead / total


def _eval(collected: collect.Collected, run: str, key: str = "robust") -> Any:
    r = collected.evals.get(run)
    return None if r is None else r.get(key)


def _bits(collected: collect.Collected, runs: Sequence[str], key: str = "robust") -> np.ndarray | None:
    """(seeds, images) 0/1 matrix of ``runs``' per-example outcomes (None when one is missing or
    the runs read different numbers of images)."""
    rows = []
    for run in runs:
        r = collected.evals.get(run) or {}
        bits = (r.get("per_example") or {}).get(key)
        if bits is None:
            return None
        rows.append(np.frombuffer(bits.encode("ascii"), np.uint8) - ord("0"))
    if not rows or len({len(r) for r in rows}) != 1:
        return None
    return np.stack(rows).astype(np.float64)


def _sanity(collected: collect.Collected, runs: Sequence[str]) -> str:
    """"k of n runs: <checks> broke more (counted)" for the runs whose sanity report failed."""
    failed: dict[str, list[str]] = {}
    for run in runs:
        for name in (collected.evals.get(run) or {}).get("sanity_failed", ()):
            failed.setdefault(run, []).append(name.split(" break")[0].split(" not ")[0])
    if not failed:
        return ""
    names = sorted({n for v in failed.values() for n in v})
    return (f"{len(failed)} of {len(runs)} runs failed a sanity check ({', '.join(names)} broke "
            "more examples); the robust accuracies count those breaks")


def _both(a: Sequence[Any], b: Sequence[Any]) -> tuple[list[float], list[float], list[float]]:
    """Keeps the seeds where both sides were measured: (a, b, a − b)."""
    keep = [i for i, (x, y) in enumerate(zip(a, b)) if x is not None and y is not None]
    a, b = [a[i] for i in keep], [b[i] for i in keep]
    return a, b, [x - y for x, y in zip(a, b)]


def _paired_bootstrap(collected: collect.Collected, runs_a: Sequence[str], runs_b: Sequence[str],
                      seed: int) -> stats.Interval | None:
    ma, mb = _bits(collected, runs_a), _bits(collected, runs_b)
    if ma is None or mb is None or ma.shape != mb.shape:
        return None
    return stats.crossed_bootstrap([ma, mb], lambda m: m[0] - m[1], seed=seed)


def floor(collected: collect.Collected, seed: int, epoch: float) -> float | None:
    """The matched noise floor of a seed at ``epoch``: the larger of each run's distance to its
    replica (None when either is missing)."""
    both: list[Any] = [distance(collected, plan.phase1_name(s, seed), plan.replica_name(s, seed), epoch)
            for s in presets.SOURCES]
    return None if None in both else max(both)


def _c1a(preset: presets.Preset, collected: collect.Collected) -> list[Test]:
    seeds = preset.seed_list()
    final = float(preset.phase1_epochs)
    tests = []
    for epoch in [final] + [float(e) for e in preset.kernel_epochs if 0 < e < final]:
        cross = [distance(collected, plan.phase1_name("standard", s),
                          plan.phase1_name("adversarial", s), epoch) for s in seeds]
        a, b, d = _both(cross, [floor(collected, s, epoch) for s in seeds])
        primary = epoch == final
        boot = None
        if primary and a:
            boot = stats.crossed_bootstrap([np.array(a), np.array(b)], lambda m: m[0] - m[1],
                                           seed=1)
        tests.append(Test("C1a", f"epoch {epoch:g}: d(standard, adversarial) minus the matched floor",
                          d if len(d) == len(seeds) else d + [None], "standard vs adversarial", a,
                          "matched floor", b, primary=primary, bootstrap=boot))
    if preset.flip:
        adv = [plan.phase1_name("adversarial", s) for s in seeds]
        flip = [distance(collected, plan.phase1_name(presets.FLIP, s), r, final)
                for s, r in zip(seeds, adv)]
        cross = [distance(collected, plan.phase1_name("standard", s), r, final)
                 for s, r in zip(seeds, adv)]
        a, b, d = _both(flip, cross)
        tests.append(Test("C1a", f"epoch {final:g}: d(flip, adversarial) minus d(standard, "
                          "adversarial) (< 0: the flip run's kernel joins the adversarial one)",
                          d if len(d) == len(seeds) else d + [None], "flip vs adversarial", a,
                          "standard vs adversarial", b))
    return tests


def _c1b(preset: presets.Preset, collected: collect.Collected) -> list[Test]:
    seeds = preset.seed_list()
    final = float(preset.phase1_epochs)
    early = preset.early_epoch()
    steps = preset.optimizer_steps(early)
    tests = []
    for epoch in [early] + [float(e) for e in preset.kernel_epochs
                            if 0 < e <= preset.phase1_epochs / 4 and e != early]:
        ahead = [remaining(collected, plan.phase1_name("adversarial", s), epoch, final) for s in seeds]
        covered = [None if r is None else 1.0 - r for r in ahead]
        primary = epoch == early
        boot = None
        if primary and None not in covered:
            boot = stats.crossed_bootstrap([np.array(covered)], lambda m: m[0], seed=2)
        label = (f"epoch {epoch:g} ({preset.optimizer_steps(epoch):g} optimizer steps): share of the "
                 "adversarial kernel's way covered")
        if primary:
            label = (f"epoch {early:g} = 10% of phase 1 ({steps:g} optimizer steps): share of the "
                     "adversarial kernel's way covered, 1 − d(K_e, K_T) / d(K_0, K_T)")
        tests.append(Test("C1b", label, covered, margin=PRIMARY["C1b"].margin, primary=primary,
                          bootstrap=boot))
    std = [remaining(collected, plan.phase1_name("standard", s), early, final) for s in seeds]
    adv = [remaining(collected, plan.phase1_name("adversarial", s), early, final) for s in seeds]
    a, b, d = _both(std, adv)
    tests.append(Test("C1b", f"epoch {early:g}: share of the way still ahead, standard minus "
                      "adversarial (> 0: the adversarial kernel is the nearer to its end)",
                      d if len(d) == len(seeds) else d + [None], "standard", a, "adversarial", b))
    return tests


def _spawn_rows(preset: presets.Preset, collected: collect.Collected, claim: str, data_mode: str) -> list[Test]:
    """Adversarial minus standard spawn per spawn epoch and dynamics on ``data_mode`` data; the
    primary (C2) at the last spawn, centered; the spawn-epoch-0 control (phase 2 from the
    initialisation, absolute robust accuracy)."""
    seeds = preset.seed_list()
    last = preset.last_spawn()
    tests = []
    for dynamics, mode in preset.phase2_conditions():
        if mode != data_mode:
            continue
        for spawn in sorted(preset.spawn_epochs, key=lambda e: (e != last, e)):
            if spawn == 0:
                if dynamics != "centered":
                    continue  # phase 2 from the initialisation runs centered only
                runs = [plan.phase2_name(dynamics, mode, "standard", s, 0.0) for s in seeds]
                values = [_eval(collected, r) for r in runs]
                tests.append(Test(claim, f"{dynamics} phase 2 on {mode} data from the initialisation "
                                  "(spawn epoch 0, the same for both sources): robust accuracy",
                                  values, control=True))
                continue
            runs_a = [plan.phase2_name(dynamics, mode, "adversarial", s, spawn) for s in seeds]
            runs_b = [plan.phase2_name(dynamics, mode, "standard", s, spawn) for s in seeds]
            a, b, d = _both([_eval(collected, r) for r in runs_a], [_eval(collected, r) for r in runs_b])
            primary = claim == "C2" and dynamics == "centered" and spawn == last
            tests.append(Test(
                claim, f"{dynamics} phase 2 on {mode} data from spawn epoch {spawn:g}: robust "
                "accuracy, adversarial minus standard spawn", d if len(d) == len(seeds) else d + [None],
                "adversarial spawn", a, "standard spawn", b, primary=primary,
                bootstrap=_paired_bootstrap(collected, runs_a, runs_b, seed=3) if primary else None,
                sanity=_sanity(collected, runs_a + runs_b) if primary else ""))
    return tests


def _c2(preset: presets.Preset, collected: collect.Collected) -> list[Test]:
    tests = _spawn_rows(preset, collected, "C2", "clean")
    seeds = preset.seed_list()
    for epoch in preset.machine_epochs():
        if epoch == 0:
            continue
        a, b, d = _both(*[[((collected.machines.get(plan.phase1_name(src, s)) or {}).get(epoch) or {})
                           .get("robust_accuracy") for s in seeds] for src in presets.SOURCES[::-1]])
        tests.append(Test("C2", f"kernel machine of spawn epoch {epoch:g}: robust accuracy, "
                          "adversarial minus standard spawn", d if len(d) == len(seeds) else d + [None],
                          "adversarial spawn", a, "standard spawn", b))
    return tests


def _ratio(c: Any, a: Any, s: Any) -> float | None:
    return None if None in (c, a, s) or a == s else (c - s) / (a - s)


def _c3(preset: presets.Preset, collected: collect.Collected) -> list[Test]:
    seeds = preset.seed_list()
    last = preset.last_spawn()
    margin = PRIMARY["C3"].margin
    tests = []
    std = [plan.phase1_name("standard", s) for s in seeds]
    adv = [plan.phase1_name("adversarial", s) for s in seeds]
    for dynamics, mode in preset.phase2_conditions():
        if mode != "adv":
            continue
        child = [plan.phase2_name(dynamics, "adv", "adversarial", s, last) for s in seeds]
        ratios = [_ratio(_eval(collected, c), _eval(collected, a), _eval(collected, s))
                  for c, a, s in zip(child, adv, std)]
        primary = dynamics == "centered"
        boot = None
        if primary:
            m: list[Any] = [_bits(collected, runs) for runs in (child, adv, std)]
            if all(x is not None for x in m) and len({x.shape for x in m}) == 1:
                boot = stats.crossed_bootstrap(m, lambda g: (g[0] - g[2]) / (g[1] - g[2]), seed=4)
        tests.append(Test(
            "C3", f"{dynamics} adversarial phase 2 from the epoch-{last:g} adversarial spawn: share "
            "of adversarial training's robust-accuracy gain over standard training it keeps, "
            "(C − S) / (A − S)", ratios, f"{dynamics} phase 2 (C)", [_eval(collected, r) for r in child],
            "adversarial training (A)", [_eval(collected, r) for r in adv], margin=margin,
            primary=primary, bootstrap=boot, sanity=_sanity(collected, child + adv + std) if primary else ""))
        if primary:
            a, b, d = _both([_eval(collected, r, "benign") for r in child],
                            [_eval(collected, r, "benign") for r in adv])
            tests.append(Test("C3", f"{dynamics} adversarial phase 2 from the epoch-{last:g} "
                              "adversarial spawn minus adversarial training: benign accuracy",
                              d if len(d) == len(seeds) else d + [None], "phase 2 (C)", a,
                              "adversarial training (A)", b))
    tests += _spawn_rows(preset, collected, "C3", "adv")
    return tests


def claims(preset: presets.Preset, collected: collect.Collected) -> dict[str, tuple[str, list[Test], int]]:
    """{claim: (verdict, [Test, ...], descriptive tests in the Holm family)} for C1a, C1b, C2, C3;
    the verdict is the primary's (inconclusive, missing runs, when it could not be computed)."""
    out = {}
    for claim, rows in (("C1a", _c1a), ("C1b", _c1b), ("C2", _c2), ("C3", _c3)):
        tests = rows(preset, collected)
        family = holm_family(tests)
        primary = [t for t in tests if t.primary]
        verdict = primary[0].verdict if primary else MISSING
        out[claim] = (verdict, tests, family)
    return out
