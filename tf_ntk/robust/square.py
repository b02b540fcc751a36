"""The Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"), L∞, in TensorFlow: one compiled loop over its queries.

A score-based random search that never reads a gradient, so gradient masking does not fool it. From
vertical stripes of ±ε, each query redraws one random square window of the perturbation (every
pixel of the window at +ε or −ε, one sign per channel) and keeps the change when the margin
z_y − max_{j≠y} z_j falls; an example stops changing once misclassified. The window covers a
fraction p of the image that halves on the published schedule (ART's: p_init at first, halved after
0.1%, 0.5%, 2%, 5%, 10%, 20%, 40%, 60% and 80% of the queries).

Unlike ART's implementation (`tf_ntk.robust.autoattack.SquareConfig` with ``implementation="art"``: NumPy,
one TensorFlow call per query, one window for the whole batch), the search is one `tf.while_loop`,
and every example draws its own windows and signs from a key of (seed, example), so its search does
not depend on the other examples in its batch. ε in [0, 1] pixel units; images float32 NHWC in
[0, 1]; labels int (N,).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tf_ntk.robust import attacks

SCHEDULE = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)
"""Fractions of the queries after which the window's share of the image halves."""


def params(*, eps: float, restarts: int, p_init: float = 0.8) -> dict[str, np.generic]:
    """A configuration as `square_by_params` takes it: {name: NumPy scalar}."""
    return {"eps": np.float32(eps), "restarts": np.int32(restarts), "p_init": np.float32(p_init)}


def window_share(i: tf.Tensor, queries: int, p_init: float | tf.Tensor) -> tf.Tensor:
    """The share of the image a window covers at query ``i`` (of ``queries``): ``p_init`` halved
    once per `SCHEDULE` fraction that i / queries has passed."""
    progress = tf.cast(i, tf.float32) / tf.cast(queries, tf.float32)
    halvings = tf.reduce_sum(tf.cast(progress > tf.constant(SCHEDULE, tf.float32), tf.float32))
    return p_init * tf.pow(0.5, halvings)


def square(model_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, y: tf.Tensor, *, eps: float, queries: int = 1000,
           restarts: int = 1, p_init: float = 0.8, seed: int | tf.Tensor | None = None,
           example_rows: tuple[Any, Any] | None = None) -> tf.Tensor:
    """Square-attack adversarial examples (L∞).

    Args:
      model_fn: images (N, H, W, C) -> logits (N, O), BN in inference mode.
      x: clean images (N, H, W, C) float32 in [0, 1]; y: true int labels (N,).
      eps: the L∞ radius in pixel units; queries: forward passes per start; restarts: independent
        starts (the one with the lowest margin wins); p_init: the first window's share of the image.
      seed: an int or a (2,) int key; restart r folds r into it.
      example_rows: (rows (N,), total): ``x`` holds examples ``rows`` of a set of ``total``; each
        example's search then depends on (seed, example) only.

    Returns:
      (N, H, W, C) float32 inside the ε-ball and [0, 1].
    """
    if int(queries) < 1 or int(restarts) < 1:
        raise ValueError(f"Square needs queries and restarts >= 1, got {queries} and {restarts}")
    return square_by_params(model_fn, x, y, params(eps=eps, restarts=restarts, p_init=p_init),
                            queries=int(queries), seed=seed, example_rows=example_rows)


def square_by_params(model_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, y: tf.Tensor, params: Mapping[str, Any],
                     *, queries: int, seed: int | tf.Tensor | None = None,
                     example_rows: tuple[Any, Any] | None = None) -> tf.Tensor:
    """`square` with eps, restarts and p_init as tensors (`params`): one traced function per number
    of queries."""
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    eps = tf.cast(params["eps"], tf.float32)
    p_init = tf.cast(params["p_init"], tf.float32)
    key = attacks._seed_key(seed)  # noqa: SLF001  (the other attacks' keying)
    n = tf.shape(x)[0]
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    if example_rows is None:
        rows, total = tf.range(n), n
    else:
        rows, total = tf.cast(example_rows[0], tf.int32), example_rows[1]

    def draw(k: tf.Tensor, size: int | tf.Tensor) -> tf.Tensor:
        """(N, size) uniform [0, 1) numbers, each example's row of a (total, size) draw."""
        return tf.gather(tf.random.stateless_uniform(tf.stack([total, size]), k), rows)

    def margin(points: tf.Tensor) -> tf.Tensor:
        """(N,) z_y − max_{j≠y} z_j: negative once misclassified."""
        return -attacks.margin_loss(y, model_fn(points))

    def signs(u: tf.Tensor) -> tf.Tensor:
        return tf.where(u < 0.5, -1.0, 1.0)

    ys = tf.reshape(tf.range(height), [1, height, 1, 1])
    xs = tf.reshape(tf.range(width), [1, 1, width, 1])
    side = max(min(height, width) - 1, 1)

    def one_start(k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        stripes = tf.reshape(signs(draw(k, width * channels)), [n, 1, width, channels])
        adv = tf.clip_by_value(x + eps * stripes, 0.0, 1.0)
        state = (tf.constant(1), adv, margin(adv))

        def body(i: tf.Tensor, adv: tf.Tensor, best: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            u = draw(tf.random.experimental.stateless_fold_in(k, tf.cast(i, tf.int64)), 2 + channels)
            share = window_share(i, queries, p_init)
            size = tf.cast(tf.round(tf.sqrt(share * height * width)), tf.int32)
            size = tf.clip_by_value(size, 1, side)
            top = tf.cast(u[:, 0] * tf.cast(tf.maximum(height - size, 1), tf.float32), tf.int32)
            left = tf.cast(u[:, 1] * tf.cast(tf.maximum(width - size, 1), tf.float32), tf.int32)
            top, left = tf.reshape(top, [-1, 1, 1, 1]), tf.reshape(left, [-1, 1, 1, 1])
            window = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
            value = eps * tf.reshape(signs(u[:, 2:]), [n, 1, 1, channels])
            candidate = tf.clip_by_value(x + tf.where(window, value, adv - x), 0.0, 1.0)
            new = margin(candidate)
            accept = (new < best) & (best > 0)
            return (i + 1, tf.where(tf.reshape(accept, [-1, 1, 1, 1]), candidate, adv),
                    tf.where(accept, new, best))

        _, adv, best = tf.while_loop(lambda i, *_: i < queries, body, state)
        return adv, best

    def next_start(r: tf.Tensor, best: tf.Tensor, best_margin: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        k = tf.where(tf.equal(r, 0), key,
                     tf.random.experimental.stateless_fold_in(key, tf.cast(r, tf.int64)))
        candidate, value = one_start(k)
        better = value < best_margin
        return (r + 1, tf.where(tf.reshape(better, [-1, 1, 1, 1]), candidate, best),
                tf.where(better, value, best_margin))

    initial = (tf.constant(0), x, tf.fill(tf.shape(y), tf.constant(np.inf)))
    restarts = tf.cast(params["restarts"], tf.int32)
    return tf.while_loop(lambda r, *_: r < restarts, next_start, initial)[1]
