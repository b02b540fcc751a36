"""Shared NTK test cases: small models with non-trivial BN statistics and weights, and their float64
oracle kernels from a loop of per-example, per-logit ``tape.gradient`` calls (NumPy dot products) on
an independently built float64 twin holding the model's own weights (`tf_ntk.ntk.oracle`)."""

import functools

import keras
import numpy as np

from tests import helpers
from tf_ntk import models
from tf_ntk.ntk import oracle

NUM_CLASSES = 3
N1, N2 = 5, 3


def _with_unknown_layer():
    """A model whose LayerNormalization and rank-3 Dense are not in the structured rules."""
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Reshape((4, 4))(inputs)
    x = keras.layers.Dense(6, activation="tanh", name="dense_rank3")(x)  # rank-3 input: fallback
    x = keras.layers.LayerNormalization(name="layer_norm")(x)  # unknown layer: fallback
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x), name="with_unknown_layer")


MODELS = {
    "mlp": lambda: models.get("mlp", NUM_CLASSES, (4, 4, 1), width=8),
    "cnn": lambda: models.get("cnn", NUM_CLASSES, (6, 6, 1), width=3),
    "resnet18": lambda: models.get("resnet18", NUM_CLASSES, (8, 8, 3), width=2, zero_head=False),
    "unknown_layer": _with_unknown_layer,
}


@functools.lru_cache(maxsize=None)
def case(name):
    """(model, x1, x2, oracle full kernels K11 (N1, N1, O, O) and K12 (N1, N2, O, O) in float64)."""
    keras.utils.set_random_seed(7)
    model = MODELS[name]()
    helpers.randomize_bn_statistics(model, seed=3)
    # Perturb the weights so that no layer sits at a special point (zero head, unit BN scale).
    rng = np.random.default_rng(5)
    for v in model.trainable_variables:
        v.assign(v.numpy() + rng.normal(0, 0.1, v.shape).astype(np.float32))
    shape = model.input_shape[1:]
    x1 = rng.uniform(size=(N1, *shape)).astype(np.float32)
    x2 = rng.uniform(size=(N2, *shape)).astype(np.float32)
    jac1, jac2 = oracle_jacobian(model, x1, MODELS[name]), oracle_jacobian(model, x2, MODELS[name])
    return model, x1, x2, oracle.kernel(jac1, jac1), oracle.kernel(jac1, jac2)


def oracle_jacobian(model, x, build):
    """(N, O, P) float64: one tape.gradient per example and logit, through a float64 twin that
    ``build`` makes and that holds the model's own weights cast to float64 (`tf_ntk.ntk.oracle`)."""
    return oracle.jacobian(oracle.float64_twin(model, build), x)
