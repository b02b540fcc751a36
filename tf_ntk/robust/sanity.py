"""The sanity report: checks that catch a weak attack or a model that masks its gradients.

Carlini et al. (2019), Athalye et al. (2018), and what RobustBench asks of a model before it accepts
its numbers: robust accuracy must not depend on how hard the attacker tries. Each check attacks the
model again and compares; a check that finds the reported number too high **fails** and says by
how much. Comparisons with a stronger attack use the worst case per example (the stronger attack
continues from the first one's result, `tf_ntk.robust.ensembles.evaluate`), so they measure how many more
examples it breaks, not noise between two independent runs.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import dataclasses
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from tf_ntk.robust import attacks
from tf_ntk.robust import autoattack
from tf_ntk.robust import ensembles


@dataclasses.dataclass
class Check:
    """One check: ``shortfall`` is how far (in accuracy) the result is on the wrong side of its
    limit, 0.0 when it passes."""

    name: str
    passed: bool
    detail: str
    shortfall: float = 0.0


@dataclasses.dataclass
class SanityReport:
    """Sanity checks of one model under one attack (see `sanity_checks`).

    Attributes:
      benign: clean accuracy. robust: accuracy under the attack.
      eps_curve: [(ε, robust accuracy)] over the grid, ε = 0 first.
      checks: the individual checks; ``passed`` is True when all pass.
      tolerance: how many more examples (as a fraction of N) a stronger attack may break.
      attack: the attack's description.
      correct: (N,) bool, the worst case per example over every attack the report ran at the
        attack's ε (the attack itself, more steps, more restarts, other losses, Square): what an
        evaluation that ran the report can count as robust (None for reports built by hand).
    """

    benign: float
    robust: float
    eps_curve: list
    checks: list
    tolerance: float
    attack: str = ""
    correct: np.ndarray | None = None

    @property
    def worst_case(self) -> float:
        """Accuracy under every attack the report ran at the attack's ε (``robust`` if unknown)."""
        return self.robust if self.correct is None else float(np.mean(self.correct))

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"benign": self.benign, "robust": self.robust, "worst_case": self.worst_case,
                "eps_curve": self.eps_curve, "tolerance": self.tolerance, "passed": self.passed,
                "attack": self.attack, "checks": [dataclasses.asdict(c) for c in self.checks]}

    def __str__(self) -> str:
        lines = []
        for c in self.checks:
            by = f"  (by {c.shortfall:.4f})" if not c.passed else ""
            lines.append(f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}{by}")
        return "\n".join(lines)


def _other_losses(attack: Any, steps: int, eps: float, norm: str) -> ensembles.Ensemble:
    """PGD members with the losses and step schedules ``attack`` does not use (and targeted margins
    towards the 3 most likely wrong classes it does not try), one start each, every iterate counted."""
    members = [m for m in ensembles.members(attack) if isinstance(m, attacks.PGDConfig)]
    used = {(m.loss, m.schedule, m.target_rank) for m in members}
    extra = []
    for loss in ("ce", "margin", "dlr"):
        for schedule in ("constant", "cosine"):
            if (loss, schedule, 0) not in used:
                step = 2.5 * eps / steps if schedule == "constant" else eps
                extra.append(attacks.PGDConfig(eps=eps, norm=norm, steps=steps, step_size=step,
                                               loss=loss, schedule=schedule, keep="best"))
    ranks = [k for k in range(1, 10) if ("margin", "cosine", k) not in used][:3]
    extra += [attacks.PGDConfig(eps=eps, norm=norm, steps=steps, step_size=eps, loss="margin",
                                schedule="cosine", keep="best", target_rank=k) for k in ranks]
    return ensembles.Ensemble(tuple(extra), "other losses")


def _gradient_part(attack: Any, result: ensembles.AttackResult) -> ensembles.AttackResult:
    """``result`` as if the black-box members at the end of ``attack`` had not run: the examples
    they broke count as robust again."""
    members = ensembles.members(attack)
    black = [i for i, m in enumerate(members) if getattr(m, "blackbox", False)]
    if not black or len(black) == len(members):
        return result
    broken_by = np.where(result.broken_by >= black[0], ensembles.ROBUST, result.broken_by)
    return dataclasses.replace(result, broken_by=broken_by, correct=broken_by == ensembles.ROBUST)


