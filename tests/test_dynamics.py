"""Linearized and centered models: the first-order Taylor expansion, checked against independent paths
(per-example Jacobians of the spawn, finite differences) and its frozen kernel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
import tf_ntk
from tf_ntk import checkpoints
from tf_ntk import dynamics
from tf_ntk import functional
from tf_ntk import models
from tf_ntk.ntk import jacobian
from tf_ntk.robust import attacks
from tf_ntk.robust import ensembles
from tf_ntk.robust import evaluation


def _spawn():
    keras.utils.set_random_seed(3)
    model = models.get("cnn", 3, (6, 6, 1), width=3, zero_head=False)
    helpers.randomize_bn_statistics(model, seed=1)
    x = np.random.default_rng(2).uniform(size=(4, 6, 6, 1)).astype(np.float32)
    return model, x


def _shift(lin, scale=0.05, seed=0):
    rng = np.random.default_rng(seed)
    deltas = [rng.normal(0, scale, v.shape).astype(np.float32) for v in lin.theta]
    for v, d in zip(lin.theta, deltas):
        v.assign(v.numpy() + d)
    return deltas


def test_at_the_spawn_linearized_equals_the_model_and_centered_is_zero():
    model, x = _spawn()
    lin = tf_ntk.linearize(model)
    cen = tf_ntk.linearize(model, centered=True)
    np.testing.assert_array_equal(lin(x).numpy(), model(x, training=False).numpy())
    np.testing.assert_array_equal(cen(x).numpy(), np.zeros((4, 3), np.float32))
    assert len(lin.trainable_variables) == len(model.trainable_variables)


def test_output_is_spawn_plus_jacobian_times_delta():
    model, x = _spawn()
    before = [v.numpy().copy() for v in model.variables]
    lin = tf_ntk.linearize(model)
    deltas = _shift(lin)
    f = functional.FunctionalModel(model)
    jac = jacobian.per_example_jacobians(f, f.params, tf.constant(x), range(3))
    want = model(x, training=False).numpy() + sum(
        np.einsum("iap,p->ia", j.numpy(), d.ravel()) for j, d in zip(jac, deltas))
    np.testing.assert_allclose(lin(x).numpy(), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lin.kernel_term(x).numpy() + lin.spawn_output(x).numpy(), want,
                               rtol=1e-4, atol=1e-5)
    # The original model is untouched.
    for a, b in zip(before, [v.numpy() for v in model.variables]):
        np.testing.assert_array_equal(a, b)


def test_kernel_term_matches_central_finite_differences():
    model, x = _spawn()
    cen = tf_ntk.linearize(model, centered=True)
    deltas = _shift(cen, scale=1.0, seed=4)
    f64 = functional.FunctionalModel(model, dtype="float64")
    spawn = [tf.cast(p, tf.float64) for p in f64.params]
    h = 1e-4
    plus = f64([s + h * d for s, d in zip(spawn, deltas)], x)
    minus = f64([s - h * d for s, d in zip(spawn, deltas)], x)
    fd = ((plus - minus) / (2 * h)).numpy()
    assert helpers.relative_error(cen(x).numpy(), fd) < 1e-4


def test_gradient_is_jacobian_transpose_times_the_output_gradient():
    model, x = _spawn()
    lin = tf_ntk.linearize(model)
    _shift(lin)
    weights = np.random.default_rng(5).normal(size=(4, 3)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(lin(x, training=True) * weights)
    grads = tape.gradient(loss, lin.trainable_variables)
    f = functional.FunctionalModel(model)
    jac = jacobian.per_example_jacobians(f, f.params, tf.constant(x), range(3))
    for g, j in zip(grads, jac):
        np.testing.assert_allclose(g.numpy().ravel(), np.einsum("iap,ia->p", j.numpy(), weights),
                                   rtol=1e-4, atol=1e-6)


def test_kernel_stays_the_spawn_kernel_after_training():
    model, x = _spawn()
    spawn_kernel = tf_ntk.empirical_ntk(model, x, implementation="jacobian")
    lin = tf_ntk.linearize(model, centered=True)
    lin.compile(optimizer=keras.optimizers.SGD(0.5),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    y = np.array([0, 1, 2, 0])
    history = lin.fit(x, y, epochs=3, batch_size=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    moved = sum(float(np.abs(t.numpy() - s.numpy()).max()) for t, s in zip(lin.theta, lin.spawn_params))
    assert moved > 1e-3
    after = tf_ntk.empirical_ntk(lin, x, implementation="jacobian")
    assert helpers.relative_error(after, spawn_kernel) < 1e-5


def test_train_step_traces_once_under_xla():
    model, x = _spawn()
    lin = tf_ntk.linearize(model)
    opt = keras.optimizers.SGD(0.1)
    y = tf.constant([0, 1, 2, 0])

    @tf.function(jit_compile=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, lin(xb, training=True)))
        opt.apply_gradients(zip(tape.gradient(loss, lin.trainable_variables), lin.trainable_variables))
        return loss

    losses = [float(step(tf.constant(x), y)) for _ in range(4)]
    assert step.experimental_get_tracing_count() == 1
    assert losses[-1] < losses[0]


def test_bad_batchnorm_policy():
    model, _ = _spawn()
    with pytest.raises(ValueError, match="unknown batchnorm policy 'moving'"):
        tf_ntk.linearize(model, batchnorm="moving")


@pytest.mark.parametrize("centered", [False, True])
def test_input_gradient_matches_finite_differences(centered):
    """PGD attacks the model under its own dynamics, so dL/dx must flow through J(x)(θ − θ_s)."""
    model, x = _spawn()
    lin = tf_ntk.linearize(model, centered=centered)
    deltas = _shift(lin, scale=0.5, seed=6)
    weights = tf.constant(np.random.default_rng(7).normal(size=(4, 3)), tf.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(lin(xt) * weights)
    got = tape.gradient(loss, xt).numpy()
    # Oracle: the same function in float64 through the spawn's functional view, central differences in x.
    f64 = functional.FunctionalModel(model, dtype="float64")
    spawn = [tf.cast(p, tf.float64) for p in f64.params]
    w64 = tf.cast(weights, tf.float64)

    def objective(xv):
        h = 1e-5
        plus = f64([s + h * d for s, d in zip(spawn, deltas)], xv)
        minus = f64([s - h * d for s, d in zip(spawn, deltas)], xv)
        out = (plus - minus) / (2 * h) + (0.0 if centered else f64(spawn, xv))
        return float(tf.reduce_sum(out * w64))

    x64 = x.astype(np.float64)
    fd = np.zeros_like(x64)
    eps = 1e-4
    for idx in np.ndindex(x64.shape):
        up, down = x64.copy(), x64.copy()
        up[idx] += eps
        down[idx] -= eps
        fd[idx] = (objective(up) - objective(down)) / (2 * eps)
    assert np.abs(fd).max() > 1e-3  # the oracle is not trivially zero
    assert helpers.relative_error(got, fd) < 1e-3


def _checkpoints(root):
    """Two phase-1 checkpoints of one CNN (different weights, BN statistics) and one centered
    phase-2 checkpoint; {name: path}."""
    spec = models.spec("cnn", 3, (6, 6, 1), width=3, zero_head=False)
    paths = {}
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        model = models.build(spec)
        helpers.randomize_bn_statistics(model, seed=seed)
        paths[f"phase1-{seed}"] = str(root / f"phase1-{seed}")
        checkpoints.write(paths[f"phase1-{seed}"], {"model": spec, "epoch": 1}, model=model)
    centered = tf_ntk.linearize(models.build(spec), centered=True)
    _shift(centered, seed=4)
    paths["centered"] = str(root / "centered")
    checkpoints.write(paths["centered"], {"model": spec, "epoch": 1,
                                          "config": {"dynamics": "centered"}}, model=centered)
    return paths


def test_reused_models_hold_the_new_checkpoint_and_keep_their_traced_attacks(tmp_path):
    paths = _checkpoints(tmp_path)
    x = np.random.default_rng(2).uniform(size=(5, 6, 6, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1], np.int32)

    def fresh(path, kind=None):
        return dynamics.load_model(path, dynamics=kind)[0](x, training=False).numpy()

    attack = attacks.PGDConfig(eps=0.1, steps=3)
    for kind in (None, "linearized"):  # (a linearized output depends on every spawn weight)
        with dynamics.reuse_models():
            first, _ = dynamics.load_model(paths["phase1-0"], dynamics=kind, reuse=True)
            other, _ = dynamics.load_model(paths["phase1-1"], dynamics=kind, reuse=True)
            assert other is not first  # two at once: two models
            fn = evaluation.inference_fn(first)
            ensembles.evaluate(fn, x, y, attack)
            traced = {k: f.experimental_get_tracing_count()
                      for k, f in vars(fn)["_tf_ntk_traces"].items()}
        with dynamics.reuse_models():  # the two kept models, each with the weights asked for
            loaded = {name: dynamics.load_model(paths[name], dynamics=kind, reuse=True)[0]
                      for name in ("phase1-0", "phase1-1")}
            assert loaded["phase1-0"] is other  # (the last one kept goes first: weights swap)
            assert {id(m) for m in loaded.values()} == {id(first), id(other)}
            for name, model in loaded.items():
                np.testing.assert_array_equal(model(x, training=False).numpy(), fresh(paths[name], kind))
            name = next(n for n, m in loaded.items() if m is first)
            got = ensembles.evaluate(evaluation.inference_fn(first), x, y, attack)
            want = ensembles.evaluate(evaluation.inference_fn(
                dynamics.load_model(paths[name], dynamics=kind)[0]), x, y, attack)
            np.testing.assert_array_equal(got.x_adv, want.x_adv)
            assert {k: f.experimental_get_tracing_count()  # nothing traced again
                    for k, f in vars(fn)["_tf_ntk_traces"].items()} == traced
    with dynamics.reuse_models():
        model, _ = dynamics.load_model(paths["centered"], reuse=True)
    with dynamics.reuse_models():
        assert dynamics.load_model(paths["centered"], reuse=True)[0] is model
        assert dynamics.load_model(paths["centered"])[0] is not model  # reuse=False: a new one
    np.testing.assert_array_equal(model(x, training=False).numpy(), fresh(paths["centered"]))
    # Outside a reuse_models block nothing is pooled.
    assert dynamics.load_model(paths["centered"], reuse=True)[0] is not model
