"""The kernel machine against independent truths: the closed form k(x, X)(K + λI)⁻¹Y from float64
per-example oracle Jacobians (both solvers, and under XLA), central finite differences of its input
gradient, a long full-batch gradient descent of the centered model on the squared loss, and the peak
memory of forming Δθ for a 10 M-parameter model in a fresh process."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from bench import measure
from tests import helpers
import tf_ntk
from tf_ntk import models
from tf_ntk.ntk import kernel_regression
from tf_ntk.ntk import oracle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 3
N, M = 6, 4  # training and test examples


def _build():
    return models.get("cnn", NUM_CLASSES, (6, 6, 1), width=3)


def _spawn():
    """A float64 CNN with BN (non-trivial running statistics), training and test inputs, labels."""
    keras.utils.set_random_seed(4)
    model = _build()
    helpers.randomize_bn_statistics(model, seed=1)
    rng = np.random.default_rng(5)
    for v in model.trainable_variables:  # no layer at a special point (unit BN scale, zero bias)
        v.assign(v.numpy() + rng.normal(0, 0.1, v.shape).astype(np.float32))
    twin = oracle.float64_twin(model, _build)
    x = rng.uniform(size=(N, 6, 6, 1))
    x_test = rng.uniform(size=(M, 6, 6, 1))
    y = np.array([0, 1, 2, 2, 1, 0])
    return twin, x, y, x_test


def _oracle(twin, x, x_test):
    """(K (N·O, N·O), K(x_test, X) (M·O, N·O), J (N, O, P)) from one tape.gradient per example and logit."""
    jac, jac_test = oracle.jacobian(twin, x), oracle.jacobian(twin, x_test)
    flat = lambda a, b: np.einsum("iap,jbp->iajb", a, b).reshape(a.shape[0] * a.shape[1], -1)  # noqa: E731
    return flat(jac, jac), flat(jac_test, jac), jac


@pytest.fixture(scope="module")
def case():
    twin, x, y, x_test = _spawn()
    k, k_test, jac = _oracle(twin, x, x_test)
    return twin, x, y, x_test, k, k_test, jac


@pytest.mark.parametrize("solver, jit_compile", [("direct", False), ("cg", False), ("cg", True)])
def test_predictions_equal_the_closed_form_from_the_oracle_kernel(case, solver, jit_compile):
    twin, x, y, x_test, k, k_test, jac = case
    ridge = 0.1
    km = tf_ntk.kernel_machine(twin, x, y, ridge=ridge, solver=solver, tol=1e-14, batch_size=4,
                               jit_compile=jit_compile)
    info = km.kernel_machine_info
    lam = ridge * np.trace(k) / len(k)  # the documented rule: a multiple of the mean eigenvalue
    assert info.solver == solver and info.ridge == pytest.approx(lam, rel=1e-12)
    alpha = np.linalg.solve(k + lam * np.eye(len(k)), np.eye(NUM_CLASSES)[y].ravel())
    want = (k_test @ alpha).reshape(M, NUM_CLASSES)
    assert km(x_test).dtype == tf.float64
    assert helpers.relative_error(km(x_test).numpy(), want) < 1e-10
    # Δθ = J(X)ᵀα: the centered model's weights minus the spawn's.
    delta = np.concatenate([(t.numpy() - s.numpy()).ravel() for t, s in zip(km.theta, km.spawn_params)])
    assert helpers.relative_error(delta, jac.reshape(len(k), -1).T @ alpha) < 1e-10
    assert info.residual < 1e-12 and (info.iterations > 0) == (solver == "cg")
    # The same closed form from the library's full empirical NTK (kind="full", float64).
    full = tf_ntk.empirical_ntk(twin, x, kind="full", dtype="float64").numpy()  # (N, N, O, O)
    cross = tf_ntk.empirical_ntk(twin, x_test, x, kind="full", dtype="float64").numpy()  # (M, N, O, O)
    k_ntk = full.transpose(0, 2, 1, 3).reshape(len(k), len(k))
    k_test_ntk = cross.transpose(0, 2, 1, 3).reshape(M * NUM_CLASSES, len(k))
    alpha_ntk = np.linalg.solve(k_ntk + lam * np.eye(len(k)), np.eye(NUM_CLASSES)[y].ravel())
    assert helpers.relative_error(km(x_test).numpy(), (k_test_ntk @ alpha_ntk).reshape(M, NUM_CLASSES)) < 1e-10


def test_absolute_ridge_and_a_class_balanced_subset(case):
    twin, x, y, x_test, k, k_test, _ = case
    km = tf_ntk.kernel_machine(twin, x, y, absolute_ridge=0.5, per_class=1, seed=3, solver="direct")
    idx = km.kernel_machine_info.train_indices
    np.testing.assert_array_equal(idx, tf_ntk.data.class_balanced_indices(y, 1, seed=3, num_classes=3))
    assert sorted(y[idx]) == [0, 1, 2] and km.kernel_machine_info.ridge == 0.5
    rows = (idx[:, None] * NUM_CLASSES + np.arange(NUM_CLASSES)).ravel()
    alpha = np.linalg.solve(k[np.ix_(rows, rows)] + 0.5 * np.eye(len(rows)), np.eye(3)[y[idx]].ravel())
    want = (k_test[:, rows] @ alpha).reshape(M, NUM_CLASSES)
    assert helpers.relative_error(km(x_test).numpy(), want) < 1e-10


def test_a_kernel_machine_written_into_another_spawn_s_model_equals_a_new_one(case):
    """``model=``: the previous spawn's kernel machine holds the next (spawn weights, BN state and
    θ overwritten), with the same predictions as a new one; a model that is not centered is refused."""
    twin, x, y, x_test, *_ = case
    other = oracle.float64_twin(_build(), _build)  # another spawn: other weights, unit BN state
    holder = tf_ntk.kernel_machine(other, x, y, ridge=0.1, solver="direct")
    km = tf_ntk.kernel_machine(twin, x, y, ridge=0.1, solver="direct", model=holder)
    assert km is holder
    want = tf_ntk.kernel_machine(twin, x, y, ridge=0.1, solver="direct")
    assert helpers.relative_error(km(x_test).numpy(), want(x_test).numpy()) < 1e-12
    for a, b in zip(km.weights, want.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="centered LinearizedModel"):
        tf_ntk.kernel_machine(twin, x, y, ridge=0.1, solver="direct", model=tf_ntk.linearize(twin))


def test_input_gradient_matches_central_finite_differences(case):
    twin, x, y, x_test, *_ = case
    km = tf_ntk.kernel_machine(twin, x, y, solver="direct")
    w = np.random.default_rng(0).normal(size=(M, NUM_CLASSES))

    def score(inputs):
        return tf.reduce_sum(km(inputs) * w)

    xt = tf.constant(x_test)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        s = score(xt)
    grad = tape.gradient(s, xt).numpy()
    h = 1e-6
    coords = [(0, 1, 2, 0), (1, 3, 3, 0), (2, 5, 0, 0), (3, 0, 4, 0)]
    for c in coords:
        e = np.zeros_like(x_test)
        e[c] = h
        fd = (score(tf.constant(x_test + e)).numpy() - score(tf.constant(x_test - e)).numpy()) / (2 * h)
        assert fd == pytest.approx(grad[c], rel=1e-6, abs=1e-9), c
    assert np.abs(grad).max() > 1e-3  # the gradient is not trivially zero


def test_long_centered_gradient_descent_on_the_squared_loss_reaches_the_kernel_machine(case):
    """Full-batch gradient descent on ½‖f(X) − Y‖² + (λ/2)‖θ − θ_s‖² from θ_s, learning rate
    η = 0.5 / (λ_max(K) + λ): the distance to the unique minimiser, J(X)ᵀ(K + λI)⁻¹Y, shrinks by at
    least (1 − η(λ_min(K) + λ)) per step, so after T steps the predictions are within that factor^T
    of the kernel machine's (tolerance: 1e-6 relative, checked to be implied by the bound)."""
    twin, x, y, x_test, k, *_ = case
    ridge = 0.3
    km = tf_ntk.kernel_machine(twin, x, y, ridge=ridge, solver="direct")
    lam = km.kernel_machine_info.ridge
    eig = np.linalg.eigvalsh(k)
    lr = 0.5 / (eig[-1] + lam)
    rate = 1 - lr * (eig[0] + lam)
    steps = int(np.ceil(np.log(1e-8) / np.log(rate)))
    assert steps <= 3000, steps  # keeps the test short
    model = tf_ntk.linearize(twin, centered=True)
    targets = tf.constant(np.eye(NUM_CLASSES)[y])
    xs = tf.constant(x)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            fit = 0.5 * tf.reduce_sum(tf.square(model(xs) - targets))
            penalty = 0.5 * lam * tf.add_n([tf.reduce_sum(tf.square(t - s))
                                            for t, s in zip(model.theta, model.spawn_params)])
            loss = fit + penalty
        grads = tape.gradient(loss, [v.value for v in model.theta])
        for v, g in zip(model.theta, grads):
            v.assign_sub(lr * g)

    want = km(x_test).numpy()
    assert helpers.relative_error(model(x_test).numpy(), want) == pytest.approx(1.0)  # f = 0 at start
    for _ in range(steps):
        step()
    assert helpers.relative_error(model(x_test).numpy(), want) < 1e-6