def _stronger_check(name: str, base: ensembles.AttackResult, stronger: ensembles.AttackResult, tol: float,
                    what: str) -> Check:
    more = int(np.sum(base.correct & ~stronger.correct))
    drop = base.accuracy - stronger.accuracy
    return Check(name, drop <= tol,
                 f"{what} breaks {more} more examples: robust {base.accuracy:.4f} -> "
                 f"{stronger.accuracy:.4f}", max(0.0, drop - tol))


def sanity_checks(model_fn: Callable[[tf.Tensor], tf.Tensor], x: npt.ArrayLike, y: npt.ArrayLike,
                  attack: attacks.PGDConfig | ensembles.Ensemble, *, seed: int = 0,
                  eps_grid: Sequence[float] | None = None, large_eps: float | None = None,
                  large_eps_max_accuracy: float = 0.05, steps_factor: int = 2, restarts_factor: int = 3,
                  tolerance: float | None = None, blackbox_queries: int = 1000, batch_size: int = 256,
                  progress: Callable[[int], Any] | None = None,
                  base: ensembles.AttackResult | None = None, resume_dir: str | None = None,
                  resume_tag: str = "") -> SanityReport:
    """Checks robust accuracy under ``attack`` on images ``x`` (N, H, W, C), labels ``y`` (N,).

    ``attack`` is a `tf_ntk.robust.attacks.PGDConfig` or a `tf_ntk.robust.ensembles.Ensemble`. The checks:

    1. at ε = 0 the attack (one random start per member) gives the benign accuracy exactly;
    2. robust accuracy is non-increasing in ε over ``eps_grid`` (default ε·(¼, ½, 1, 2));
    3. robust accuracy is at most ``large_eps_max_accuracy`` at a large ε (0.5 for L∞, 0.5·√d L2)
       (2 and 3 with one random start per member);
    4. every adversarial image is finite, inside the ε-ball and [0, 1];
    5. ``steps_factor`` times more steps break at most ``tolerance`` more of the examples;
    6. ``restarts_factor`` times each member's random restarts (new seeds) likewise;
    7. losses and step schedules the attack does not use (CE, CW margin, DLR, targeted margins)
       likewise;
    8. black box: the Square attack (``blackbox_queries`` queries, skipped if 0; `tf_ntk.robust.square` for
       L∞, ART's for L2) alone is not below the accuracy under the attack's gradient-based members
       by more than ``tolerance``, and breaks at most ``tolerance`` more examples than they do: a
       model that only masks its gradients fails here.

    ``tolerance`` defaults to max(0.01, 1/N). ``base`` is the outcome of
    ``ensembles.evaluate(model_fn, x, y, attack, seed=seed, batch_size=batch_size)`` where the caller
    already has it (`tf_ntk.cli.evaluate` does): the report then does not run the attack a second
    time. ``resume_dir`` and ``resume_tag`` go to every `tf_ntk.robust.ensembles.evaluate` the
    report runs, so an interrupted report continues where it stopped. Returns a `SanityReport`.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    n = len(y)
    tol = tolerance if tolerance is not None else max(0.01, 1 / n)
    eps, norm = attack.eps, attack.norm
    steps = ensembles.members(attack)[0].steps

    def run(a: Any, offset: int, start: ensembles.AttackResult | None = None) -> ensembles.AttackResult:
        return ensembles.evaluate(model_fn, x, y, a, seed=seed + offset, batch_size=batch_size,
                                   start=start, progress=progress, resume_dir=resume_dir,
                                   resume_tag=resume_tag)

    if base is None:
        base = run(attack, 0)
    elif len(base.correct) != n or base.x_adv.shape != x.shape:
        raise ValueError(f"base holds {len(base.correct)} examples of shape {base.x_adv.shape[1:]}, "
                         f"the images {n} of shape {x.shape[1:]}")
    benign = float(np.mean(base.broken_by != ensembles.CLEAN_WRONG))
    robust = base.accuracy
    checks = []

    # Every check below but the black-box one attacks with the gradient-based part of the attack:
    # the checks are about gradients, and a black-box search at every ε would cost far more.
    gradient = attack.whitebox() if isinstance(attack, ensembles.Ensemble) else attack
    gradient = gradient if gradient is not None else attack
    white = _gradient_part(attack, base)
    one_start = gradient.replace(restarts=1)  # enough for the shape of the ε curve, 5x cheaper
    # At ε = 0 every restart starts and stays on the clean image, so one start per member checks as
    # much as ten, and nothing ever breaks: all N images run every start to its last step.
    at_zero = run(one_start.replace(eps=0.0), 0)
    checks.append(Check("eps=0 gives benign accuracy", at_zero.accuracy == benign,
                        f"robust {at_zero.accuracy:.4f} vs benign {benign:.4f}",
                        abs(benign - at_zero.accuracy)))

    grid = sorted(eps_grid if eps_grid is not None else [eps * f for f in (0.25, 0.5, 1, 2)])
    curve = [(0.0, at_zero.accuracy)]
    for e in grid:
        if e == 0:
            continue
        e = min(e, 1.0) if norm == "linf" else e
        acc = run(one_start.replace(eps=e), 0).accuracy
        curve.append((float(e), acc))
    rises = [b[1] - a[1] for a, b in zip(curve, curve[1:]) if b[1] > a[1] + tol]
    checks.append(Check("robust accuracy non-increasing in eps", not rises,
                        ", ".join(f"{e:.4g}:{acc:.4f}" for e, acc in curve),
                        max([r - tol for r in rises], default=0.0)))

    d = int(np.prod(x.shape[1:]))
    big = large_eps if large_eps is not None else (0.5 if norm == "linf" else 0.5 * math.sqrt(d))
    at_big = run(one_start.replace(eps=big), 0).accuracy
    checks.append(Check("near 0 at a large eps", at_big <= large_eps_max_accuracy,
                        f"robust {at_big:.4f} at eps={big:.4g} (limit {large_eps_max_accuracy})",
                        max(0.0, at_big - large_eps_max_accuracy)))

    delta = (base.x_adv - x).reshape(n, -1)
    size = np.abs(delta).max() if norm == "linf" else np.linalg.norm(delta, axis=1).max()
    inside = (base.rejected == 0 and np.isfinite(base.x_adv).all() and base.x_adv.min() >= 0.0
              and base.x_adv.max() <= 1.0 and size <= eps * (1 + 1e-5) + 1e-6)
    checks.append(Check("adversarial inputs finite, inside the eps-ball and [0, 1]", bool(inside),
                        f"max {norm} distance {size:.6g} (eps {eps:.6g}), range "
                        f"[{base.x_adv.min():.4g}, {base.x_adv.max():.4g}], "
                        f"{base.rejected} crafted images rejected", float(not inside)))

    more_steps = run(gradient.replace(steps=steps * steps_factor), 1, start=base)
    checks.append(_stronger_check(f"{steps_factor}x steps break no more examples", base, more_steps,
                                  tol, f"{steps_factor}x steps"))
    more: Any = tuple(m.replace(restarts=m.restarts * restarts_factor)  # the members, then one attack
                      for m in ensembles.members(gradient))
    more = ensembles.Ensemble(more, "more restarts") if len(more) > 1 else more[0]
    more_restarts = run(more, 2, start=base)
    checks.append(_stronger_check(f"{restarts_factor}x restarts break no more examples", base,
                                  more_restarts, tol, f"{restarts_factor}x restarts (new seeds)"))
    other = _other_losses(attack, steps, eps, norm)
    other_losses = run(other, 3, start=base)
    checks.append(_stronger_check("other losses break no more examples", base, other_losses, tol,
                                  f"{len(other.members)} PGD attacks with other losses/schedules"))
    correct = base.correct & more_steps.correct & more_restarts.correct & other_losses.correct

    if blackbox_queries:

        square = autoattack.SquareConfig(eps=eps, norm=norm, queries=blackbox_queries,
                                         batch_size=batch_size,
                                         implementation="tf" if norm == "linf" else "art")
        alone = run(square, 4)
        union = run(square, 4, start=white)
        below = white.accuracy - alone.accuracy
        more = int(np.sum(white.correct & ~union.correct))
        drop = white.accuracy - union.accuracy
        checks.append(Check("black-box Square attack not stronger than the white-box attack",
                            below <= tol and drop <= tol,
                            f"Square alone {alone.accuracy:.4f} vs white-box {white.accuracy:.4f}; "
                            f"breaks {more} examples the white-box attack missed "
                            f"({square.queries} queries)", max(0.0, below - tol, drop - tol)))
        correct = correct & alone.correct & union.correct
    return SanityReport(benign=benign, robust=robust, eps_curve=curve, checks=checks, tolerance=tol,
                        attack=attack.describe(), correct=correct)
