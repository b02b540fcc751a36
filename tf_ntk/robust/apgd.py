"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"), in TensorFlow: one compiled loop over the steps of a batch.

APGD is PGD with momentum (α = 0.75) and a step size that adapts per example: it starts at 2ε and
halves at a checkpoint when fewer than ρ = 0.75 of the steps since the last checkpoint raised the
loss, or when the step was not halved at the previous checkpoint and the best loss has not risen
since; the iterate then restarts from the best point found. Checkpoints come after 22% of the steps,
then after windows that shrink by 3% of the steps down to 6%. Losses: cross-entropy (APGD-CE) or the
difference-of-logits ratio (APGD-DLR); norms L∞ and L2.

Unlike ART's implementation (`tf_ntk.robust.autoattack.APGDConfig`, one TensorFlow call per step and
restart from NumPy), the whole attack is one `tf.while_loop` per restart, so it runs under
``jit_compile`` at the speed of its forward-backward passes. Random starts are keyed like the PGD
members' (`tf_ntk.robust.attacks.sample_start`): an example meets the same starts whatever batch it is in.
ε is in [0, 1] pixel units (L∞) or L2 units; images float32 NHWC in [0, 1]; labels int (N,).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tf_ntk.robust import attacks

MOMENTUM = 0.75
"""α: the weight of the new step against the previous one."""
RHO = 0.75
"""The share of loss-raising steps below which a checkpoint halves the step size."""
LOSSES = ("ce", "dlr")
"""APGD's losses: cross-entropy and the difference-of-logits ratio."""


