"""The functional view f(θ, x) of a Keras model: the one place that turns a model into a function.

    f = tf_ntk.functional.FunctionalModel(model)
    logits = f(f.params, x)               # == model(x, training=False)
    logits = f(other_params, x)           # the same network at other weights; model untouched

``θ`` is the list of the model's trainable weights in ``model.trainable_variables`` order. The
non-trainable state (BatchNormalization running statistics) is read from the model's variables at
call time and never written: BN always runs in inference mode here. The model's variables are never
assigned, so the view is safe inside ``tf.GradientTape``, ``tf.function``, ``tf.vectorized_map`` and
``jit_compile=True`` functions; gradients flow to the ``params`` tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
import weakref

import keras
import numpy as np
import tensorflow as tf


class ParamsMismatchError(ValueError):
    """A list of weights does not match a model's trainable weights."""


def _check_built(model: keras.Model) -> None:
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built; call it on an input first")


def trainable_values(model: keras.Model) -> list[tf.Variable]:
    """The model's trainable weights as tf.Variables (the storage behind the Keras variables)."""
    return [v.value for v in model.trainable_variables]


def check_params(model: keras.Model, params: Iterable[tf.Tensor | np.ndarray],
                 dtype: tf.DType | str | None = None) -> list[tf.Tensor]:
    """Validates ``params`` against ``model.trainable_variables`` and returns them as tensors.

    Args:
      model: a built Keras model.
      params: a sequence of tensors/arrays, one per trainable variable, same order and shapes.
      dtype: cast every tensor to this dtype (default: the variable's dtype).

    Raises:
      ParamsMismatchError: wrong count or a wrong shape, naming the first offending weight.
    """
    variables = model.trainable_variables
    params = list(params)
    if len(params) != len(variables):
        raise ParamsMismatchError(
            f"params has {len(params)} tensors but model {model.name!r} has {len(variables)} "
            "trainable weights"
        )
    out = []
    for i, (p, v) in enumerate(zip(params, variables)):
        p = tf.convert_to_tensor(p)
        if tuple(p.shape) != tuple(v.shape):
            raise ParamsMismatchError(
                f"params[{i}] has shape {tuple(p.shape)} but weight {v.path!r} has shape "
                f"{tuple(v.shape)}"
            )
        out.append(tf.cast(p, dtype or v.dtype))
    return out


def _clone_with_dtype(model: keras.Model, dtype: str | tf.DType) -> keras.Model:
    """A structural copy of ``model`` whose layers compute in ``dtype`` (its own weights unused)."""

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.Model):
            return _clone_with_dtype(layer, dtype)  # clone_model does not enter nested models
        config = layer.get_config()
        if "dtype" in config:  # layers; plain ops (keras.ops.tanh, ...) follow their inputs
            config["dtype"] = dtype
        return layer.__class__.from_config(config)

    if len(model.inputs) != 1:
        clone = keras.models.clone_model(model, clone_function=clone_layer)
    else:
        # A new input in ``dtype``, or Functional.call would round the inputs to the old one.
        inputs = keras.Input(model.inputs[0].shape[1:], dtype=dtype)
        clone = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone_layer)
    if len(clone.trainable_variables) != len(model.trainable_variables) or len(
        clone.non_trainable_variables
    ) != len(model.non_trainable_variables):
        raise ValueError(f"model {model.name!r} cannot be cloned to dtype {dtype}")
    return clone


_CLONES: weakref.WeakKeyDictionary[keras.Model, dict[str, keras.Model]] = weakref.WeakKeyDictionary()


def _cached_clone(model: keras.Model, dtype: str) -> keras.Model:
    """`_clone_with_dtype`, built once per (model, dtype) and outside any tf.function trace."""
    clones = _CLONES.setdefault(model, {})
    if dtype not in clones:
        with tf.init_scope():
            clones[dtype] = _clone_with_dtype(model, dtype)
    return clones[dtype]


