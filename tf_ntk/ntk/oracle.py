"""The reference NTK: one ``tape.gradient`` per example and logit, dot products in NumPy.

Slow and independent of the kernel implementations: it differentiates a Keras model directly (no
`tf_ntk.functional` view, no graph walk, no vectorization). The tests check every implementation
against it in float64, and ``bench/ntk.py`` times it as the naive baseline.

    grads = oracle.per_example_gradients(model, x)                       # in the model's dtype
    twin = oracle.float64_twin(model, build)                             # float64, same weights
    k = oracle.kernel(oracle.jacobian(twin, x1), oracle.jacobian(twin, x2))  # (N1, N2, O, O)

A float64 kernel needs a float64 model. `float64_twin` builds one with the function that built the
model (under a float64 dtype policy, so independently of the float64 copy the implementations
compute with) and loads it with copies of the model's own weights (trainable ones and BN
statistics) cast to float64.
"""

import keras
import numpy as np
import tensorflow as tf


def float64_twin(model, build):
    """A float64 copy of ``model``: ``build()`` under a float64 dtype policy, holding ``model``'s
    own weights cast to float64.

    Args:
      model: a built Keras model.
      build: a function that returns a new model of the same architecture (e.g. the one that built
        ``model``); it must not set layer dtypes itself.

    Raises:
      ValueError: the copy does not compute in float64 or its weights do not match ``model``'s.
    """
    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        twin = build()
    finally:
        keras.config.set_dtype_policy(policy)
        keras.config.set_floatx(floatx)
    if twin.compute_dtype != "float64" or any(v.dtype != "float64" for v in twin.weights):
        raise ValueError(f"{build!r} does not build a float64 model under a float64 dtype policy")
    weights = model.get_weights()
    if [w.shape for w in weights] != [tuple(v.shape) for v in twin.weights]:
        raise ValueError(f"{build!r} builds a model whose weights do not match {model.name!r}'s")
    twin.set_weights([np.asarray(w, np.float64) for w in weights])
    return twin


def per_example_gradients(model, x, logits=None):
    """∇θ f_c(x_i) of ``model``'s own trainable variables θ, one tape.gradient per example and logit.

    Args:
      model: a built Keras model (logits (N, O)); BatchNormalization in inference mode.
      x: inputs (N, *input_shape), cast to the dtype of the model's input.
      logits: the L logit indices (default: all O).

    Returns:
      A list, one per ``model.trainable_variables`` entry, of NumPy arrays (N, L, *weight shape).
    """
    logits = range(model.output_shape[-1]) if logits is None else logits
    x = np.asarray(x, model.inputs[0].dtype)
    out = [[] for _ in model.trainable_variables]
    for xi in x:
        per_logit = [[] for _ in model.trainable_variables]
        for c in logits:
            with tf.GradientTape() as tape:
                y = model(xi[None], training=False)[0, c]
            grads = tape.gradient(y, model.trainable_variables,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            for k, g in enumerate(grads):
                per_logit[k].append(g.numpy())
        for k, g in enumerate(per_logit):
            out[k].append(np.stack(g))
    return [np.stack(g) for g in out]


def jacobian(model, x, logits=None):
    """(N, L, P): `per_example_gradients` flattened and concatenated over the weights."""
    grads = per_example_gradients(model, x, logits)
    return np.concatenate([g.reshape(g.shape[0], g.shape[1], -1) for g in grads], axis=-1)


def kernel(jac1, jac2):
    """The full kernel (N1, N2, L, L) of two `jacobian` arrays: entry [i, j, a, b] is
    ∇θ f_a(x1_i) · ∇θ f_b(x2_j)."""
    return np.einsum("iap,jbp->ijab", jac1, jac2)
