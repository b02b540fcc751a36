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

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
import dataclasses
import functools
import math
from typing import Any

from cleverhans.tf2.utils import clip_eta
from cleverhans.tf2.utils import optimize_linear
import numpy as np
import tensorflow as tf

NORMS = {"linf": np.inf, "l2": 2}
"""The attack norms: L∞ (eps bounds every pixel) and L2 (eps bounds the whole image), pixels in [0, 1]."""
LOSSES = ("ce", "margin", "dlr")
"""The attack losses: cross-entropy, CW margin, and the difference-of-logits ratio."""
SCHEDULES = ("constant", "cosine")
"""Step-size schedules over the steps of one start."""
KEEP = ("last", "best")
"""Which iterate an attack returns: the last, or the one with the highest loss per example."""


def cross_entropy_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example softmax cross-entropy (N,) of int labels (N,) and logits (N, O)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                          logits=logits)


def _mask_label(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """``logits`` (N, O) with the entry of each row's label set to −∞."""
    labels = tf.cast(labels, tf.int32)
    return tf.where(tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False),
                    tf.cast(-np.inf, logits.dtype), logits)


def margin_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example CW-style margin (N,): max_{j≠y} z_j − z_y (positive when misclassified)."""
    true = tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)
    return tf.reduce_max(_mask_label(labels, logits), axis=-1) - true


def dlr_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example difference-of-logits ratio (N,) of Croce & Hein (2020), untargeted:
    (max_{j≠y} z_j − z_y) / (z_π1 − z_π3 + 1e-12), with z_π the logits sorted in decreasing order.
    Invariant to shifting and scaling the logits, so a model cannot hide behind their scale.
    Needs at least 3 classes."""
    top = tf.math.top_k(logits, k=3).values
    return margin_loss(labels, logits) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_margin_loss(labels: tf.Tensor, targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example targeted CW margin (N,): z_t − z_y for target classes t (N,)."""
    true = tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)
    return tf.gather(logits, tf.cast(targets, tf.int32), batch_dims=1) - true


def ranked_targets(labels: tf.Tensor, logits: tf.Tensor, rank: int) -> tf.Tensor:
    """The ``rank``-th most likely wrong class (N,) int32 of each row of ``logits`` (N, O); rank ≥ 1."""
    return tf.math.top_k(_mask_label(labels, logits), k=rank).indices[:, rank - 1]


_LOSS_FNS = {"ce": cross_entropy_loss, "margin": margin_loss, "dlr": dlr_loss}


def check_config(*, eps: float, steps: int, step_size: float | None = None, norm: str = "linf", loss: str = "ce",
                 restarts: int = 1, schedule: str = "constant", keep: str = "last", target_rank: int = 0) -> float:
    """Validates a PGD configuration (the fields of `PGDConfig`); returns the (initial) step size in
    [0, 1] pixel units (default 2·eps/steps). Raises ValueError on a bad field."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; known norms: {', '.join(NORMS)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r}; known losses: {', '.join(LOSSES)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown step-size schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if keep not in KEEP:
        raise ValueError(f"unknown keep rule {keep!r}; known: {', '.join(KEEP)}")
    if int(target_rank) < 0:
        raise ValueError(f"target_rank must be >= 0, got {target_rank}")
    if int(target_rank) > 0 and loss != "margin":
        raise ValueError(f"targeted attacks (target_rank={target_rank}) use the margin loss, not {loss!r}")
    for name, value in (("eps", eps), ("step_size", step_size)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
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


def _seed_key(seed: Any) -> tf.Tensor:
    """A stateless-RNG key (2,) int64 from an int, a (2,) tensor, or None (drawn from the global RNG)."""
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(0, tf.int64)])
    if seed.shape != (2,):
        raise ValueError(f"seed must be an int or a (2,) integer tensor, got shape {seed.shape}")
    return seed


