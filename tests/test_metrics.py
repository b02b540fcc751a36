"""Kernel metrics against closed forms."""

import numpy as np
import pytest

from tf_ntk.ntk import metrics


def _psd(n, rank, seed):
    f = np.random.default_rng(seed).normal(size=(n, rank))
    return f @ f.T


def test_kernel_distance_closed_forms():
    k = _psd(6, 3, 0)
    assert metrics.kernel_distance(k, k) == pytest.approx(0.0, abs=1e-12)
    assert metrics.kernel_distance(k, 2 * k) == pytest.approx(0.0, abs=1e-12)
    a = np.zeros((4, 4))
    a[:2, :2] = 1.0
    b = np.zeros((4, 4))
    b[2:, 2:] = 3.0
    assert metrics.kernel_distance(a, b) == pytest.approx(1.0)
    assert metrics.kernel_distance(a, -a) == pytest.approx(2.0)
    # cos = <I, J>/(|I||J|) = n / (sqrt(n) · n) = 1/sqrt(n)
    assert metrics.kernel_distance(np.eye(4), np.ones((4, 4))) == pytest.approx(1 - 0.5)
    assert metrics.kernel_velocity(np.eye(4), np.ones((4, 4)), 0.25) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="dt must be > 0"):
        metrics.kernel_velocity(a, a, 0)
    with pytest.raises(ValueError, match="identically zero"):
        metrics.kernel_distance(a, np.zeros((4, 4)))


def test_target_alignment_and_cka():
    labels = np.array([0, 0, 1, 2, 2, 2])
    y = metrics.one_hot(labels)
    assert metrics.target_alignment(y @ y.T, labels) == pytest.approx(1.0)
    # I vs YYᵀ: <I, YYᵀ> = n, |I| = sqrt(n), |YYᵀ| = sqrt(Σ n_c²) = sqrt(4 + 1 + 9)
    assert metrics.target_alignment(np.eye(6), labels) == pytest.approx(6 / (np.sqrt(6) * np.sqrt(14)))
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(8, 5))
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    k = feats @ feats.T
    other = _psd(8, 4, 2)
    base = metrics.cka(k, other)
    assert metrics.cka(3.7 * k, other) == pytest.approx(base)            # isotropic scaling
    rotated = (feats @ q) @ (feats @ q).T
    assert metrics.cka(rotated, other) == pytest.approx(base)             # orthogonal transform
    assert metrics.cka(k, k) == pytest.approx(1.0)
    # Centering removes a constant offset of the features' mean.
    shifted = (feats + 2.0) @ (feats + 2.0).T
    assert metrics.cka(shifted, k) == pytest.approx(1.0)


def test_spectrum_effective_rank_trace():
    assert metrics.effective_rank(np.eye(7)) == pytest.approx(7.0)
    assert metrics.effective_rank(5 * np.eye(3)) == pytest.approx(3.0)
    v = np.arange(1.0, 5.0)
    assert metrics.effective_rank(np.outer(v, v)) == pytest.approx(1.0, abs=1e-6)
    # Two equal eigenvalues and zeros: exp(log 2) = 2.
    assert metrics.effective_rank(np.diag([2.0, 2.0, 0.0])) == pytest.approx(2.0)
    np.testing.assert_allclose(metrics.spectrum(np.diag([1.0, 3.0, 2.0])), [3.0, 2.0, 1.0])
    assert metrics.trace(np.diag([1.0, 3.0, 2.0])) == 6.0


def test_kernel_regression_is_exact_on_a_class_separating_kernel():
    train_labels = np.array([0, 1, 2, 0, 1, 2])
    test_labels = np.array([2, 0, 1, 1])
    # k(x, x') = 1 when same class, else 0: regression recovers every label.
    k_train = (train_labels[:, None] == train_labels[None, :]).astype(float)
    k_test = (test_labels[:, None] == train_labels[None, :]).astype(float)
    assert metrics.kernel_regression_accuracy(k_train, k_test, train_labels, test_labels) == 1.0
    assert metrics.kernel_regression_accuracy(k_train, k_test, train_labels, test_labels,
                                              ridge=0.1) == 1.0
    # Closed form with an invertible kernel: predictions K_tr (K + λ I)^-1 Y.
    k = np.eye(6) * 2.0
    pred = metrics.kernel_regression(k, k, train_labels, ridge=1.0)
    np.testing.assert_allclose(pred, 2.0 / (2.0 + 2.0) * metrics.one_hot(train_labels))


def test_parameter_distance():
    theta0 = [np.ones((2, 2)), np.zeros(3)]
    theta = [np.ones((2, 2)) * 2, np.array([0.0, 0.0, 2.0])]
    # ‖θ − θ0‖² = 4·1 + 4 = 8, ‖θ0‖² = 4 → sqrt(2)
    assert metrics.parameter_distance(theta, theta0) == pytest.approx(np.sqrt(2))
    assert metrics.parameter_distance(theta0, theta0) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.parameter_distance([np.ones(2)], [np.ones(3)])
