"""Linearized and centered dynamics around spawn weights θ_s.

    lin = tf_ntk.linearize(model)                  # f_lin(x) = f_{θ_s}(x) + J_{θ_s}(x)(θ − θ_s)
    cen = tf_ntk.linearize(model, centered=True)   # f_cen(x) = J_{θ_s}(x)(θ − θ_s)

The returned Keras model owns its weights: trainable θ (initialised to a copy of the model's current
trainable weights θ_s) and frozen, non-trainable copies of θ_s and of the BN running statistics,
so it checkpoints on its own and the original model is never read or written again. Its empirical
NTK with respect to θ is the spawn kernel k_{θ_s}, whatever θ is.

Gradients: both output terms come from one `tf.custom_gradient` whose forward pass is one
forward-mode product (ForwardAccumulator over the spawn weights, recorded by a tape inside the
custom gradient) and whose backward pass is that tape's vector-Jacobian product at θ_s:
dL/dθ = J_{θ_s}ᵀ dL/df. The train step's own tape never wraps the accumulator, so a train step
traces and compiles once under ``jit_compile=True`` (checked in the XLA logs). The input gradient
dL/dx (what PGD needs to attack the model under its own dynamics) is the forward-mode derivative
along θ − θ_s of the spawn's input gradient; graphs that never ask for it prune it.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
import contextlib
import json
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tf_ntk import checkpoints
from tf_ntk import functional
from tf_ntk import models

BATCHNORM_POLICIES = ("frozen", "batch")
"""BatchNormalization under linearized / centered dynamics: "frozen" (inference mode with the
spawn's running statistics) or "batch" (batch statistics when training)."""


def _constant_initializer(value: tf.Tensor | tf.Variable) -> Callable[..., tf.Tensor]:
    return lambda shape, dtype=None: tf.cast(tf.identity(value), dtype or value.dtype)


class LinearizedModel(keras.Model):
    """f_{θ_s}(x) + J_{θ_s}(x)(θ − θ_s) (or the kernel term alone when ``centered``).

    Attributes:
      centered: True for the centered dynamics (no spawn function).
      batchnorm: ``"frozen"`` (BN in inference mode with the spawn's running statistics; the
        protocol's default) or ``"batch"`` (BN normalises with batch statistics when training=True).
      theta: the trainable weights θ, in the spawn model's ``trainable_variables`` order.
      spawn_params: frozen θ_s. spawn_state: frozen BN running statistics (non-trainable state).
    """

    def __init__(self, model: keras.Model, *, centered: bool = False, batchnorm: str = "frozen",
                 name: str | None = None) -> None:
        if batchnorm not in BATCHNORM_POLICIES:
            raise ValueError(
                f"unknown batchnorm policy {batchnorm!r}; known: {', '.join(BATCHNORM_POLICIES)}")
        # The spawn's dtype policy: Keras casts a layer's inputs to its compute dtype, and a float64
        # spawn's linearization must not round its inputs to float32.
        super().__init__(name=name or f"{'centered' if centered else 'linearized'}_{model.name}",
                         dtype=model.dtype_policy)
        self._f = functional.FunctionalModel(model)
        self.centered = centered
        self.batchnorm = batchnorm
        self.spawn_params = [
            self.add_weight(shape=v.shape, dtype=v.dtype, trainable=False,
                            initializer=_constant_initializer(v.value), name=f"spawn_{i}")
            for i, v in enumerate(model.trainable_variables)]
        self.spawn_state = [
            self.add_weight(shape=v.shape, dtype=v.dtype, trainable=False,
                            initializer=_constant_initializer(v.value), name=f"spawn_state_{i}")
            for i, v in enumerate(model.non_trainable_variables)]
        self.theta = [
            self.add_weight(shape=v.shape, dtype=v.dtype, trainable=True,
                            initializer=_constant_initializer(v.value), name=f"theta_{i}")
            for i, v in enumerate(model.trainable_variables)]
        self._out_dim = self._f.num_outputs
        # Keras 3 does not expose list-held weights to tf.train.Checkpoint; this trackable does.
        self.weights_for_checkpoint = tf.train.Checkpoint(
            theta=[v.value for v in self.theta], spawn_params=[v.value for v in self.spawn_params],
            spawn_state=[v.value for v in self.spawn_state])
        self.built = True

    def spawn_values(self) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """(θ_s, BN state) as tensors."""
        return [v.value for v in self.spawn_params], [v.value for v in self.spawn_state]

    def _f_at(self, params: Sequence[tf.Tensor], x: tf.Tensor, training: bool) -> tf.Tensor:
        _, state = self.spawn_values()
        bn_training = bool(training) and self.batchnorm == "batch"
        return self._f(params, x, state=state, training=bn_training)

    def spawn_output(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """f_{θ_s}(x): (N, O), the first term (constant in θ)."""
        spawn, _ = self.spawn_values()
        return self._f_at(spawn, x, training)

    def kernel_term(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """J_{θ_s}(x)(θ − θ_s): (N, O), the second term; differentiable in θ and in x."""
        return self.output_terms(x, training=training)[1]

    def output_terms(self, x: tf.Tensor | np.ndarray, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """(f_{θ_s}(x), J_{θ_s}(x)(θ − θ_s)), each (N, O), from one forward-mode pass.

        The spawn term is the primal of the forward-mode product, so the linearized output costs no
        extra forward pass. Gradients: θ gets J_{θ_s}ᵀ u from the forward pass's own tape (no second
        forward); x gets (∂f/∂x)ᵀ u_f + ∂/∂x (u_Jᵀ J(x) Δθ).
        """
        # Frozen weights enter as tensors (read once), so the tape below may watch them.
        spawn = [tf.convert_to_tensor(v) for v in self.spawn_values()[0]]
        theta = [v.value for v in self.theta]
        x = tf.convert_to_tensor(x)

        @tf.custom_gradient
        def terms(x: tf.Tensor,
                  *theta_values: tf.Tensor) -> tuple[tuple[tf.Tensor, tf.Tensor], Callable[..., list[tf.Tensor]]]:
            delta = [t - s for t, s in zip(theta_values, spawn)]
            # Persistent: an outer persistent tape (per-class gradients, DeepFool) may call grad
            # more than once.
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(spawn)
                with tf.autodiff.ForwardAccumulator(spawn, delta) as acc:
                    y = self._f_at(spawn, x, training)
            jvp = acc.jvp(y, unconnected_gradients=tf.UnconnectedGradients.ZERO)

            def grad(up_f: tf.Tensor | None, up_j: tf.Tensor | None) -> list[tf.Tensor]:
                up_f = tf.zeros_like(y) if up_f is None else up_f
                up_j = tf.zeros_like(y) if up_j is None else up_j
                # dL/dθ = J_{θ_s}(x)ᵀ u_J: the VJP of the recorded forward pass at the spawn.
                g_theta = tape.gradient(y, spawn, output_gradients=up_j,
                                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
                # dL/dx: the spawn term's input gradient plus the directional derivative along Δθ
                # of the input gradient u_Jᵀ ∂f/∂x (forward over reverse). Graphs that never ask
                # for dL/dx (train steps) prune this part.
                with tf.autodiff.ForwardAccumulator(spawn, delta) as acc_x:
                    with tf.GradientTape(persistent=True) as tape_x:
                        tape_x.watch(x)
                        y_x = self._f_at(spawn, x, training)
                    g_j = tape_x.gradient(y_x, x, output_gradients=up_j)
                g_f = tape_x.gradient(y_x, x, output_gradients=up_f)
                del tape_x
                g_x = g_f + acc_x.jvp(g_j, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                return [g_x] + list(g_theta)

            return (tf.identity(y), jvp), grad

        return terms(x, *theta)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        spawn_term, kernel_term = self.output_terms(x, training=training)
        return kernel_term if self.centered else spawn_term + kernel_term

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, int]:
        return (input_shape[0], self._out_dim)

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """(None, *per-example input shape) of the spawn model."""
        return (None,) + tuple(self._f.input_shape)

    @property
    def output_shape(self) -> tuple[None, int]:
        """(None, O)."""
        return (None, self._out_dim)


def linearize(model: keras.Model, *, centered: bool = False, batchnorm: str = "frozen") -> LinearizedModel:
    """The linearized (or centered) model around ``model``'s current weights, θ starting at θ_s.

    Args:
      model: a built Keras model with logits output (N, O): the spawn. Never modified.
      centered: drop the spawn function: f_cen = J_{θ_s}(θ − θ_s), exactly 0 at the start.
      batchnorm: ``"frozen"`` (default; inference-mode BN with the spawn statistics) or ``"batch"``.

    Returns:
      A `LinearizedModel`: a Keras model, trainable with `model.fit` or tf_ntk's own loop.
    """
    return LinearizedModel(model, centered=centered, batchnorm=batchnorm)


class _Pool:
    """Models kept between the jobs of one process (`reuse_models`): {key: [free models]} and the
    models handed out in the current block."""

    def __init__(self) -> None:
        self.free: dict[tuple[Any, ...], list[Any]] = {}
        self.taken: list[tuple[tuple[Any, ...], Any]] = []
        self.active = False


_POOL = _Pool()


@contextlib.contextmanager
def reuse_models() -> Iterator[None]:
    """Within the block, ``load_model(..., reuse=True)`` restores the checkpoint into a model of the
    same architecture and dynamics that an earlier block of this process built, where one is free,
    instead of building a new one; the block's models are free again when it ends.

    For processes that run job after job (the sweep's workers): the functions traced on a model (its
    attacks and predictions, `tf_ntk.robust.ensembles`) capture its variables, not their values, so the
    next job reuses them with its own weights instead of tracing them again. Restoring matches every
    variable of the model (`tf_ntk.checkpoints.restore`), so nothing of an earlier job's weights
    survives. A job must not keep a model past its block.
    """
    if _POOL.active:  # nested: the outer block hands the models back
        yield
        return
    _POOL.active = True
    try:
        yield
    finally:
        for key, model in _POOL.taken:
            _POOL.free.setdefault(key, []).append(model)
        _POOL.taken, _POOL.active = [], False


def reusing() -> bool:
    """Whether this process is inside a `reuse_models` block (a sweep worker's job)."""
    return _POOL.active


def load_model(directory: str, *, dynamics: str | None = None, batchnorm: str = "frozen",
               expected_model: Mapping[str, Any] | None = None,
               reuse: bool = False) -> tuple[keras.Model, dict[str, Any]]:
    """The model a checkpoint holds, rebuilt from its recorded spec, under its or the given dynamics.

    Args:
      directory: a spawn (or resume) checkpoint directory.
      dynamics: for a phase-1 (standard) checkpoint, the phase-2 dynamics to wrap it in:
        None/``"standard"`` (the network), ``"linearized"`` or ``"centered"`` (`linearize`
        around the checkpoint's weights). A phase-2 checkpoint is always rebuilt under the dynamics
        that trained it; asking for another is an error.
      batchnorm: phase-2 BN policy for ``linearize`` (``"frozen"`` or ``"batch"``).
      expected_model: a `tf_ntk.models.spec` the checkpoint must hold (e.g. the one the flags ask for).
      reuse: inside `reuse_models`, restore into a free model of the same kind kept from an earlier
        block (every variable is restored, so it may be trained: `tf_ntk.training` reuses the steps
        traced on it); elsewhere no effect.

    Returns:
      (model, meta): a Keras model (a `LinearizedModel` for linearized/centered dynamics) and the
      checkpoint's record. Build it under ``strategy.scope()`` for distributed training.
    """
    meta = checkpoints.read_meta(directory, require_model=True)
    spec = meta["model"]
    if expected_model is not None and dict(expected_model) != spec:
        raise checkpoints.CheckpointError(f"checkpoint {directory} holds {_describe(spec)}, "
                                          f"not {_describe(expected_model)}")
    config = meta.get("config", {})
    recorded = config.get("dynamics", "standard")
    if recorded != "standard":
        if dynamics not in (None, recorded):
            raise checkpoints.CheckpointError(f"checkpoint {directory} was trained with {recorded} dynamics, "
                                              f"not {dynamics}")
        policy = config.get("batchnorm", "frozen")
        key = (json.dumps(spec, sort_keys=True), recorded, policy, "phase 2")
        model = _take(key, reuse) or linearize(models.build(spec), centered=recorded == "centered",
                                               batchnorm=policy)
        checkpoints.restore(directory, model=model)
        _give(key, model, reuse)
        return model, meta
    if dynamics not in (None, "standard", "linearized", "centered"):
        raise ValueError(f"unknown dynamics {dynamics!r}; known: standard, linearized, centered")
    wrap = dynamics not in (None, "standard")
    key = (json.dumps(spec, sort_keys=True), dynamics or "standard", batchnorm if wrap else None,
           "phase 1")
    pooled = _take(key, reuse)
    base = pooled[0] if pooled else models.build(spec)
    checkpoints.restore(directory, model=base)
    if not wrap:
        _give(key, (base,), reuse)
        return base, meta
    if pooled:  # the kept linearization, re-centred on the restored weights
        model = pooled[1]
        for copies, values in ((model.spawn_params, base.trainable_variables),
                               (model.theta, base.trainable_variables),
                               (model.spawn_state, base.non_trainable_variables)):
            for copy, value in zip(copies, values):
                copy.assign(value)
    else:
        model = linearize(base, centered=dynamics == "centered", batchnorm=batchnorm)
    _give(key, (base, model), reuse)
    return model, meta


def build_model(spec: dict[str, Any], *, reuse: bool = False) -> keras.Model:
    """A model of ``spec`` with fresh initial weights (`tf_ntk.models.build`, from the current seed).

    Inside `reuse_models` with ``reuse``, the fresh weights are copied into a model of the same spec
    kept from an earlier block, where one is free, and that model is returned: the functions traced on
    it (its train steps, `tf_ntk.training`; its attacks) serve again, with the same numbers as a new
    model (every variable is assigned: weights and BN statistics). Elsewhere, the fresh model.
    """
    fresh = models.build(spec)
    key = (json.dumps(spec, sort_keys=True), "standard", None, "phase 1")
    pooled = _take(key, reuse)
    if pooled is None:
        _give(key, (fresh,), reuse)
        return fresh
    kept = pooled[0]
    for variable, value in zip(kept.variables, fresh.variables, strict=True):
        variable.assign(value)
    _give(key, pooled, reuse)
    return kept


def _take(key: tuple[Any, ...], reuse: bool) -> Any:
    """A free pooled model for ``key`` (see `reuse_models`), or None."""
    if reuse and _POOL.active and _POOL.free.get(key):
        return _POOL.free[key].pop()
    return None


def _give(key: tuple[Any, ...], model: Any, reuse: bool) -> None:
    if reuse and _POOL.active:
        _POOL.taken.append((key, model))


def _describe(spec: Mapping[str, Any]) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in sorted(spec.get("options", {}).items()))
    return (f"{spec.get('name')}({opts}) for {spec.get('num_classes')} classes on "
            f"{tuple(spec.get('input_shape', ()))} inputs")