def sample_start(x: tf.Tensor, eps: float | tf.Tensor, norm: str, seed: tf.Tensor,
                 batch_slice: tuple[Any, Any] | None = None, example_rows: tuple[Any, Any] | None = None) -> tf.Tensor:
    """A uniform random point of the ε-ball around ``x`` (N, ...), clipped to [0, 1].

    L∞: independent uniform offsets in [−ε, ε]. L2: uniform in the ball (Gaussian direction,
    radius ε·u^(1/d) for d pixels per example). ``seed``: a (2,) int key for stateless sampling.
    ``batch_slice``: (offset, global size) when ``x`` is rows offset… of a larger batch (one replica's
    shard): the start is those rows of the global batch's start, so a sharded attack starts where
    the unsharded one does. ``example_rows``: (rows (N,) int, total) when ``x`` holds examples
    ``rows`` of a set of ``total``: each example starts where it would in any subset of that set.
    """
    seed = tf.cast(seed, tf.int64)
    n = tf.shape(x)[0]
    if example_rows is not None:
        index, total = example_rows

        def rows(t: tf.Tensor) -> tf.Tensor:
            return tf.gather(t, tf.cast(index, tf.int32))
    else:
        offset, total = (0, n) if batch_slice is None else batch_slice

        def rows(t: tf.Tensor) -> tf.Tensor:
            return t[offset:offset + n]
    shape = tf.concat([[total], tf.shape(x)[1:]], 0)
    rank = x.shape.rank

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


def pgd(model_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, y: tf.Tensor, *, eps: float, steps: int,
        step_size: float | None = None, norm: str = "linf", random_start: bool = True, loss: str = "ce",
        restarts: int = 1, seed: int | tf.Tensor | None = None, batch_slice: tuple[Any, Any] | None = None,
        schedule: str = "constant", keep: str = "last", target_rank: int = 0,
        example_rows: tuple[Any, Any] | None = None) -> tf.Tensor:
    """PGD adversarial examples.

    Args:
      model_fn: callable images (N, H, W, C) -> logits (N, O); for a Keras model pass one stable
        callable such as ``lambda x: model(x, training=False)`` (BN in inference mode). A
        linearized or centered model is attacked through its linearization (its input gradient).
      x: clean images (N, H, W, C) float32 in [0, 1].
      y: true int labels (N,).
      eps: radius of the ball, in [0, 1] pixel units (L∞) or L2 units.
      steps: gradient-ascent steps per restart.
      step_size: step length (the first step's under a schedule); default 2·eps/steps (the authors').
      norm: ``"linf"`` (sign steps) or ``"l2"`` (normalised gradient steps).
      random_start: uniform start in the ε-ball (Madry); False gives the basic iterative method.
      loss: ``"ce"`` (cross-entropy of the true label), ``"margin"`` (CW-style logit margin) or
        ``"dlr"`` (Croce & Hein's scale-invariant difference-of-logits ratio).
      restarts: independent random starts, merged per example (see ``keep``).
      seed: None (start drawn from TensorFlow's global generator), an int, or a (2,) int tensor
        such as ``[run_seed, step]``; the same seed gives the same adversarial examples.
      batch_slice: (offset, global size) when ``x`` is one replica's shard of a global batch: the
        random start is that shard's rows of the global batch's start (see `sample_start`).
      schedule: ``"constant"`` step size, or ``"cosine"``: step_size·(1 + cos(π·i/steps))/2 at
        step i, large steps to explore, small ones to converge.
      keep: ``"last"`` returns the last iterate (the protocol's PGD; restarts keep the highest
        loss); ``"best"`` returns per example the first iterate found that is misclassified, else
        the iterate of highest loss (every iterate counts, as in AutoAttack's APGD).
      target_rank: 0 for an untargeted attack; k ≥ 1 maximises the targeted margin z_t − z_y
        towards t, the k-th most likely wrong class at the clean input (``loss="margin"``).
      example_rows: (rows (N,) int, total): ``x`` holds examples ``rows`` of a set of ``total``;
        each example's random starts then do not depend on which others share its batch.

    Returns:
      Adversarial images (N, H, W, C) float32, inside the ε-ball around ``x`` and [0, 1] (up to
      float32 rounding of x + η: |x_adv − x| ≤ ε + one ulp).
    """
    step_size = check_config(eps=eps, steps=steps, step_size=step_size, norm=norm, loss=loss,
                             restarts=restarts, schedule=schedule, keep=keep, target_rank=target_rank)
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    # No shortcut at eps = 0: the whole loop runs and returns x exactly (x + 0), so the sanity check
    # "robust = benign at eps = 0" exercises the attack (NaN gradients would show up there).
    if target_rank:
        targets = ranked_targets(y, model_fn(x), int(target_rank))
        loss_fn = lambda labels, logits: targeted_margin_loss(labels, targets, logits)  # noqa: E731
    else:
        loss_fn = _LOSS_FNS[loss]
    # A step longer than eps is a step of eps after projection (cleverhans asserts eps_iter <= eps).
    return _pgd_loop(model_fn, x, y, loss_fn, eps=eps, eps_iter=min(step_size, eps), steps=int(steps),
                     norm=norm, cosine=schedule == "cosine", track=keep == "best",
                     restarts=int(restarts), key=_seed_key(seed) if random_start else None,
                     batch_slice=batch_slice, example_rows=example_rows)


