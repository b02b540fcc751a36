"""Benign and robust accuracy, saved adversarial sets, transfer attacks, linearized output terms,
and sanity checks against gradient masking.

All functions take ``model_fn``: one stable callable images (N, H, W, C) in [0, 1] -> logits (N, O)
(`inference_fn(model)`: BN in inference mode; a linearized model is attacked under its own
dynamics), and ``dataset``: batches of (images, int labels). ε is in [0, 1] pixel units (L∞).
PGD random starts are keyed by (seed, batch index), so the same seed gives the same numbers.
"""

import dataclasses
import json
import math
import os

import numpy as np
import tensorflow as tf

from tf_ntk import attacks
from tf_ntk import checkpoints

# The protocol's evaluation attacks.
PROTOCOL_LINF = attacks.PGDConfig(eps=4 / 255, steps=100)  # step 2ε/100, one random start
PROTOCOL_L2 = attacks.PGDConfig(eps=0.25, steps=100, step_size=0.01, norm="l2")


def inference_fn(model):
    """A stable callable images -> logits with BN in inference mode, for attacks and evaluation."""
    return lambda x: model(x, training=False)


def _correct(model_fn, x, y):
    return tf.equal(tf.argmax(model_fn(x), axis=-1, output_type=tf.int32), tf.cast(y, tf.int32))


def _check_nonempty(total, what):
    if total == 0:
        raise ValueError(f"cannot compute {what} on an empty dataset")


def accuracy(model_fn, dataset):
    """Fraction of the examples of ``dataset`` that ``model_fn`` classifies right."""
    step = tf.function(lambda x, y: tf.reduce_sum(tf.cast(_correct(model_fn, x, y), tf.int64)),
                       reduce_retracing=True)
    correct = total = 0
    for x, y in dataset:
        correct += int(step(x, y))
        total += int(tf.shape(y)[0])
    _check_nonempty(total, "accuracy")
    return correct / total


def _attack_fn(model_fn, config, jit_compile=False):
    return tf.function(lambda x, y, seed: config.attack(model_fn, x, y, seed=seed),
                       jit_compile=jit_compile, reduce_retracing=True)


def adversarial_examples(model_fn, dataset, config=PROTOCOL_LINF, *, seed=0, jit_compile=False,
                         progress=None):
    """PGD examples for a whole dataset; ``progress(batches_done)`` after each batch.

    Returns:
      (x (N, H, W, C), x_adv (N, H, W, C), y (N,)) NumPy arrays; x_adv is crafted with the true
      labels against ``model_fn``, batch b with seed (seed, b).
    """
    attack = _attack_fn(model_fn, config, jit_compile)
    xs, advs, ys = [], [], []
    for b, (x, y) in enumerate(dataset):
        advs.append(attack(x, y, tf.constant([seed, b], tf.int64)).numpy())
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
        if progress is not None:
            progress(b + 1)
    _check_nonempty(len(ys), "adversarial examples")
    return np.concatenate(xs), np.concatenate(advs), np.concatenate(ys)


def robust_accuracy(model_fn, dataset, config=PROTOCOL_LINF, *, seed=0, jit_compile=False):
    """Accuracy on PGD examples crafted against ``model_fn`` (protocol default: L∞ 4/255, PGD-100)."""
    attack = _attack_fn(model_fn, config, jit_compile)
    count = tf.function(lambda x, y: tf.reduce_sum(tf.cast(_correct(model_fn, x, y), tf.int64)),
                        reduce_retracing=True)
    correct = total = 0
    for b, (x, y) in enumerate(dataset):
        correct += int(count(attack(x, y, tf.constant([seed, b], tf.int64)), y))
        total += int(tf.shape(y)[0])
    _check_nonempty(total, "robust accuracy")
    return correct / total


