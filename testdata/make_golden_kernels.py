"""Writes testdata/golden_kernels.npz: float64 NTKs of the bundled models, for a regression test.

    python testdata/make_golden_kernels.py     # from the repository root

For each case: a model built from its spec with fixed float32 weights (seeded; ResNet BN statistics
randomised so inference-mode BN is not an identity), six fixed float32 inputs, and the full kernel
K[i, j, a, b] = ∇θ f_a(x_i) · ∇θ f_b(x_j) (N, N, O, O) computed in float64 by a plain loop of
per-example Jacobians (tf.GradientTape.jacobian on a float64 build of the same weights): independent
of tf_ntk's kernel engine, which tests/test_golden_kernels.py checks against these numbers. A
TensorFlow or Keras upgrade that changes a kernel fails that test.
"""

import os
import sys

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tf_ntk import models

CASES = {
    "mlp": models.spec("mlp", 10, (8, 8, 1), width=8),
    "cnn": models.spec("cnn", 10, (8, 8, 1), width=4, zero_head=False),
    "resnet18": models.spec("resnet18", 10, (8, 8, 3), width=2, zero_head=False),
}
N = 6
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_kernels.npz")


def _weights(spec, seed):
    """float32 trainable and non-trainable weights of a seeded build (BN statistics randomised)."""
    keras.utils.set_random_seed(seed)
    model = models.build(spec)
    rng = np.random.default_rng(seed)
    state = []
    for v in model.non_trainable_variables:
        value = v.numpy()
        if "moving_mean" in v.path:
            value = rng.normal(0.0, 0.1, v.shape)
        elif "moving_variance" in v.path:
            value = rng.uniform(0.5, 1.5, v.shape)
        state.append(np.asarray(value, np.float32))
    return [v.numpy().astype(np.float32) for v in model.trainable_variables], state


def _kernel64(spec, trainable, state, x):
    """The full float64 kernel by per-example Jacobians (float64 floatx must be set)."""
    model = models.build(spec)
    assert model.trainable_variables[0].dtype == "float64"
    for v, w in zip(model.trainable_variables, trainable):
        v.assign(w.astype(np.float64))
    for v, w in zip(model.non_trainable_variables, state):
        v.assign(w.astype(np.float64))
    jacobians = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            out = model(tf.constant(x[i:i + 1], tf.float64), training=False)[0]
        parts = tape.jacobian(out, model.trainable_variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        jacobians.append(np.concatenate([p.numpy().reshape(out.shape[0], -1) for p in parts], axis=1))
    j = np.stack(jacobians)  # (N, O, P)
    return np.einsum("iap,jbp->ijab", j, j)


def main():
    # float64 builds throughout (set_floatx only works before the first layer is built); the weights
    # and inputs are float32 values, so a float32 model holds them exactly.
    keras.config.set_floatx("float64")
    arrays = {}
    weights = {}
    for seed, (name, spec) in enumerate(CASES.items()):
        weights[name] = _weights(spec, seed)
        x = np.random.default_rng(100 + seed).uniform(size=(N, *spec["input_shape"])).astype(np.float32)
        arrays[f"{name}/x"] = x
        for i, w in enumerate(weights[name][0]):
            arrays[f"{name}/trainable_{i}"] = w
        for i, w in enumerate(weights[name][1]):
            arrays[f"{name}/state_{i}"] = w
    for name, spec in CASES.items():
        arrays[f"{name}/kernel"] = _kernel64(spec, *weights[name], arrays[f"{name}/x"])
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT}: " + ", ".join(f"{n} {arrays[n + '/kernel'].shape}" for n in CASES))


if __name__ == "__main__":
    main()
