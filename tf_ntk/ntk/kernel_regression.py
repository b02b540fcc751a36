"""Kernel regression with the spawn's empirical NTK (the kernel machine): the infinite-time limit of
centered training, as a centered model that every attack and evaluation applies to.

    km = tf_ntk.kernel_machine(spawn, x_train, y_train)              # a centered LinearizedModel
    km(x)                                                            # k(x, X)(K + λI)⁻¹Y, (N, O)
    km.kernel_machine_info.ridge, km.kernel_machine_info.iterations

Centered dynamics f(x) = J(x)Δθ (J = ∂f/∂θ at the spawn θ_s, Δθ = θ − θ_s, `tf_ntk.linearize`)
trained by gradient flow from Δθ = 0 on the squared loss ½ Σ_i ‖f(x_i) − y_i‖² + (λ/2)‖Δθ‖² converges
to the unique minimiser Δθ* = J(X)ᵀα with α = (K + λI)⁻¹Y, where K = J(X)J(X)ᵀ is the full empirical
NTK on the training set, an (N·O)×(N·O) matrix (every pair of logits, not the trace kernel), and
Y (N, O) the one-hot labels (targets 1 for the true class and 0 elsewhere, the outputs starting at 0).
So the predictor is kernel ridge regression with the spawn's NTK, f(x) = k(x, X)(K + λI)⁻¹Y, and it is
exactly the centered model at θ_s + Δθ*: every attack and evaluation applies unchanged.
(With λ = 0 it is the limit of plain gradient flow, the minimum-norm interpolant K⁻¹Y.)

Ridge rule: λ = ``ridge`` × tr(K)/(N·O), a multiple of K's mean eigenvalue (default `DEFAULT_RIDGE`),
or ``absolute_ridge``. Solvers for α:

- ``"direct"``: K formed by `tf_ntk.empirical_ntk` (kind="full"), then a dense solve; O((N·O)²) memory.
- ``"cg"``: conjugate gradients on v ↦ J(X)(J(X)ᵀv) + λv, matrix-free: one VJP pass and one JVP
  (forward-mode) pass over X per iteration, batch by batch; K is never formed. tr(K) for the ridge
  rule comes from per-(example, logit) gradient norms, a chunk at a time.
- ``"auto"``: direct when N·O ≤ `DIRECT_MAX_SIZE`, else cg.

Δθ = J(X)ᵀα is accumulated over batches of VJPs (memory: a few copies of θ and one batch's
activations; no per-example Jacobian is kept). BatchNormalization runs in inference mode and θ is the
spawn's trainable weights (BN scale and offset included, running statistics not), as in
`tf_ntk.empirical_ntk` and `tf_ntk.linearize`, so the returned model's kernel is the kernel solved with.
Compiled passes run under ``jit_compile=True`` as well. Precision: the passes compute in ``dtype``
(default the model's); CG's vectors and the dense solve are float64 (NumPy). The returned model holds
θ_s + Δθ in the model's dtype: in float32, Δθ is recovered as (θ_s + Δθ) − θ_s with float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
import dataclasses
from typing import Any
from typing import cast

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from tf_ntk import data
from tf_ntk import dynamics
from tf_ntk import functional
from tf_ntk.ntk import jacobian
from tf_ntk.ntk import kernel as ntk_kernel
from tf_ntk.ntk import metrics

SOLVERS = ("direct", "cg", "auto")
DEFAULT_RIDGE = 1e-3  # λ = DEFAULT_RIDGE × mean eigenvalue of K
DIRECT_MAX_SIZE = 5000  # N·O up to which "auto" forms K (5000² float64: 200 MB)


@dataclasses.dataclass(frozen=True)
class Info:
    """How a kernel machine was solved.

    Attributes:
      solver: "direct" or "cg".
      ridge: the absolute λ used.
      mean_eigenvalue: tr(K)/(N·O) (NaN when ``absolute_ridge`` made it unnecessary under cg).
      examples: N, the training examples used.
      iterations: CG iterations (0 for direct).
      residual: ‖(K + λI)α − Y‖ / ‖Y‖, recomputed after the solve.
      train_indices: indices (N,) into the given training set (the class-balanced subset), or None.
      alpha: α (N, O) float64.
    """

    solver: str
    ridge: float
    mean_eigenvalue: float
    examples: int
    iterations: int
    residual: float
    train_indices: np.ndarray | None
    alpha: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """The scalars, JSON-ready."""
        return {"solver": self.solver, "ridge": self.ridge, "mean_eigenvalue": self.mean_eigenvalue,
                "examples": self.examples, "iterations": self.iterations, "residual": self.residual}


class Passes:
    """Batched passes over inputs with J = ∂f/∂θ at fixed weights, each one compiled function.

    Args:
      model: a built Keras model (logits (N, O)); BN in inference mode.
      params: the weights θ at which J is taken (default: the model's), ``trainable_variables`` order.
      dtype: compute dtype (default: the model's; "float64" computes with a float64 copy).
      batch_size: examples per pass (the last batch is padded, so each function traces once).
      jit_compile: compile the passes with XLA.
    """

    def __init__(self, model: keras.Model, params: Sequence[tf.Tensor | np.ndarray] | None = None, *,
                 dtype: tf.DType | str | None = None, batch_size: int = 128, jit_compile: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.f = functional.FunctionalModel(model, dtype=dtype)
        source = [v.value for v in model.trainable_variables] if params is None else params
        self.params = [tf.identity(p) for p in functional.check_params(model, source, dtype=self.f.dtype)]
        self.batch_size = int(batch_size)
        self.num_outputs = self.f.num_outputs
        compile_ = lambda fn: tf.function(fn, autograph=False, jit_compile=jit_compile)  # noqa: E731
        self._vjp = compile_(self._vjp_batch)
        self._jvp = compile_(self._jvp_batch)
        self._sq = compile_(self._squared_norms)

    def _vjp_batch(self, params: list[tf.Tensor], x: tf.Tensor, v: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(params)
            y = self.f(params, x)
        return tape.gradient(y, params, output_gradients=tf.cast(v, y.dtype),
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def _jvp_batch(self, params: list[tf.Tensor], x: tf.Tensor, tangents: list[tf.Tensor]) -> tf.Tensor:
        with tf.autodiff.ForwardAccumulator(params, tangents) as acc:
            y = self.f(params, x)
        return acc.jvp(y, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def _squared_norms(self, params: list[tf.Tensor], x: tf.Tensor, c: int | tf.Tensor) -> tf.Tensor:
        grads = jacobian.column_gradients(self.f, params, x, c)  # one (B, *shape) per weight
        return tf.add_n([tf.reduce_sum(tf.square(g), axis=list(range(1, g.shape.rank))) for g in grads])

    def _batches(self, x: np.ndarray, size: int | None = None) -> Iterator[tuple[int, np.ndarray, int]]:
        """(start, padded batch of ``size`` rows, number of real rows)."""
        size = size or self.batch_size
        for start in range(0, len(x), size):
            part = x[start:start + size]
            real = len(part)
            if real < size and len(x) > size:
                part = np.concatenate([part, np.zeros((size - real,) + part.shape[1:], part.dtype)])
            yield start, part, real

    def jt(self, x: np.ndarray, v: npt.ArrayLike) -> list[tf.Tensor]:
        """J(X)ᵀv = Σ_i J(x_i)ᵀv_i for inputs x (N, ...) and v (N, O): a list of tensors shaped like θ,
        in the compute dtype, summed over batches of VJPs."""
        v = np.asarray(v, self.f.dtype.as_numpy_dtype)
        total: list[tf.Tensor] | None = None
        for start, part, real in self._batches(x):
            rows = v[start:start + real]
            if len(rows) < len(part):
                rows = np.concatenate([rows, np.zeros((len(part) - real, v.shape[1]), v.dtype)])
            grads = self._vjp(self.params, tf.constant(part), tf.constant(rows))
            total = list(grads) if total is None else [t + g for t, g in zip(total, grads)]
        return cast(list[tf.Tensor], total)  # None only for zero inputs, which kernel_machine refuses

    def j(self, x: np.ndarray, tangents: Sequence[tf.Tensor]) -> np.ndarray:
        """J(X)u for inputs x (N, ...) and a direction u (tensors shaped like θ): (N, O) float64."""
        tangents = [tf.cast(t, self.f.dtype) for t in tangents]
        out = np.empty((len(x), self.num_outputs), np.float64)
        for start, part, real in self._batches(x):
            out[start:start + real] = self._jvp(self.params, tf.constant(part), tangents).numpy()[:real]
        return out

    def trace(self, x: np.ndarray, memory_budget_bytes: int | None = None) -> float:
        """tr(K) = Σ_i Σ_c ‖∇θ f_c(x_i)‖² (float): per-(example, logit) gradients, as many pairs at a
        time as fit ``memory_budget_bytes`` (default: `tf_ntk.ntk.default_memory_budget`)."""
        budget = memory_budget_bytes or ntk_kernel.default_memory_budget()
        num_params = sum(int(np.prod(p.shape)) for p in self.params)
        chunk = int(max(1, min(len(x) * self.num_outputs,
                               budget // (4 * num_params * self.f.dtype.size))))
        pairs_x = np.repeat(np.arange(len(x)), self.num_outputs)
        pairs_c = np.tile(np.arange(self.num_outputs, dtype=np.int32), len(x))
        total = 0.0
        for start in range(0, len(pairs_x), chunk):
            rows, logits = pairs_x[start:start + chunk], pairs_c[start:start + chunk]
            real = len(rows)
            if real < chunk and len(pairs_x) > chunk:
                rows = np.concatenate([rows, np.zeros(chunk - real, rows.dtype)])
                logits = np.concatenate([logits, np.zeros(chunk - real, logits.dtype)])
            norms = self._sq(self.params, tf.constant(x[rows]), tf.constant(logits)).numpy()
            total += float(np.sum(norms[:real], dtype=np.float64))
        return total


def conjugate_gradients(matvec: Callable[[np.ndarray], np.ndarray], b: npt.ArrayLike, *, tol: float = 1e-6,
                        max_iterations: int = 1000) -> tuple[np.ndarray, int]:
    """Solves A z = b for a symmetric positive definite A given as ``matvec`` (arrays shaped like b).

    Stops when ‖r‖ ≤ tol·‖b‖ (r the recursive residual) or after ``max_iterations``.

    Returns:
      (z float64 shaped like b, iterations).
    """
    b = np.asarray(b, np.float64)
    z = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rs = float(np.vdot(r, r))
    stop = tol * np.sqrt(rs)
    iterations = 0
    while iterations < max_iterations and np.sqrt(rs) > stop:
        ap = np.asarray(matvec(p), np.float64)
        step = rs / float(np.vdot(p, ap))
        z += step * p
        r -= step * ap
        rs, previous = float(np.vdot(r, r)), rs
        p = r + (rs / previous) * p
        iterations += 1
    return z, iterations


def _full_kernel(model: keras.Model, x: np.ndarray, dtype: tf.DType | str | None, implementation: str,
                 memory_budget_bytes: int | None, params: Sequence[tf.Tensor] | None = None) -> np.ndarray:
    """K (N·O, N·O) float64, row i·O + a for logit a of example i."""
    k = ntk_kernel.empirical_ntk(model, x, kind="full", dtype=dtype, params=params,
                                 implementation=implementation,
                                 memory_budget_bytes=memory_budget_bytes).numpy()
    n, o = k.shape[0], k.shape[2]
    return np.asarray(k, np.float64).transpose(0, 2, 1, 3).reshape(n * o, n * o)


def delta_theta(passes: Passes, x: np.ndarray, alpha: npt.ArrayLike) -> list[tf.Tensor]:
    """Δθ = J(X)ᵀα for inputs x (N, ...) and α (N, O): a list of tensors shaped like θ (batched VJPs)."""
    return passes.jt(x, alpha)


def kernel_machine(spawn_model: keras.Model, x_train: np.ndarray, y_train: npt.ArrayLike, *,
                   ridge: float = DEFAULT_RIDGE, absolute_ridge: float | None = None, solver: str = "auto",
                   per_class: int | None = None, seed: int = 0, dtype: tf.DType | str | None = None,
                   batch_size: int = 128, tol: float = 1e-6, max_iterations: int = 1000, jit_compile: bool = False,
                   implementation: str = "auto", memory_budget_bytes: int | None = None,
                   model: dynamics.LinearizedModel | None = None) -> dynamics.LinearizedModel:
    """The kernel machine of ``spawn_model``'s empirical NTK, as a centered linearized model.

    Args:
      spawn_model: a built Keras model with logits (N, O): the spawn θ_s. Never modified.
      x_train: training inputs (N, *input_shape). y_train: int labels (N,) in [0, O).
      ridge: λ = ridge × tr(K)/(N·O) (a multiple of K's mean eigenvalue), ≥ 0.
      absolute_ridge: λ itself, overriding ``ridge``.
      solver: "direct" (K formed), "cg" (matrix-free conjugate gradients) or "auto" (see module doc).
      per_class: solve on a class-balanced subset of this many examples per class (drawn with
        ``seed``, `tf_ntk.data.class_balanced_indices`); None: every example.
      dtype: compute dtype of the kernel and the passes ("float32", "float64"; default the model's).
      batch_size: examples per VJP/JVP pass.
      tol, max_iterations: CG's stopping rule, ‖r‖ ≤ tol·‖Y‖.
      jit_compile: compile the passes with XLA.
      implementation, memory_budget_bytes: for `tf_ntk.empirical_ntk` (direct) and the trace (cg).
      model: a centered `tf_ntk.dynamics.LinearizedModel` of the spawn's architecture to hold the
        result (all its weights are overwritten), e.g. the previous spawn's kernel machine: the
        functions traced on it (attacks) serve this one too. Default: a new one.

    Returns:
      A `tf_ntk.dynamics.LinearizedModel` (centered) at θ_s + Δθ, Δθ = J(X)ᵀ(K + λI)⁻¹Y, whose output
      on x is k(x, X)(K + λI)⁻¹Y, (N, O); its ``kernel_machine_info`` is an `Info`.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; known: {', '.join(SOLVERS)}")
    if absolute_ridge is None and not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if absolute_ridge is not None and not absolute_ridge >= 0:
        raise ValueError(f"absolute_ridge must be >= 0, got {absolute_ridge}")
    if not tol > 0 or max_iterations < 1:
        raise ValueError("tol must be > 0 and max_iterations >= 1")
    passes = Passes(spawn_model, dtype=dtype, batch_size=batch_size, jit_compile=jit_compile)
    num_outputs = passes.num_outputs
    x_train = np.asarray(x_train)
    passes.f.check_inputs(x_train)
    targets = metrics.one_hot(y_train, num_outputs)
    if len(targets) != len(x_train):
        raise ValueError(f"{len(x_train)} inputs but {len(targets)} labels")
    indices = None
    if per_class is not None:
        indices = data.class_balanced_indices(np.asarray(y_train), per_class, seed=seed,
                                              num_classes=num_outputs)
        x_train, targets = x_train[indices], targets[indices]
    if len(x_train) == 0:
        raise ValueError("the kernel machine needs at least one training example")
    x_train = x_train.astype(passes.f.dtype.as_numpy_dtype)
    size = len(x_train) * num_outputs
    chosen = solver if solver != "auto" else ("direct" if size <= DIRECT_MAX_SIZE else "cg")
    mean_eigenvalue = float("nan")
    if chosen == "direct":
        k = _full_kernel(spawn_model, x_train, passes.f.dtype.name, implementation, memory_budget_bytes)
        mean_eigenvalue = float(np.trace(k)) / size
        lam = float(absolute_ridge) if absolute_ridge is not None else ridge * mean_eigenvalue
        system = k + lam * np.eye(size)
        alpha = np.linalg.solve(system, targets.ravel()).reshape(targets.shape)
        residual = np.linalg.norm(system @ alpha.ravel() - targets.ravel()) / np.linalg.norm(targets)
        iterations = 0
    else:
        if absolute_ridge is None:
            mean_eigenvalue = passes.trace(x_train, memory_budget_bytes) / size
        lam = float(absolute_ridge) if absolute_ridge is not None else ridge * mean_eigenvalue

        def matvec(v: np.ndarray) -> np.ndarray:
            return passes.j(x_train, passes.jt(x_train, v)) + lam * v

        alpha, iterations = conjugate_gradients(matvec, targets, tol=tol, max_iterations=max_iterations)
        residual = np.linalg.norm(matvec(alpha) - targets) / np.linalg.norm(targets)
    if not np.all(np.isfinite(alpha)):
        raise ValueError("the kernel machine's solve gave non-finite weights (singular K + λI: pass "
                         "a ridge > 0)")
    delta = delta_theta(passes, x_train, alpha)
    if model is None:
        model = dynamics.linearize(spawn_model, centered=True)
    else:
        if not getattr(model, "centered", False):
            raise ValueError("model must be a centered LinearizedModel (tf_ntk.linearize(..., centered=True))")
        functional.check_params(spawn_model, [v.value for v in model.spawn_params])
        for copies, values in ((model.spawn_params, spawn_model.trainable_variables),
                               (model.spawn_state, spawn_model.non_trainable_variables)):
            for copy, value in zip(copies, values, strict=True):
                copy.assign(value)
    for v, s, d in zip(model.theta, model.spawn_params, delta):
        v.assign(s.value + tf.cast(d, v.dtype))
    model.kernel_machine_info = Info(
        solver=chosen, ridge=lam, mean_eigenvalue=mean_eigenvalue, examples=len(x_train),
        iterations=iterations, residual=float(residual), train_indices=indices, alpha=alpha)
    return model


__all__ = ["DEFAULT_RIDGE", "DIRECT_MAX_SIZE", "Info", "Passes", "SOLVERS", "conjugate_gradients",
           "delta_theta", "kernel_machine"]
