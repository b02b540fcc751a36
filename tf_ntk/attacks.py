"""Projected gradient descent (Madry et al.) on top of cleverhans' TF2 attack.

ε and step sizes are in [0, 1] pixel units; adversarial images stay in [0, 1] and in the ε-ball.
The attack always uses the true labels and a uniform random start (cleverhans' defaults, model
predictions and no random start, are not Madry PGD).
"""

import dataclasses

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

NORMS = {"linf": np.inf, "l2": 2}
LOSSES = ("ce", "margin")


def cross_entropy_loss(labels, logits):
    """Per-example softmax cross-entropy (N,) of int labels (N,) and logits (N, O)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                          logits=logits)


def margin_loss(labels, logits):
    """Per-example CW-style margin (N,): max_{j≠y} z_j − z_y (positive when misclassified)."""
    labels = tf.cast(labels, tf.int32)
    true = tf.gather(logits, labels, batch_dims=1)
    others = tf.where(tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False),
                      tf.cast(-np.inf, logits.dtype), logits)
    return tf.reduce_max(others, axis=-1) - true


_LOSS_FNS = {"ce": cross_entropy_loss, "margin": margin_loss}


def check_config(*, eps, steps, step_size=None, norm="linf", loss="ce", restarts=1):
    """Validates a PGD configuration; returns the step size (default 2·eps/steps)."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; known norms: {', '.join(NORMS)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r}; known losses: {', '.join(LOSSES)}")
    if norm == "linf" and not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1] (pixel units) for linf, got {eps}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if int(steps) < 1:
        raise ValueError(f"attack steps must be >= 1, got {steps}")
    if int(restarts) < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    step_size = 2.0 * eps / int(steps) if step_size is None else float(step_size)
    if step_size < 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    return step_size


def pgd(model_fn, x, y, *, eps, steps, step_size=None, norm="linf", random_start=True, loss="ce",
        restarts=1):
    """PGD adversarial examples.

    Args:
      model_fn: callable images (N, H, W, C) -> logits (N, O); for a Keras model pass one stable
        callable such as ``lambda x: model(x, training=False)`` (BN in inference mode).
      x: clean images (N, H, W, C) float32 in [0, 1].
      y: true int labels (N,).
      eps: radius of the ball, in [0, 1] pixel units (L∞) or L2 units.
      steps: gradient-ascent steps per restart.
      step_size: step length; default 2·eps/steps (the authors' choice).
      norm: ``"linf"`` (sign steps) or ``"l2"`` (normalised gradient steps).
      random_start: uniform start in the ε-ball (Madry); False gives the basic iterative method.
      loss: ``"ce"`` (cross-entropy of the true label) or ``"margin"`` (CW-style logit margin).
      restarts: independent random starts; per example the one with the highest loss is kept.

    Returns:
      Adversarial images, same shape and dtype as ``x``, inside the ε-ball around ``x`` and [0, 1].
    """
    step_size = check_config(eps=eps, steps=steps, step_size=step_size, norm=norm, loss=loss,
                             restarts=restarts)
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    if eps == 0:
        return x
    loss_fn = _LOSS_FNS[loss]
    # cleverhans asserts eps_iter <= eps; a larger step is equivalent to a step of eps after projection.
    eps_iter = min(step_size, eps)

    def one_restart():
        return projected_gradient_descent(
            model_fn, x, eps, eps_iter, int(steps), NORMS[norm], loss_fn=loss_fn, clip_min=0.0,
            clip_max=1.0, y=y, rand_init=bool(random_start), sanity_checks=False)

    best = one_restart()
    if restarts == 1:
        return best
    best_loss = loss_fn(y, model_fn(best))
    for _ in range(int(restarts) - 1):
        cand = one_restart()
        cand_loss = loss_fn(y, model_fn(cand))
        better = cand_loss > best_loss
        best = tf.where(better[:, None, None, None], cand, best)
        best_loss = tf.where(better, cand_loss, best_loss)
    return best


@dataclasses.dataclass(frozen=True)
class PGDConfig:
    """A PGD attack. ε and step size in [0, 1] pixel units; step_size None means 2·eps/steps.

    The protocol's evaluation attack is ``PGDConfig(eps=4/255, steps=100)`` (L∞, one random start).
    """

    eps: float = 4 / 255
    steps: int = 100
    step_size: float = None
    norm: str = "linf"
    loss: str = "ce"
    restarts: int = 1

    def __post_init__(self):
        check_config(eps=self.eps, steps=self.steps, step_size=self.step_size,
                             norm=self.norm, loss=self.loss, restarts=self.restarts)

    def attack(self, model_fn, x, y):
        """Adversarial versions of ``x`` against ``model_fn``."""
        return pgd(model_fn, x, y, eps=self.eps, steps=self.steps, step_size=self.step_size,
                           norm=self.norm, loss=self.loss, restarts=self.restarts)
