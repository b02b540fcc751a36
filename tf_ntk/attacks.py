"""Projected gradient descent (Madry et al.) on top of cleverhans' TF2 attack components.

ε and step sizes are in [0, 1] pixel units; adversarial images stay in [0, 1] and in the ε-ball.
The attack always uses the true labels and a uniform random start (cleverhans' defaults, model
predictions and no random start, are not Madry PGD).

Each iteration is cleverhans' PGD iteration: its `fast_gradient_method` step (sign-gradient for L∞,
normalised gradient for L2, clipped to [0, 1]) followed by its `clip_eta` projection onto the ball
and a clip to [0, 1] — bit for bit what `projected_gradient_descent` computes from the same start.
Only the random start is drawn here, from a stateless generator keyed by ``seed``, so that the
start is a pure function of (seed, restart): a resumed training run repeats the attacks of the
run it continues. The iterations run in a `tf.while_loop`, so a 100-step attack is one small graph.
"""

import dataclasses

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.utils import clip_eta

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


def _seed_key(seed):
    """A stateless-RNG key (2,) int64 from an int, a (2,) tensor, or None (drawn from the global RNG)."""
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(0, tf.int64)])
    if seed.shape != (2,):
        raise ValueError(f"seed must be an int or a (2,) integer tensor, got shape {seed.shape}")
    return seed


def sample_start(x, eps, norm, seed, batch_slice=None):
    """A uniform random point of the ε-ball around ``x`` (N, ...), clipped to [0, 1].

    L∞: independent uniform offsets in [−ε, ε]. L2: uniform in the ball (Gaussian direction,
    radius ε·u^(1/d) for d pixels per example). ``seed``: a (2,) int key for stateless sampling.
    ``batch_slice``: (offset, global size) when ``x`` is rows offset… of a larger batch (one replica's
    shard): the start is those rows of the global batch's start, so a sharded attack starts where
    the unsharded one does.
    """
    seed = tf.cast(seed, tf.int64)
    n = tf.shape(x)[0]
    offset, total = (0, n) if batch_slice is None else batch_slice
    shape = tf.concat([[total], tf.shape(x)[1:]], 0)
    rank = x.shape.rank

    def rows(t):
        return t[offset:offset + n]

    if norm == "linf":
        eta = rows(tf.random.stateless_uniform(shape, seed, -eps, eps, dtype=x.dtype))
    else:
        direction = rows(tf.random.stateless_normal(shape, seed, dtype=x.dtype))
        direction /= tf.reshape(tf.maximum(tf.norm(tf.reshape(direction, [n, -1]), axis=1), 1e-12),
                                [-1] + [1] * (rank - 1))
        d = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), x.dtype)
        u = rows(tf.random.stateless_uniform(shape[:1], tf.random.experimental.stateless_fold_in(seed, 1),
                                             dtype=x.dtype))
        eta = direction * tf.reshape(eps * u ** (1.0 / d), [-1] + [1] * (rank - 1))
    eta.set_shape(x.shape)
    return tf.clip_by_value(x + clip_eta(eta, NORMS[norm], eps), 0.0, 1.0)


def pgd(model_fn, x, y, *, eps, steps, step_size=None, norm="linf", random_start=True, loss="ce",
        restarts=1, seed=None, batch_slice=None):
    """PGD adversarial examples.

    Args:
      model_fn: callable images (N, H, W, C) -> logits (N, O); for a Keras model pass one stable
        callable such as ``lambda x: model(x, training=False)`` (BN in inference mode). A
        linearized or centered model is attacked through its linearization (its input gradient).
      x: clean images (N, H, W, C) float32 in [0, 1].
      y: true int labels (N,).
      eps: radius of the ball, in [0, 1] pixel units (L∞) or L2 units.
      steps: gradient-ascent steps per restart.
      step_size: step length; default 2·eps/steps (the authors' choice).
      norm: ``"linf"`` (sign steps) or ``"l2"`` (normalised gradient steps).
      random_start: uniform start in the ε-ball (Madry); False gives the basic iterative method.
      loss: ``"ce"`` (cross-entropy of the true label) or ``"margin"`` (CW-style logit margin).
      restarts: independent random starts; per example the one with the highest loss is kept.
      seed: None (start drawn from TensorFlow's global generator), an int, or a (2,) int tensor
        such as ``[run_seed, step]``; the same seed gives the same adversarial examples.
      batch_slice: (offset, global size) when ``x`` is one replica's shard of a global batch: the
        random start is that shard's rows of the global batch's start (see `sample_start`).

    Returns:
      Adversarial images (N, H, W, C) float32, inside the ε-ball around ``x`` and [0, 1] (up to
      float32 rounding of x + η: |x_adv − x| ≤ ε + one ulp).
    """
    step_size = check_config(eps=eps, steps=steps, step_size=step_size, norm=norm, loss=loss,
                             restarts=restarts)
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    # No shortcut at eps = 0: the whole loop runs and returns x exactly (x + 0), so the sanity check
    # "robust = benign at eps = 0" exercises the attack (NaN gradients would show up there).
    loss_fn = _LOSS_FNS[loss]
    order = NORMS[norm]
    # cleverhans asserts eps_iter <= eps; a larger step is equivalent to a step of eps after projection.
    eps_iter = min(step_size, eps)
    key = _seed_key(seed) if random_start else None

    def step(i, adv):
        adv = fast_gradient_method(model_fn, adv, eps_iter, order, loss_fn, clip_min=0.0,
                                   clip_max=1.0, y=y)
        return i + 1, tf.clip_by_value(x + clip_eta(adv - x, order, eps), 0.0, 1.0)

    def one_restart(r):
        if not random_start:
            start = x
        else:  # restart 0 is the single-start attack of the same seed
            start = sample_start(x, eps, norm,
                                 key if r == 0 else tf.random.experimental.stateless_fold_in(key, r),
                                 batch_slice)
        return tf.while_loop(lambda i, _: i < int(steps), step, (tf.constant(0), start))[1]

    best = one_restart(0)
    if restarts == 1:
        return best
    best_loss = loss_fn(y, model_fn(best))
    for r in range(1, int(restarts)):
        cand = one_restart(r)
        cand_loss = loss_fn(y, model_fn(cand))
        better = cand_loss > best_loss
        mask = tf.reshape(better, [-1] + [1] * (x.shape.rank - 1))
        best = tf.where(mask, cand, best)
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

    def attack(self, model_fn, x, y, seed=None, batch_slice=None):
        """Adversarial versions of ``x`` against ``model_fn`` (see `pgd` for the arguments)."""
        return pgd(model_fn, x, y, eps=self.eps, steps=self.steps, step_size=self.step_size,
                   norm=self.norm, loss=self.loss, restarts=self.restarts, seed=seed,
                   batch_slice=batch_slice)

    def describe(self):
        """A short label such as ``"linf PGD-100 eps=0.01569 step=0.0003137 ce x1"``."""
        return (f"{self.norm} PGD-{self.steps} eps={self.eps:.4g} step={self.resolved_step_size:.4g} "
                f"{self.loss} x{self.restarts}")

    @property
    def resolved_step_size(self):
        """The step size in use (2·eps/steps when ``step_size`` is None)."""
        return check_config(eps=self.eps, steps=self.steps, step_size=self.step_size,
                            norm=self.norm, loss=self.loss, restarts=self.restarts)

    def to_dict(self):
        return dataclasses.asdict(self)