def checkpoint_schedule(steps: int) -> tuple[int, int, int]:
    """(first window, shrink, smallest window) in steps: 22%, 3% and 6% of ``steps``, at least 1."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


def _per_example(v: tf.Tensor, rank: int) -> tf.Tensor:
    return tf.reshape(v, [-1] + [1] * (rank - 1))


def _project(x: tf.Tensor, candidate: tf.Tensor, eps: float | tf.Tensor, norm: str) -> tf.Tensor:
    """``candidate`` moved into the ε-ball around ``x`` and into [0, 1]."""
    if norm == "linf":
        return tf.clip_by_value(tf.clip_by_value(candidate, x - eps, x + eps), 0.0, 1.0)
    delta = candidate - x
    size = tf.norm(tf.reshape(delta, [tf.shape(x)[0], -1]), axis=1)
    scale = tf.minimum(1.0, eps / tf.maximum(size, 1e-12))
    return tf.clip_by_value(x + delta * _per_example(scale, x.shape.rank), 0.0, 1.0)


def _direction(grad: tf.Tensor, norm: str) -> tf.Tensor:
    """The steepest-ascent direction of unit size: sign (L∞) or normalised gradient (L2)."""
    if norm == "linf":
        return tf.sign(grad)
    size = tf.norm(tf.reshape(grad, [tf.shape(grad)[0], -1]), axis=1)
    return grad / _per_example(tf.maximum(size, 1e-12), grad.shape.rank)


def apgd(model_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, y: tf.Tensor, *, eps: float, steps: int = 100,
         norm: str = "linf", loss: str = "ce", restarts: int = 1, seed: int | tf.Tensor | None = None,
         example_rows: tuple[Any, Any] | None = None) -> tf.Tensor:
    """APGD adversarial examples.

    Args:
      model_fn: images (N, H, W, C) -> logits (N, O), BN in inference mode.
      x: clean images (N, H, W, C) float32 in [0, 1]; y: true int labels (N,).
      eps: the radius; steps: iterations per start; restarts: random starts.
      norm: "linf" or "l2"; loss: "ce" or "dlr" (needs 3 classes or more).
      seed: an int or (2,) int key of the random starts (see `tf_ntk.robust.attacks.sample_start`);
        restart r uses the key folded with r (restart 0: the key itself).
      example_rows: (rows (N,), total): ``x`` holds examples ``rows`` of a set of ``total``.

    Returns:
      (N, H, W, C) float32 inside the ε-ball and [0, 1]: per example the first misclassified
      iterate found over all starts, else the iterate of highest loss.
    """
    if norm not in attacks.NORMS:
        raise ValueError(f"unknown norm {norm!r}; known norms: {', '.join(attacks.NORMS)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown APGD loss {loss!r}; known: {', '.join(LOSSES)}")
    if int(steps) < 1 or int(restarts) < 1:
        raise ValueError(f"APGD needs steps and restarts >= 1, got {steps} and {restarts}")
    return _apgd(model_fn, x, y, attacks.cross_entropy_loss if loss == "ce" else attacks.dlr_loss,
                 eps=eps, steps=int(steps), norm=norm, restarts=int(restarts), seed=seed,
                 example_rows=example_rows)


def params(*, eps: float, loss: str, restarts: int) -> dict[str, np.generic]:
    """An APGD configuration as `apgd_by_params` takes it: {name: NumPy scalar}."""
    return {"eps": np.float32(eps), "loss": np.int32(LOSSES.index(loss)),
            "restarts": np.int32(restarts)}


def apgd_by_params(model_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, y: tf.Tensor, params: Mapping[str, Any], *,
                   norm: str, steps: int, seed: int | tf.Tensor | None = None,
                   example_rows: tuple[Any, Any] | None = None) -> tf.Tensor:
    """`apgd` with eps, loss and restarts as tensors (`params`): one traced (and compiled) function
    serves APGD-CE and APGD-DLR of one norm and number of steps. Same results as `apgd`."""
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    index = tf.cast(params["loss"], tf.int32)
    three = model_fn(x[:1]).shape[-1] >= 3

    def loss_fn(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        dlr = attacks.dlr_loss(labels, logits) if three else tf.zeros_like(logits[:, 0])
        return tf.gather(tf.stack([attacks.cross_entropy_loss(labels, logits), dlr]), index)

    return _apgd(model_fn, x, y, loss_fn, eps=tf.cast(params["eps"], tf.float32), steps=int(steps),
                 norm=norm, restarts=tf.cast(params["restarts"], tf.int32), seed=seed,
                 example_rows=example_rows)


def _apgd(model_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, y: tf.Tensor,
          loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], *, eps: float | tf.Tensor, steps: int, norm: str,
          restarts: int | tf.Tensor, seed: int | tf.Tensor | None, example_rows: tuple[Any, Any] | None) -> tf.Tensor:
    """The attack of `apgd`; ``eps`` and ``restarts`` may be scalar tensors."""
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    key = attacks._seed_key(seed)  # noqa: SLF001  (the PGD members' keying)
    rank = x.shape.rank
    first, shrink, smallest = checkpoint_schedule(steps)
    inf = tf.constant(np.inf)

    def evaluate(points: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(loss (N,), score (N,): ∞ where misclassified, gradient of the loss)."""
        with tf.GradientTape() as tape:
            tape.watch(points)
            logits = model_fn(points)
            value = loss_fn(y, logits)
        grad = tape.gradient(value, points)
        wrong = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
        return value, tf.where(wrong, inf, value), grad

    def pick(better: tf.Tensor, new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
        return tf.where(_per_example(better, rank), new, old)

    def one_start(start: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        value, score, grad = evaluate(start)
        step = tf.fill(tf.shape(y), tf.cast(2.0 * eps, tf.float32))
        state = dict(
            i=tf.constant(0), adv=start, previous=start, grad=grad, value=value,
            best_loss=value, best_point=start, best_grad=grad,  # highest loss: the restart point
            found=start, found_score=score,  # what the attack returns (misclassified first)
            step=step, raised=tf.zeros_like(value), since=tf.constant(0), window=tf.constant(first),
            halved_last=tf.zeros(tf.shape(y), tf.bool), loss_at_last=value)

        def body(s: dict[str, tf.Tensor]) -> list[dict[str, tf.Tensor]]:
            momentum = tf.where(s["i"] > 0, MOMENTUM, 1.0)
            z = _project(x, s["adv"] + _per_example(s["step"], rank) * _direction(s["grad"], norm),
                         eps, norm)
            new = _project(x, s["adv"] + momentum * (z - s["adv"])
                           + (1.0 - momentum) * (s["adv"] - s["previous"]), eps, norm)
            value, score, grad = evaluate(new)
            better_found = score > s["found_score"]
            raised = s["raised"] + tf.cast(value > s["value"], tf.float32)
            improved = value > s["best_loss"]
            best_loss = tf.where(improved, value, s["best_loss"])
            best_point = pick(improved, new, s["best_point"])
            best_grad = pick(improved, grad, s["best_grad"])
            since = s["since"] + 1
            at_checkpoint = tf.equal(since, s["window"])
            oscillating = raised <= tf.cast(s["window"], tf.float32) * RHO
            stalled = tf.logical_and(tf.logical_not(s["halved_last"]), s["loss_at_last"] >= best_loss)
            halve = tf.logical_and(at_checkpoint, tf.logical_or(oscillating, stalled))
            adv = pick(halve, best_point, new)
            return [dict(
                i=s["i"] + 1, adv=adv, previous=s["adv"], grad=pick(halve, best_grad, grad),
                value=value, best_loss=best_loss, best_point=best_point, best_grad=best_grad,
                found=pick(better_found, new, s["found"]),
                found_score=tf.where(better_found, score, s["found_score"]),
                step=tf.where(halve, s["step"] / 2.0, s["step"]),
                raised=tf.where(at_checkpoint, tf.zeros_like(raised), raised),
                since=tf.where(at_checkpoint, 0, since),
                window=tf.where(at_checkpoint, tf.maximum(s["window"] - shrink, smallest), s["window"]),
                halved_last=tf.where(at_checkpoint, halve, s["halved_last"]),
                loss_at_last=tf.where(at_checkpoint, best_loss, s["loss_at_last"]))]

        final = tf.while_loop(lambda s: s["i"] < steps, body, [state])[0]
        return final["found"], final["found_score"]

    def next_start(r: tf.Tensor, best: tf.Tensor, best_score: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        # Restart 0 starts from the key itself (as a PGD member's single start does).
        k = tf.where(tf.equal(r, 0), key, tf.random.experimental.stateless_fold_in(key, tf.cast(r, tf.int64)))
        candidate, score = one_start(attacks.sample_start(x, eps, norm, k, example_rows=example_rows))
        better = score > best_score
        return r + 1, pick(better, candidate, best), tf.where(better, score, best_score)

    initial = (tf.constant(0), x, tf.fill(tf.shape(y), -inf))
    return tf.while_loop(lambda r, *_: r < restarts, next_start, initial)[1]
