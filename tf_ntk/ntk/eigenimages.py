"""NTK eigen-images: the inputs whose tangent features point along a kernel eigenvector.

For a per-logit kernel K_c on probe images x_1…x_N (`tf_ntk.empirical_ntk(model, x, logit=c)`) and
a weight vector u (an eigenvector u_i of K_c, or the kernel-regression weights K_c⁻¹ y_c for the
"w" image), the tangent direction in weight space is

    v = Σ_j u[j] ∇θ f_c(x_j)                      (one backward pass)

The eigen-image starts from a grey image (0.5) and takes ``steps`` signed-gradient steps of
``step_size`` (protocol: 600 steps of 0.001), clipped to [0, 1], that maximise (positive image) or
minimise (negative image) the cosine between ∇θ f_c(x) and v:

    cos(x) = ⟨∇θ f_c(x), v⟩ / (‖∇θ f_c(x)‖ ‖v‖).

The grey start can fail: for the top eigenvector of a kernel with positive entries (its Perron
vector, all of one sign) every image near grey may have a positive cosine, and 600 steps of 0.001
cannot leave that region. So the search also starts from the probe image whose cosine is already
best for the sign sought, keeps the better end point, and reports whether the cosine has the sign
sought (``reached``); a search that does not is reported, never passed off as an eigen-image.

Why it can fail: split the cosine by layer, cos = readout + other, where readout is the output
layer's share, ⟨∇_W f_c(x), v_W⟩ + ⟨∇_b f_c(x), v_b⟩ = ⟨h(x), Σ_j u_j h(x_j)⟩ + Σ_j u_j over the norms,
with h(x) the features the output layer reads. For a ReLU network h ≥ 0, so with a one-signed u
the readout share has u's sign for *every* input: no image can flip it, and only the other layers'
share can. Each search reports both shares at its end point (``readout``, ``other``), and a failed
one says which held it (`diagnosis`).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf


def tangent_direction(model: keras.Model, x: tf.Tensor | np.ndarray, weights: npt.ArrayLike,
                      logit: int) -> list[tf.Tensor]:
    """v = Σ_j weights[j] ∇θ f_c(x_j): a list of tensors shaped like ``model.trainable_variables``.

    Args:
      model: Keras classifier (logits), BN in inference mode.
      x: probe images (N, H, W, C).
      weights: (N,) coefficients (an eigenvector, or K⁻¹ y_c).
      logit: the class index c.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    weights = tf.convert_to_tensor(weights, tf.float32)
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(model(x, training=False)[:, logit] * weights)
    return tape.gradient(out, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def cosine_fn(model: keras.Model, direction: Sequence[tf.Tensor],
              logit: int) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """A compiled ``x (1, H, W, C) -> (cos, d cos / dx)`` for the tangent direction ``direction``."""
    variables = model.trainable_variables
    v_norm = tf.sqrt(tf.add_n([tf.reduce_sum(d * d) for d in direction]))

    @tf.function
    def fn(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                out = model(x, training=False)[0, logit]
            grads = inner.gradient(out, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            dot = tf.add_n([tf.reduce_sum(g * d) for g, d in zip(grads, direction)])
            g_norm = tf.sqrt(tf.add_n([tf.reduce_sum(g * g) for g in grads]) + 1e-30)
            cos = dot / (g_norm * v_norm)
        return cos, outer.gradient(cos, x)

    return fn


def _readout_count(model: keras.Model) -> int:
    """How many of ``model.trainable_variables`` (the last ones) belong to its output layer."""
    for layer in reversed(model.layers):
        if layer.trainable_variables:
            return len(layer.trainable_variables)
    return 0


def cosine_parts(model: keras.Model, direction: Sequence[tf.Tensor], logit: int,
                 x: tf.Tensor | np.ndarray) -> tuple[float, float]:
    """(readout, other): the output layer's and the other layers' shares of the cosine between
    ∇θ f_c(x) and the tangent direction, at one image ``x`` (H, W, C); they sum to the cosine."""
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        out = model(tf.convert_to_tensor(np.asarray(x, np.float32)[None]), training=False)[0, logit]
    grads = tape.gradient(out, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    dots = [float(tf.reduce_sum(g * d)) for g, d in zip(grads, direction)]
    g_norm = float(tf.sqrt(tf.add_n([tf.reduce_sum(g * g) for g in grads]) + 1e-30))
    v_norm = float(tf.sqrt(tf.add_n([tf.reduce_sum(d * d) for d in direction])))
    k = _readout_count(model)
    scale = g_norm * v_norm
    return sum(dots[len(dots) - k:]) / scale, sum(dots[:len(dots) - k]) / scale


def diagnosis(found: Mapping[str, Any], one_signed: bool) -> str:
    """Why a search did not reach the sign sought, from its end point's shares ("" when it did)."""
    if found["reached"]:
        return ""
    text = (f"the output layer's share of the cosine is {found['readout']:+.3f}, the other layers' "
            f"{found['other']:+.3f}")
    if one_signed:
        text += ("; the eigenvector is one-signed (the Perron vector of a kernel with positive "
                 "entries), so for a network whose output layer reads non-negative (ReLU) features "
                 "the output layer's share has one sign for every input and only the other layers "
                 "can oppose it")
    return text


def optimise_image(model: keras.Model, direction: Sequence[tf.Tensor], logit: int, *, input_shape: Sequence[int],
                   sign: float = 1.0, steps: int = 600, step_size: float = 0.001, start: float | np.ndarray = 0.5,
                   fn: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]] | None = None) -> tuple[np.ndarray, float]:
    """The image (H, W, C) in [0, 1] that maximises (sign=+1) or minimises (sign=−1) the cosine,
    by signed-gradient steps from ``start`` (a grey level, or an image (H, W, C)).

    Returns:
      (image (H, W, C) float32 NumPy, final cosine).
    """
    fn = fn or cosine_fn(model, direction, logit)
    if np.ndim(start) == 0:
        x = tf.fill((1,) + tuple(input_shape), tf.constant(float(start), tf.float32))
    else:
        x = tf.convert_to_tensor(np.asarray(start, np.float32)[None])
    for _ in range(int(steps)):
        _, g = fn(x)
        x = tf.clip_by_value(x + sign * step_size * tf.sign(g), 0.0, 1.0)
    cos, _ = fn(x)
    return x[0].numpy(), float(cos)


def search(model: keras.Model, direction: Sequence[tf.Tensor], logit: int, probe: np.ndarray, *, sign: float = 1.0,
           steps: int = 600, step_size: float = 0.001) -> dict[str, Any]:
    """`optimise_image` from grey and from the probe image whose cosine is best for ``sign``; the
    better end point wins.

    Returns:
      {"image" (H, W, C), "cosine", "start" ("grey" or "probe <j>"), "reached" (the cosine has the
      sign sought), "readout", "other" (`cosine_parts` at the image)}.
    """
    fn = cosine_fn(model, direction, logit)
    probe = np.asarray(probe, np.float32)
    start_cos = [float(fn(tf.constant(p[None]))[0]) for p in probe]
    j = int(np.argmax(sign * np.asarray(start_cos)))
    best: Any = None  # the better end point's dict, once the loop has run
    for name, start in (("grey", 0.5), (f"probe {j}", probe[j])):
        image, cos = optimise_image(model, direction, logit, input_shape=probe.shape[1:], sign=sign,
                                    steps=steps, step_size=step_size, start=start, fn=fn)
        if best is None or sign * cos > sign * best["cosine"]:
            best = {"image": image, "cosine": cos, "start": name}
    best["reached"] = bool(sign * best["cosine"] > 0)
    best["readout"], best["other"] = cosine_parts(model, direction, logit, best["image"])
    return best


def eigen_images(model: keras.Model, probe: np.ndarray, kernel: npt.ArrayLike, logit: int, *,
                 labels: npt.ArrayLike | None = None, num_eigen: int = 3, steps: int = 600, step_size: float = 0.001,
                 ridge: float = 1e-6) -> list[dict[str, Any]]:
    """Positive and negative eigen-images of the top ``num_eigen`` eigenvectors, and the "w" image.

    Args:
      model: Keras classifier.
      probe: the kernel's probe images (N, H, W, C).
      kernel: the per-logit kernel K_c (N, N) of ``logit`` on ``probe``.
      logit: class index c.
      labels: probe labels (N,); when given, also the "w" image from K_c⁻¹ y_c (y_c = 1[label = c]),
        solved with a relative ridge ``ridge``·tr(K)/N for stability.
      num_eigen, steps, step_size: see the module docstring.

    Returns:
      A list of dicts {"name" ("eig0+", "eig0-", …, "w"), "eigenvalue" (or None), "image" (H, W, C),
      "cosine", "start", "reached", "readout", "other"} (see `search`) and "diagnosis" (why the
      sign was not reached; "" when it was).
    """
    k = np.asarray(kernel, np.float64)
    n = k.shape[0]
    lam, vecs = np.linalg.eigh(0.5 * (k + k.T))
    order = np.argsort(lam)[::-1][:num_eigen]
    out = []
    for rank, i in enumerate(order):
        direction = tangent_direction(model, probe, vecs[:, i], logit)
        one_signed = bool(np.all(vecs[:, i] >= 0) or np.all(vecs[:, i] <= 0))
        for sign, tag in ((1.0, "+"), (-1.0, "-")):
            found = search(model, direction, logit, probe, sign=sign, steps=steps, step_size=step_size)
            out.append({"name": f"eig{rank}{tag}", "eigenvalue": float(lam[i]), **found,
                        "diagnosis": diagnosis(found, one_signed)})
    if labels is not None:
        y = (np.asarray(labels) == logit).astype(np.float64)
        alpha = np.linalg.solve(k + ridge * np.trace(k) / n * np.eye(n), y)
        direction = tangent_direction(model, probe, alpha, logit)
        found = search(model, direction, logit, probe, steps=steps, step_size=step_size)
        out.append({"name": "w", "eigenvalue": None, **found, "diagnosis": diagnosis(found, False)})
    return out