def test_bad_arguments_are_refused(case):
    twin, x, y, *_ = case
    with pytest.raises(ValueError, match="unknown solver"):
        tf_ntk.kernel_machine(twin, x, y, solver="lsqr")
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        tf_ntk.kernel_machine(twin, x, y, ridge=-1.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        tf_ntk.kernel_machine(twin, x, y + 1)
    with pytest.raises(ValueError, match="do not fit"):
        tf_ntk.kernel_machine(twin, x[:, :5], y)


# -- memory of forming Δθ -------------------------------------------------------------------------

MIB = 2**20
MEMORY_N, MEMORY_BATCH = 64, 8
# Allowed growth of the peak resident set while forming Δθ: the result and one batch's gradient (2
# copies of θ; the sum is updated in place of the last), one batch's activations (small here), and
# tracing and allocator slack. Measured: 1.05 copies of θ usually, once 3.4 (134 MiB: allocator
# slack on a loaded machine). Allowed: 4 copies + 64 MiB (220 MiB), still below the Jacobian of a
# single example (10 outputs x |θ|, 390 MiB), let alone a batch's or all N examples'.
THETA_COPIES = 4
TF_BASELINE_BYTES = 64 * MIB


def _memory_model():
    """An MLP 64-3150-3150-10: 10.2 M parameters."""
    return models.get("mlp", 10, (8, 8, 1), width=3150)


def _memory_child():
    """Forms Δθ = J(X)ᵀα for N = 64 examples and prints the peak growth as JSON (subprocess side)."""
    keras.utils.set_random_seed(0)
    model = _memory_model()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(MEMORY_N, 8, 8, 1)).astype(np.float32)
    alpha = rng.normal(size=(MEMORY_N, 10))
    passes = kernel_regression.Passes(model, batch_size=MEMORY_BATCH)
    kernel_regression.delta_theta(passes, x[:MEMORY_BATCH + 1], alpha[:MEMORY_BATCH + 1])  # traces once
    measure.reset_peak()
    base = measure.vm_kib("VmRSS") * 1024
    delta = kernel_regression.delta_theta(passes, x, alpha)
    growth = measure.vm_kib("VmHWM") * 1024 - base
    print(json.dumps({"growth": growth, "theta_bytes": sum(int(d.numpy().nbytes) for d in delta),
                      "params": models.num_params(model)}))


@pytest.mark.skipif(not os.path.exists("/proc/self/status") or not measure.reset_peak(),
                    reason="needs Linux /proc peak-RSS accounting")
def test_forming_delta_theta_for_a_10m_parameter_model_holds_no_per_example_jacobians():
    proc = subprocess.run([sys.executable, "-m", "tests.test_kernel_machine"], cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["params"] >= 10_000_000
    allowed = THETA_COPIES * result["theta_bytes"] + TF_BASELINE_BYTES
    # Per-example Jacobians of the N examples would need N·O·|θ| floats, 100x more than allowed;
    # even one example's Jacobian (O·|θ|) does not fit.
    assert MEMORY_N * 10 * result["theta_bytes"] > 100 * allowed
    assert 10 * result["theta_bytes"] > allowed
    assert result["growth"] <= allowed, (
        f"forming Δθ raised the peak by {result['growth'] / MIB:.0f} MiB, more than "
        f"{allowed / MIB:.0f} MiB ({THETA_COPIES} copies of θ + {TF_BASELINE_BYTES / MIB:.0f} MiB)")


if __name__ == "__main__":
    _memory_child()
