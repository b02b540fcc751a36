"""How a kernel moves: distances, alignments, spectra, kernel regression, parameter distance.

Kernels are (N, N) arrays (a per-logit or trace kernel; any array is flattened for the Frobenius
products). Everything is computed in float64 NumPy and returns Python floats or NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import numpy.typing as npt


def _as64(k: npt.ArrayLike) -> np.ndarray:
    return np.asarray(k, dtype=np.float64)


def _frobenius_cosine(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    a, b = _as64(a).ravel(), _as64(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"kernels differ in size: {a.size} vs {b.size}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise ValueError("a kernel is identically zero; its direction is undefined")
    return float(np.dot(a, b) / (na * nb))


def kernel_distance(k1: npt.ArrayLike, k2: npt.ArrayLike) -> float:
    """Kernel distance (Fort et al. 2020): S(K, K') = 1 − ⟨K, K'⟩_F / (‖K‖_F ‖K'‖_F), in [0, 2].

    0 for kernels that differ by a positive scale; 1 for kernels with orthogonal supports.
    """
    return 1.0 - _frobenius_cosine(k1, k2)


def kernel_velocity(k_t: npt.ArrayLike, k_next: npt.ArrayLike, dt: float) -> float:
    """Kernel velocity S(k_t, k_{t+dt}) / dt, with dt in epochs (> 0)."""
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    return kernel_distance(k_t, k_next) / float(dt)


def one_hot(labels: npt.ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """(N, C) float64 one-hot matrix of int labels (N,): 1 at the label, 0 elsewhere; C is
    ``num_classes`` or, when None, the largest label + 1. ValueError for labels that are not (N,)
    integers or lie outside [0, C)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise ValueError(f"labels must be integers of shape (N,), got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return np.eye(num_classes, dtype=np.float64)[labels]


def target_alignment(k: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int | None = None) -> float:
    """Kernel-target alignment (Cristianini et al.): ⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F), Y one-hot (N, C)."""
    y = one_hot(labels, num_classes)
    return _frobenius_cosine(k, y @ y.T)


def _center(k: npt.ArrayLike) -> np.ndarray:
    k = _as64(k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"expected a square (N, N) kernel, got shape {k.shape}")
    return k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()


def cka(k1: npt.ArrayLike, k2: npt.ArrayLike) -> float:
    """Centered kernel alignment (Cortes et al. 2012): the alignment of HK₁H and HK₂H, H = I − 11ᵀ/n."""
    return _frobenius_cosine(_center(k1), _center(k2))


def spectrum(k: npt.ArrayLike) -> np.ndarray:
    """Eigenvalues of the symmetric kernel (N, N), descending (float64, symmetrised first)."""
    k = _as64(k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"expected a square (N, N) kernel, got shape {k.shape}")
    return np.linalg.eigvalsh(0.5 * (k + k.T))[::-1]


def effective_rank(k: npt.ArrayLike | None = None, *, eigenvalues: npt.ArrayLike | None = None) -> float:
    """exp of the entropy of the normalised spectrum p_i = λ_i / Σλ (Roy & Vetterli 2007).

    n for the identity (or any multiple); 1 for a rank-one kernel. Negative round-off eigenvalues
    are dropped.
    """
    # k is the kernel whenever eigenvalues is None (one of the two is given).
    lam = spectrum(cast("npt.ArrayLike", k)) if eigenvalues is None else np.asarray(eigenvalues, np.float64)
    lam = lam[lam > 0]
    if lam.size == 0:
        raise ValueError("the kernel has no positive eigenvalue")
    p = lam / lam.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def trace(k: npt.ArrayLike) -> float:
    """Σ_i K_ii."""
    return float(np.trace(_as64(k)))


def kernel_regression(k_train: npt.ArrayLike, k_test_train: npt.ArrayLike, train_labels: npt.ArrayLike, *,
                      ridge: float = 0.0, num_classes: int | None = None) -> np.ndarray:
    """Kernel (ridge) regression on one-hot targets.

    Args:
      k_train: (N, N) train-train kernel.
      k_test_train: (M, N) test-train kernel.
      train_labels: (N,) int labels.
      ridge: λ ≥ 0, added as λ·(tr K / N)·I so it is scale free; 0 uses a least-squares solve.

    Returns:
      (M, C) predictions K_test,train (K_train + λ' I)⁻¹ Y.
    """
    k_train, k_test_train = _as64(k_train), _as64(k_test_train)
    n = k_train.shape[0]
    if k_train.shape != (n, n) or k_test_train.ndim != 2 or k_test_train.shape[1] != n:
        raise ValueError(f"kernel shapes do not fit: train {k_train.shape}, test-train {k_test_train.shape}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    y = one_hot(train_labels, num_classes)
    if ridge > 0:
        alpha = np.linalg.solve(k_train + ridge * np.trace(k_train) / n * np.eye(n), y)
    else:
        alpha = np.linalg.lstsq(k_train, y, rcond=None)[0]
    return k_test_train @ alpha


def kernel_regression_accuracy(k_train: npt.ArrayLike, k_test_train: npt.ArrayLike, train_labels: npt.ArrayLike,
                               test_labels: npt.ArrayLike, *, ridge: float = 0.0,
                               num_classes: int | None = None) -> float:
    """Test accuracy of `kernel_regression`'s argmax predictions."""
    pred = kernel_regression(k_train, k_test_train, train_labels, ridge=ridge, num_classes=num_classes)
    return float(np.mean(np.argmax(pred, axis=1) == np.asarray(test_labels)))


def parameter_distance(params: Sequence[npt.ArrayLike], reference: Sequence[npt.ArrayLike]) -> float:
    """‖θ − θ₀‖ / ‖θ₀‖ over all tensors of two equally shaped weight lists."""
    params, reference = list(params), list(reference)
    if len(params) != len(reference):
        raise ValueError(f"weight lists differ in length: {len(params)} vs {len(reference)}")
    diff = ref = 0.0
    for p, r in zip(params, reference):
        p, r = _as64(p), _as64(r)
        if p.shape != r.shape:
            raise ValueError(f"weight shapes differ: {p.shape} vs {r.shape}")
        diff += float(np.sum((p - r) ** 2))
        ref += float(np.sum(r**2))
    if ref == 0:
        raise ValueError("reference weights are all zero")
    return float(np.sqrt(diff / ref))


def kernel_summary(kernel: npt.ArrayLike, *, labels: npt.ArrayLike | None = None, init: npt.ArrayLike | None = None,
                   previous: npt.ArrayLike | None = None, dt: float | None = None, top: int = 5) -> dict[str, float]:
    """The scalar metrics of one kernel (N, N) as a dict, for logging.

    Keys: ``trace``, ``effective_rank``, ``eigenvalue_0…top-1``; with ``labels``: ``target_alignment``;
    with ``init`` (the kernel at epoch 0): ``distance_to_init``, ``cka_to_init``; with ``previous``
    and ``dt`` (epochs since it): ``velocity``.
    """
    lam = spectrum(kernel)
    out = {"trace": trace(kernel), "effective_rank": effective_rank(eigenvalues=lam)}
    out.update({f"eigenvalue_{i}": float(v) for i, v in enumerate(lam[:top])})
    if labels is not None:
        out["target_alignment"] = target_alignment(kernel, labels)
    if init is not None:
        out["distance_to_init"] = kernel_distance(kernel, init)
        out["cka_to_init"] = cka(kernel, init)
    if previous is not None and dt:
        out["velocity"] = kernel_velocity(previous, kernel, dt)
    return out