class FunctionalModel:
    """f(θ, x) for a Keras model, BatchNormalization in inference mode.

    Args:
      model: a built Keras model whose output is logits (N, O).
      dtype: compute dtype. Default: the model's own. ``"float64"`` evaluates a float64 structural
        copy of the model, fed the model's weights cast to float64 (for float64 kernels).

    Attributes:
      model: the wrapped Keras model (never modified).
      dtype: the compute dtype (a tf.DType).
      num_outputs: O, the number of logits.
      input_shape: the per-example input shape, e.g. (H, W, C).
      network: the Keras model that computes (``model`` or its copy in ``dtype``).
    """

    def __init__(self, model: keras.Model, dtype: tf.DType | str | None = None) -> None:
        _check_built(model)
        self.model = model
        out_shape = getattr(model, "output_shape", None)
        if not isinstance(out_shape, tuple) or len(out_shape) != 2:
            raise ValueError(
                f"model {model.name!r} must output logits of shape (batch, O); its output shape is "
                f"{out_shape}"
            )
        self.num_outputs = int(out_shape[-1])
        self.input_shape = tuple(model.input_shape[1:])
        own = tf.as_dtype(model.compute_dtype)
        self.dtype = own if dtype is None else tf.as_dtype(dtype)
        # The network that computes: the model itself, or its structural copy in another dtype.
        # Its variables are in one-to-one order with the model's.
        self.network = model if self.dtype == own else _cached_clone(model, self.dtype.name)

    @property
    def params(self) -> list[tf.Variable]:
        """The model's current trainable weights, as tf.Variables, in ``trainable_variables`` order."""
        return trainable_values(self.model)

    def check_inputs(self, x: tf.Tensor | np.ndarray) -> None:
        """Raises ValueError when ``x`` (N, *input_shape) does not fit the model."""
        shape = tuple(x.shape)
        if len(shape) != len(self.input_shape) + 1 or any(
            want is not None and got is not None and want != got
            for want, got in zip(self.input_shape, shape[1:])
        ):
            raise ValueError(
                f"inputs of shape {shape} do not fit model {self.model.name!r}, which takes "
                f"(N, {', '.join(str(d) for d in self.input_shape)})"
            )

    def _cast(self, t: tf.Tensor | tf.Variable | np.ndarray) -> tf.Tensor:
        t = tf.convert_to_tensor(t)
        return tf.cast(t, self.dtype) if t.dtype.is_floating and t.dtype != self.dtype else t

    def non_trainable(self) -> list[tf.Tensor]:
        """The model's current non-trainable state (BN running statistics), in the compute dtype."""
        return [self._cast(v.value) for v in self.model.non_trainable_variables]

    def __call__(self, params: Iterable[tf.Tensor | np.ndarray], x: tf.Tensor | np.ndarray,
                 state: Iterable[tf.Tensor | np.ndarray] | None = None, training: bool = False) -> tf.Tensor:
        """Logits (N, O) at weights ``params`` on inputs ``x`` (N, *input_shape), in ``self.dtype``.

        Args:
          params: one tensor per trainable weight (`check_params` validates untrusted input).
          x: inputs; cast to the compute dtype like ``params``.
          state: values for the non-trainable weights (BN running statistics), in
            ``model.non_trainable_variables`` order; default: the model's current values.
          training: False (BN in inference mode, the default everywhere in tf_ntk) or True (BN
            normalises with batch statistics; the running statistics are still never written).
        """
        params = [self._cast(p) for p in params]
        state = self.non_trainable() if state is None else [self._cast(s) for s in state]
        logits, _ = self.network.stateless_call(params, state, self._cast(x), training=training)
        return logits

    def state_mapping(self, params: Iterable[tf.Tensor | np.ndarray]) -> list[tuple[keras.Variable, tf.Tensor]]:
        """[(variable of ``self.network``, value)] for ``keras.StatelessScope``: ``params`` for the
        trainable weights, the model's current non-trainable state for the rest."""
        params = [self._cast(p) for p in params]
        return list(zip(self.network.trainable_variables, params)) + list(
            zip(self.network.non_trainable_variables, self.non_trainable()))


def assign(model: keras.Model, params: Iterable[tf.Tensor | np.ndarray]) -> None:
    """Writes ``params`` (checked against the model) into the model's trainable weights."""
    for v, p in zip(model.trainable_variables, check_params(model, params)):
        v.assign(p)


__all__ = [
    "FunctionalModel",
    "ParamsMismatchError",
    "assign",
    "check_params",
    "trainable_values",
]
