"""Keras 3 classifiers that output logits, built by name from a registry.

    model = tf_ntk.models.get("resnet18", num_classes=10, input_shape=(32, 32, 3), width=16)

Models:
  * ``resnet18``: the CIFAR ResNet-18 of the protocol: 3x3 stride-1 stem, no max-pool, BasicBlocks
    2-2-2-2 with width*(1, 2, 4, 8) channels (width=64: 64-128-256-512, 11.17 M parameters),
    projection shortcuts with BN, global average pool, dense head initialised to zeros, BN momentum
    0.9 (Keras' running-average convention) and epsilon 1e-5.
  * ``mlp``: flatten, two hidden ReLU layers of ``width`` units (the authors' narrow 256 and wide
    2048), dense head. No BN.
  * ``cnn``: a small conv net with BatchNormalization, for fast tests and CPU studies.

Every model takes images (B, H, W, C) float32 in [0, 1] and returns logits (B, num_classes).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import inspect
import math
from typing import Any

import keras
from keras import layers

BN_MOMENTUM = 0.9
"""BatchNormalization's running-statistics momentum in `cnn` and `resnet18`."""
BN_EPSILON = 1e-5
"""BatchNormalization's variance epsilon in `cnn` and `resnet18`."""

_REGISTRY: dict[str, Callable[..., keras.Model]] = {}


def register(name: str) -> Callable[[Callable[..., keras.Model]], Callable[..., keras.Model]]:
    """Decorator: adds ``builder(num_classes, input_shape, **options) -> keras.Model`` to the registry."""

    def wrap(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        _REGISTRY[name] = builder
        return builder

    return wrap


def names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def options(name: str) -> dict[str, Any]:
    """{option: default} of the keyword options model ``name`` accepts (e.g. ``width``)."""
    _check_name(name)
    sig = inspect.signature(_REGISTRY[name])
    return {
        k: p.default for k, p in sig.parameters.items() if p.kind == inspect.Parameter.KEYWORD_ONLY
    }


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")


def get(name: str, num_classes: int, input_shape: Sequence[int], **kwargs: Any) -> keras.Model:
    """Builds model ``name`` for ``num_classes`` logits on inputs of shape ``input_shape`` (H, W, C).

    Args:
      name: one of `names()`: ``"mlp"``, ``"cnn"``, ``"resnet18"``.
      num_classes: O, the number of logits.
      input_shape: (H, W, C) of one image, e.g. (8, 8, 1) for digits, (32, 32, 3) for CIFAR-10.
      **kwargs: the model's options (`options(name)`), e.g. ``width``.

    Returns:
      A built, float32 `keras.Model` mapping images (B, H, W, C) in [0, 1] to logits (B, O), unscaled
      (no softmax).

    Raises:
      ValueError: unknown name (the message lists the known ones), unknown option, or bad shapes.
    """
    _check_name(name)
    unknown = sorted(set(kwargs) - set(options(name)))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(sorted(options(name))) or 'none'}"
        )
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) with positive sizes, got {input_shape}")
    return _REGISTRY[name](int(num_classes), input_shape, **kwargs)


def spec(name: str, num_classes: int, input_shape: Sequence[int], **kwargs: Any) -> dict[str, Any]:
    """A JSON-able description ``{"name", "num_classes", "input_shape", "options"}`` of a model.

    Checkpoints record it so that `build` can rebuild the model they hold.
    """
    _check_name(name)
    return {"name": name, "num_classes": int(num_classes),
            "input_shape": [int(d) for d in input_shape], "options": dict(kwargs)}


def build(model_spec: Mapping[str, Any]) -> keras.Model:
    """The model a `spec` describes (fresh weights); ValueError when ``model_spec`` is malformed."""
    try:
        return get(model_spec["name"], model_spec["num_classes"], model_spec["input_shape"],
                   **model_spec.get("options", {}))
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed model spec {model_spec!r}: {e}") from e


def _head(x: keras.KerasTensor, num_classes: int, zero_head: bool) -> keras.KerasTensor:
    init = "zeros" if zero_head else "glorot_uniform"
    return layers.Dense(num_classes, kernel_initializer=init, bias_initializer="zeros", name="logits")(x)


def _bn(name: str, momentum: float, epsilon: float) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=name)