def _as_dataset(x, y, batch_size):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def save_adversarial(path, x, x_adv, y, config, **record):
    """Writes an adversarial set to ``path`` (.npz) atomically.

    Stores ``x``, ``x_adv`` (N, H, W, C) float32, ``y`` (N,) and a JSON record (the attack config and
    ``record``, e.g. the source checkpoint), so it can be replayed against other models.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"adversarial sets are .npz files, got {path!r}")
    meta = json.dumps({"attack": config.to_dict(), **record}, sort_keys=True)
    checkpoints.write_npz(path, compressed=True, x=np.asarray(x, np.float32),
                          x_adv=np.asarray(x_adv, np.float32), y=np.asarray(y, np.int32),
                          meta=np.array(meta))


def load_adversarial(path):
    """{"x", "x_adv", "y", "meta"} of a set written by `save_adversarial`; ValueError if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            out = {k: f[k] for k in ("x", "x_adv", "y")}
            out["meta"] = json.loads(str(f["meta"]))
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path} is not a tf_ntk adversarial set: {e}") from e
    if out["x"].shape != out["x_adv"].shape or out["x"].shape[0] != out["y"].shape[0]:
        raise ValueError(f"{path}: inconsistent shapes {out['x'].shape}, {out['x_adv'].shape}, "
                         f"{out['y'].shape}")
    return out


def transfer_accuracy(model_fn, adversarial_set, batch_size=256):
    """Accuracy of ``model_fn`` on a saved adversarial set (a path or `load_adversarial`'s dict):
    a transfer attack when the set was crafted against another model."""
    if isinstance(adversarial_set, (str, os.PathLike)):
        adversarial_set = load_adversarial(adversarial_set)
    return accuracy(model_fn, _as_dataset(adversarial_set["x_adv"], adversarial_set["y"], batch_size))