def pgd_by_params(model_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, y: tf.Tensor, params: Mapping[str, Any], *,
                  norm: str, steps: int, seed: int | tf.Tensor | None = None,
                  example_rows: tuple[Any, Any] | None = None) -> tf.Tensor:
    """PGD whose configuration is tensors: one traced (and compiled) function of ``params`` serves
    every `PGDConfig` of one norm and number of steps (the protocol attack and the strong ensemble's
    PGD members), where `pgd` traces one graph per configuration.

    Args:
      params: `PGDConfig.params` as scalar tensors: eps, eps_iter (the first step, ≤ eps), loss
        (index into `LOSSES`), target_rank, cosine, best (keep="best"), restarts.
      norm, steps: the configuration's, fixed per graph.
      seed, example_rows: as in `pgd` (always a random start).

    Returns:
      what `pgd` returns for the same configuration and seed (the same random starts and steps).
    """
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    logits = model_fn(x)
    num_classes = logits.shape[-1]
    rank = tf.cast(params["target_rank"], tf.int32)
    # The k-th most likely wrong class at the clean input (column 0 where the attack is untargeted).
    targets = tf.gather(tf.math.top_k(_mask_label(y, logits), k=max(num_classes - 1, 1)).indices,
                        tf.maximum(rank - 1, 0), axis=1)
    index = tf.where(rank > 0, len(LOSSES), tf.cast(params["loss"], tf.int32))

    def loss_fn(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        values = [cross_entropy_loss(labels, logits), margin_loss(labels, logits),
                  dlr_loss(labels, logits) if num_classes >= 3 else tf.zeros_like(logits[:, 0]),
                  targeted_margin_loss(labels, targets, logits)]
        return tf.gather(tf.stack(values), index)

    return _pgd_loop(model_fn, x, y, loss_fn, eps=tf.cast(params["eps"], tf.float32),
                     eps_iter=tf.cast(params["eps_iter"], tf.float32), steps=int(steps), norm=norm,
                     cosine=tf.cast(params["cosine"], tf.bool), track=tf.cast(params["best"], tf.bool),
                     restarts=tf.cast(params["restarts"], tf.int32), key=_seed_key(seed),
                     example_rows=example_rows)


def _pgd_loop(model_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, y: tf.Tensor,
              loss_fn: Callable[..., tf.Tensor], *, eps: float | tf.Tensor,
              eps_iter: float | tf.Tensor, steps: int, norm: str, cosine: bool | tf.Tensor, track: bool | tf.Tensor,
              restarts: int | tf.Tensor, key: tf.Tensor | None, batch_slice: tuple[Any, Any] | None = None,
              example_rows: tuple[Any, Any] | None = None) -> tf.Tensor:
    """The PGD iterations of `pgd` and `pgd_by_params`. ``cosine``, ``track`` and ``restarts`` are
    Python values (the graph holds only what they select) or scalar tensors (the graph holds every
    branch and picks at run time, with the same arithmetic); ``key`` None means no random start."""
    order = NORMS[norm]
    static = not tf.is_tensor(track)
    inf = tf.constant(np.inf)

    def score(logits: tf.Tensor) -> tf.Tensor:
        """What restarts (and, with keep="best", iterates) are ranked by, per example."""
        value = loss_fn(y, logits)
        if static and not track:
            return value
        wrong = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
        if not static:
            wrong = tf.logical_and(wrong, track)
        return tf.where(wrong, tf.cast(inf, value.dtype), value)

    def pick(better: tf.Tensor, new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
        return tf.where(tf.reshape(better, [-1] + [1] * (x.shape.rank - 1)), new, old)

    def step(i: tf.Tensor, adv: tf.Tensor, best: tf.Tensor,
             best_score: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        # cleverhans' fast-gradient step (gradient of the summed per-example loss, its
        # optimize_linear direction, clip to [0, 1]), then its clip_eta projection onto the ball.
        with tf.GradientTape() as tape:
            tape.watch(adv)
            logits = model_fn(adv)
            value = loss_fn(labels=y, logits=logits)
        grad = tape.gradient(value, adv)
        if not static or track:  # the iterate the gradient was taken at competes for "best"
            current = score(logits)
            better = current > best_score
            best, best_score = pick(better, adv, best), tf.where(better, current, best_score)
        alpha = eps_iter
        if not static or cosine:
            decay = 0.5 * (1.0 + tf.cos(np.pi * tf.cast(i, tf.float32) / steps))
            alpha = eps_iter * (decay if static else tf.where(cosine, decay, 1.0))
        adv = tf.clip_by_value(adv + optimize_linear(grad, alpha, order), 0.0, 1.0)
        adv = tf.clip_by_value(x + clip_eta(adv - x, order, eps), 0.0, 1.0)
        return i + 1, adv, best, best_score

    def one_restart(r: int | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        if key is None:
            start = x
        else:  # restart 0 is the single-start attack of the same seed
            folded = key if isinstance(r, int) and r == 0 else tf.random.experimental.stateless_fold_in(
                key, r)
            start = sample_start(x, eps, norm, folded, batch_slice, example_rows)
        initial = (tf.constant(0), start, start, tf.fill(tf.shape(y), -inf))
        _, adv, best, best_score = tf.while_loop(lambda i, *_: i < steps, step, initial)
        if static and not track:
            return adv, None
        final = score(model_fn(adv))
        better = final > best_score
        tracked = pick(better, adv, best), tf.where(better, final, best_score)
        if static:
            return tracked
        return pick(tf.fill(tf.shape(y), track), tracked[0], adv), tf.where(track, tracked[1], final)

    best, best_score = one_restart(0)
    if static:
        if restarts == 1:
            return best
        if best_score is None:
            best_score = score(model_fn(best))
        for r in range(1, restarts):
            cand, cand_score = one_restart(r)
            if cand_score is None:
                cand_score = score(model_fn(cand))
            better = cand_score > best_score
            best, best_score = pick(better, cand, best), tf.where(better, cand_score, best_score)
        return best

    def next_restart(r: tf.Tensor, best: tf.Tensor, best_score: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        cand, cand_score = one_restart(r)
        better = cand_score > best_score
        return r + 1, pick(better, cand, best), tf.where(better, cand_score, best_score)

    return tf.while_loop(lambda r, *_: r < restarts, next_restart, (tf.constant(1), best, best_score))[1]


@dataclasses.dataclass(frozen=True)
class PGDConfig:
    """A PGD attack. ε and step size in [0, 1] pixel units; step_size None means 2·eps/steps.

    The protocol's evaluation attack is ``PGDConfig(eps=4/255, steps=100)`` (L∞, one random start,
    constant step, last iterate). See `pgd` for the other fields.

    Attributes:
      eps: the radius in [0, 1] pixel units (L∞: per pixel; L2: of the whole image).
      steps: gradient steps per start.
      step_size: step in [0, 1] pixel units (None: 2·eps/steps).
      norm: ``"linf"`` or ``"l2"``.
      loss: ``"ce"`` (cross-entropy), ``"margin"`` (CW margin) or ``"dlr"``.
      restarts: random starts (the highest loss per example wins).
      schedule: ``"constant"`` or ``"cosine"`` step size.
      keep: ``"last"`` or ``"best"`` iterate.
      target_rank: 0 untargeted; k ≥ 1 targets the k-th most likely wrong class (margin loss).
    """

    eps: float = 4 / 255
    steps: int = 100
    step_size: float | None = None
    norm: str = "linf"
    loss: str = "ce"
    restarts: int = 1
    schedule: str = "constant"
    keep: str = "last"
    target_rank: int = 0

    def __post_init__(self) -> None:
        self.resolved_step_size  # noqa: B018  (validates)

    def attack(self, model_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, y: tf.Tensor,
               seed: int | tf.Tensor | None = None, batch_slice: tuple[Any, Any] | None = None,
               example_rows: tuple[Any, Any] | None = None) -> tf.Tensor:
        """Adversarial versions of ``x`` against ``model_fn`` (see `pgd` for the arguments)."""
        return pgd(model_fn, x, y, seed=seed, batch_slice=batch_slice, example_rows=example_rows,
                   **self.to_dict())

    def family(self) -> tuple[tuple[str, str, int], Callable[..., tf.Tensor]]:
        """(key, run): configurations with one key share one traced function ``run(model_fn, x, y,
        params, seed=, example_rows=)`` of their `params` (`pgd_by_params`)."""
        return ("pgd", self.norm, self.steps), functools.partial(pgd_by_params, norm=self.norm,
                                                                 steps=self.steps)

    def params(self) -> dict[str, np.generic]:
        """The configuration as `pgd_by_params` takes it: {name: NumPy scalar} (norm and steps are
        the graph's, not parameters)."""
        step = self.resolved_step_size
        return {"eps": np.float32(self.eps), "eps_iter": np.float32(min(step, self.eps)),
                "loss": np.int32(LOSSES.index(self.loss)), "target_rank": np.int32(self.target_rank),
                "cosine": np.bool_(self.schedule == "cosine"), "best": np.bool_(self.keep == "best"),
                "restarts": np.int32(self.restarts)}

    def describe(self) -> str:
        """A short label such as ``"linf PGD-100 eps=0.01569 step=0.0003137 ce x1"``."""
        text = (f"{self.norm} PGD-{self.steps} eps={self.eps:.4g} step={self.resolved_step_size:.4g} "
                f"{self.loss}{f' target#{self.target_rank}' if self.target_rank else ''} x{self.restarts}")
        extras = [e for e in (self.schedule if self.schedule != "constant" else "",
                              "best-iterate" if self.keep == "best" else "") if e]
        return text + (f" ({', '.join(extras)})" if extras else "")

    def short(self) -> str:
        """A few words, e.g. ``"PGD-100 margin→#2 cosine x1"``."""
        return (f"PGD-{self.steps} {self.loss}{f'→#{self.target_rank}' if self.target_rank else ''}"
                f"{' cosine' if self.schedule == 'cosine' else ''} x{self.restarts}")

    @property
    def resolved_step_size(self) -> float:
        """The step size in use (2·eps/steps when ``step_size`` is None; the first step's under a
        schedule)."""
        return check_config(**self.to_dict())

    def replace(self, **changes: Any) -> PGDConfig:
        """A copy with ``changes``; an explicit step size is rescaled with ε and steps (steps·k →
        step/k, ε·k → step·k) unless ``step_size`` is among the changes."""
        fields = {**self.to_dict(), **changes}
        if self.step_size is not None and "step_size" not in changes:
            scale = 1.0
            if "eps" in changes and self.eps > 0:
                scale *= changes["eps"] / self.eps
            if "steps" in changes:
                scale *= self.steps / changes["steps"]
            fields["step_size"] = self.step_size * scale
        return PGDConfig(**fields)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