@register("mlp")
def mlp(num_classes: int, input_shape: Sequence[int], *, width: int = 256, depth: int = 2,
        zero_head: bool = False) -> keras.Model:
    """flatten -> ``depth`` x (Dense(width) -> ReLU) -> Dense(num_classes).

    ``width``: units per hidden layer; ``depth``: hidden layers; ``zero_head``: the logit layer starts
    at zero (the network's output is 0 at initialisation)."""
    if width < 1 or depth < 0:
        raise ValueError(f"mlp needs width >= 1 and depth >= 0, got width={width}, depth={depth}")
    inputs = keras.Input(input_shape, name="images")
    x = layers.Flatten(name="flatten")(inputs)
    for i in range(depth):
        x = layers.Dense(width, activation="relu", name=f"dense{i + 1}")(x)
    return keras.Model(inputs, _head(x, num_classes, zero_head), name=f"mlp_w{width}")


@register("cnn")
def cnn(num_classes: int, input_shape: Sequence[int], *, width: int = 16, zero_head: bool = False,
        bn_momentum: float = BN_MOMENTUM, bn_epsilon: float = BN_EPSILON) -> keras.Model:
    """Three 3x3 conv -> BN -> ReLU stages (width, 2*width stride 2, 4*width stride 2), GAP, dense.

    ``width``: channels of the first stage; ``bn_momentum``, ``bn_epsilon``: BatchNormalization's;
    ``zero_head``: the logit layer starts at zero."""
    if width < 1:
        raise ValueError(f"cnn needs width >= 1, got {width}")
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for i, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2)]):
        x = layers.Conv2D(width * mult, 3, strides=stride, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name=f"conv{i + 1}")(x)
        x = _bn(f"bn{i + 1}", bn_momentum, bn_epsilon)(x)
        x = layers.ReLU(name=f"relu{i + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, _head(x, num_classes, zero_head), name=f"cnn_w{width}")


def _basic_block(x: keras.KerasTensor, filters: int, stride: int, name: str, momentum: float,
                 epsilon: float) -> keras.KerasTensor:
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus identity or 1x1-conv+BN shortcut, ReLU."""
    conv = lambda f, k, s, n: layers.Conv2D(  # noqa: E731
        f, k, strides=s, padding="same", use_bias=False, kernel_initializer="he_normal", name=n)
    out = conv(filters, 3, stride, f"{name}_conv1")(x)
    out = _bn(f"{name}_bn1", momentum, epsilon)(out)
    out = layers.ReLU(name=f"{name}_relu1")(out)
    out = conv(filters, 3, 1, f"{name}_conv2")(out)
    out = _bn(f"{name}_bn2", momentum, epsilon)(out)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv(filters, 1, stride, f"{name}_shortcut_conv")(x)
        shortcut = _bn(f"{name}_shortcut_bn", momentum, epsilon)(shortcut)
    out = layers.Add(name=f"{name}_add")([out, shortcut])
    return layers.ReLU(name=f"{name}_relu2")(out)


@register("resnet18")
def resnet18(num_classes: int, input_shape: Sequence[int], *, width: int = 64, zero_head: bool = True,
             bn_momentum: float = BN_MOMENTUM, bn_epsilon: float = BN_EPSILON) -> keras.Model:
    """CIFAR ResNet-18 (3x3 stem, no max-pool, four stages of two basic blocks, GAP, dense).

    ``width``: the stem's channel count (64 in the protocol; stages have width, 2, 4 and 8 x width);
    ``zero_head`` (default True): the logit layer starts at zero; ``bn_momentum``, ``bn_epsilon``:
    BatchNormalization's."""
    if width < 1:
        raise ValueError(f"resnet18 needs width >= 1, got {width}")
    inputs = keras.Input(input_shape, name="images")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                      name="stem_conv")(inputs)
    x = _bn("stem_bn", bn_momentum, bn_epsilon)(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, mult in enumerate((1, 2, 4, 8)):
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            x = _basic_block(x, width * mult, stride, f"stage{stage + 1}_block{block + 1}",
                             bn_momentum, bn_epsilon)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, _head(x, num_classes, zero_head), name=f"resnet18_w{width}")


def num_params(model: keras.Model) -> int:
    """Number of trainable scalars of ``model`` (an int; BN running statistics excluded)."""
    return int(sum(math.prod(v.shape) for v in model.trainable_variables))
