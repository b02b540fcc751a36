"""The functional view equals model(x, training=False), never mutates the model, and differentiates."""

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tf_ntk import functional
from tf_ntk import models

CASES = [
    ("mlp", (8, 8, 1), {"width": 32}),
    ("cnn", (8, 8, 1), {"width": 4}),
    ("resnet18", (16, 16, 3), {"width": 4, "zero_head": False}),
]


def _model(name, shape, opts):
    model = models.get(name, 10, shape, **opts)
    helpers.randomize_bn_statistics(model)
    return model


def _snapshot(model):
    return [v.numpy().copy() for v in model.variables]


@pytest.mark.parametrize("name,shape,opts", CASES)
def test_matches_inference_call_and_leaves_model_unchanged(name, shape, opts):
    model = _model(name, shape, opts)
    x = np.random.default_rng(1).uniform(size=(5, *shape)).astype(np.float32)
    before = _snapshot(model)
    f = functional.FunctionalModel(model)
    want = model(x, training=False).numpy()
    assert np.abs(want).max() > 0  # a non-trivial output
    np.testing.assert_allclose(f(f.params, x).numpy(), want, rtol=1e-6, atol=1e-6)
    # Other weights give the other network's output, and the model keeps its own.
    other = [p * 0.5 for p in f.params]
    twin = _model(name, shape, opts)
    twin.set_weights(model.get_weights())
    functional.assign(twin, other)
    np.testing.assert_allclose(f(other, x).numpy(), twin(x, training=False).numpy(),
                               rtol=1e-5, atol=1e-6)
    for a, b in zip(before, _snapshot(model)):
        np.testing.assert_array_equal(a, b)


def test_float64_view_computes_in_float64():
    model = _model("cnn", (8, 8, 1), {"width": 4})
    x = np.random.default_rng(2).uniform(size=(3, 8, 8, 1))
    f64 = functional.FunctionalModel(model, dtype="float64")
    out = f64(f64.params, x)
    assert out.dtype == tf.float64
    np.testing.assert_allclose(out.numpy(), model(x.astype(np.float32), training=False).numpy(),
                               rtol=1e-4, atol=1e-5)
    # A 1e-12 change of one weight shows up in float64 (it would vanish in float32).
    params = [tf.cast(p, tf.float64) for p in f64.params]
    bumped = [params[0] + 1e-12] + params[1:]
    assert np.abs(f64(bumped, x).numpy() - out.numpy()).max() > 0


def test_gradients_flow_to_params_and_jit_compiles():
    model = _model("cnn", (8, 8, 1), {"width": 4})
    f = functional.FunctionalModel(model)
    x = tf.random.uniform((4, 8, 8, 1))
    params = [tf.identity(p) for p in f.params]
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = tf.reduce_sum(f(params, x) ** 2)
    grads = tape.gradient(loss, params)
    assert all(g is not None for g in grads)
    # Finite-difference check along a random direction.
    rng = np.random.default_rng(0)
    direction = [tf.constant(rng.normal(size=p.shape), tf.float32) for p in params]
    f64 = functional.FunctionalModel(model, dtype="float64")
    p64 = [tf.cast(p, tf.float64) for p in params]
    d64 = [tf.cast(d, tf.float64) for d in direction]
    h = 1e-6
    loss64 = lambda ps: tf.reduce_sum(f64(ps, x) ** 2)  # noqa: E731
    fd = (loss64([p + h * d for p, d in zip(p64, d64)]) - loss64([p - h * d for p, d in zip(p64, d64)])) / (2 * h)
    analytic = sum(tf.reduce_sum(g * d) for g, d in zip(grads, direction))
    np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-3)

    jitted = tf.function(lambda ps, xs: f(ps, xs), jit_compile=True)
    np.testing.assert_allclose(jitted(params, x).numpy(), f(params, x).numpy(), rtol=1e-5, atol=1e-6)


def test_bad_params_and_inputs_are_clear_errors():
    model = _model("mlp", (8, 8, 1), {"width": 8})
    f = functional.FunctionalModel(model)
    with pytest.raises(functional.ParamsMismatchError, match="has 7 tensors but model .* has 6 trainable weights"):
        functional.check_params(model, f.params[:-1] + [f.params[-1], f.params[-1]])
    with pytest.raises(functional.ParamsMismatchError, match=r"params\[0\] has shape \(3,\)"):
        functional.check_params(model, [np.zeros(3)] + f.params[1:])
    with pytest.raises(ValueError, match="do not fit model"):
        f.check_inputs(np.zeros((2, 9, 8, 1)))
    f.check_inputs(np.zeros((2, 8, 8, 1)))