def output_terms(model, dataset, config=None, *, seed=0):
    """The two output terms of a linearized or centered model, per example, on clean inputs and
    (when ``config`` is given) on PGD inputs crafted against the model under its own dynamics.

    Returns:
      {"spawn_clean", "kernel_clean"[, "spawn_adv", "kernel_adv"]}: (N, O) arrays of f_{θ_s}(x) and
      J_{θ_s}(x)(θ − θ_s), and "y" (N,).
    """
    if not hasattr(model, "kernel_term"):
        raise ValueError("output terms exist only for tf_ntk.linearize models")
    terms = tf.function(lambda x: (model.spawn_output(x), model.kernel_term(x)),
                        reduce_retracing=True)
    attack = _attack_fn(inference_fn(model), config) if config is not None else None
    out = {"spawn_clean": [], "kernel_clean": [], "y": []}
    if attack is not None:
        out.update(spawn_adv=[], kernel_adv=[])
    for b, (x, y) in enumerate(dataset):
        s, k = terms(x)
        out["spawn_clean"].append(s.numpy())
        out["kernel_clean"].append(k.numpy())
        out["y"].append(np.asarray(y))
        if attack is not None:
            s, k = terms(attack(x, y, tf.constant([seed, b], tf.int64)))
            out["spawn_adv"].append(s.numpy())
            out["kernel_adv"].append(k.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclasses.dataclass
class SanityReport:
    """Gradient-masking checks of one model under one attack (see `sanity_checks`).

    Attributes:
      benign: clean accuracy. robust: accuracy under the attack.
      eps_curve: [(ε, robust accuracy)] over the grid, ε = 0 first.
      checks: the individual checks; ``passed`` is True when all pass.
      tolerance: the noise allowance used (two standard errors of an accuracy over N examples).
    """

    benign: float
    robust: float
    eps_curve: list
    checks: list
    tolerance: float

    @property
    def passed(self):
        return all(c.passed for c in self.checks)

    def to_dict(self):
        return {"benign": self.benign, "robust": self.robust, "eps_curve": self.eps_curve,
                "tolerance": self.tolerance, "passed": self.passed,
                "checks": [dataclasses.asdict(c) for c in self.checks]}

    def __str__(self):
        lines = [f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def sanity_checks(model_fn, dataset, config=PROTOCOL_LINF, *, eps_grid=None, large_eps=None,
                  large_eps_max_accuracy=0.05, steps_factor=2, restarts=3, seed=0, tolerance=None):
    """Checks that catch gradient masking (Carlini et al. 2019; Athalye et al. 2018).

    1. robust accuracy at ε = 0 equals benign accuracy exactly;
    2. robust accuracy is non-increasing in ε over ``eps_grid`` (default ε·(0, ¼, ½, 1, 2)), up to noise;
    3. robust accuracy is at most ``large_eps_max_accuracy`` at a large ε (default 0.5 for L∞,
       a ball of radius 0.5·√d for L2);
    4. adversarial inputs lie inside the ε-ball and [0, 1];
    5. ``steps_factor`` times more steps, and ``restarts`` restarts, never raise robust accuracy
       beyond noise.
    Noise (``tolerance``) defaults to two standard errors of an accuracy over the dataset's N examples,
    2·sqrt(p(1 − p)/N), at least 1/N.

    Returns:
      A `SanityReport`.
    """
    x, x_adv, y = adversarial_examples(model_fn, dataset, config, seed=seed)
    n = len(y)
    benign = accuracy(model_fn, _as_dataset(x, y, 256))
    robust = accuracy(model_fn, _as_dataset(x_adv, y, 256))
    tol = tolerance if tolerance is not None else max(2 * math.sqrt(robust * (1 - robust) / n), 1 / n)
    data = _as_dataset(x, y, 256)
    step_size = config.resolved_step_size

    def robust_at(**changes):
        fields = {**dataclasses.asdict(config), **changes}
        if "eps" in changes and "step_size" not in changes:
            fields["step_size"] = None if config.step_size is None else step_size * changes["eps"] / config.eps
        return robust_accuracy(model_fn, data, attacks.PGDConfig(**fields), seed=seed)

    checks = []
    at_zero = robust_at(eps=0.0)
    checks.append(Check("eps=0 gives benign accuracy", at_zero == benign,
                        f"robust {at_zero:.4f} vs benign {benign:.4f}"))
    grid = sorted(eps_grid if eps_grid is not None else [config.eps * f for f in (0.25, 0.5, 1, 2)])
    curve = [(0.0, at_zero)]
    for e in grid:
        if e == 0:
            continue
        if config.norm == "linf":
            e = min(e, 1.0)
        curve.append((float(e), robust if math.isclose(e, config.eps) else robust_at(eps=e)))
    rises = [(a, b) for a, b in zip(curve, curve[1:]) if b[1] > a[1] + tol]
    checks.append(Check("robust accuracy non-increasing in eps", not rises,
                        ", ".join(f"{e:.4g}:{acc:.4f}" for e, acc in curve)))
    d = int(np.prod(x.shape[1:]))
    big = large_eps if large_eps is not None else (0.5 if config.norm == "linf" else 0.5 * math.sqrt(d))
    at_big = robust_at(eps=big)
    checks.append(Check("near 0 at a large eps", at_big <= large_eps_max_accuracy,
                        f"robust {at_big:.4f} at eps={big:.4g} (limit {large_eps_max_accuracy})"))
    delta = (x_adv - x).reshape(n, -1)
    size = np.abs(delta).max() if config.norm == "linf" else np.linalg.norm(delta, axis=1).max()
    inside = size <= config.eps * (1 + 1e-5) + 1e-6 and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    checks.append(Check("adversarial inputs inside the eps-ball and [0, 1]", bool(inside),
                        f"max {config.norm} distance {size:.6g} (eps {config.eps:.6g}), "
                        f"range [{x_adv.min():.4g}, {x_adv.max():.4g}]"))
    more_steps = robust_at(steps=config.steps * steps_factor,
                           step_size=step_size / steps_factor if config.step_size is not None else None)
    checks.append(Check(f"{steps_factor}x steps do not raise robust accuracy",
                        more_steps <= robust + tol, f"{more_steps:.4f} vs {robust:.4f}"))
    more_restarts = robust_at(restarts=config.restarts * restarts)
    checks.append(Check(f"{restarts}x restarts do not raise robust accuracy",
                        more_restarts <= robust + tol, f"{more_restarts:.4f} vs {robust:.4f}"))
    return SanityReport(benign=benign, robust=robust, eps_curve=curve, checks=checks, tolerance=tol)
