"""What the kernel implementations need to know about a Keras model's functional graph.

This is the only module of `tf_ntk.ntk` that touches Keras' private graph API (``_run_through_graph``,
``_nodes_by_depth``, ``_inbound_nodes``, ``_call_context_args``, ``_flatten_layers``, a Sequential's
``_functional``); the implementations go through the public functions below. It also classifies the
layers with trainable weights by the per-layer rule that computes their kernel contribution:

  * ``DENSE``: a plain ``keras.layers.Dense`` on 2-D inputs;
  * ``CONV``: a plain ``keras.layers.Conv2D``, channels last, one group, "same" or "valid" padding;
  * ``BATCHNORM``: ``keras.layers.BatchNormalization`` on the last axis, without renormalization;
  * ``FALLBACK``: any other layer with weights (quantized and LoRA layers included).
"""

import math

import keras
import tensorflow as tf

DENSE, CONV, BATCHNORM, FALLBACK = "dense", "conv2d", "batchnorm", "fallback"


class UnsupportedModelError(ValueError):
    """The graph walkers cannot handle this model (use implementation="jacobian")."""


# -- the graph -----------------------------------------------------------------------------------


def functional_graph(network):
    """The Functional graph behind a Keras model (Sequential models build one).

    Raises:
      UnsupportedModelError: the model has no functional graph (e.g. a subclassed model).
    """
    if isinstance(network, keras.Sequential):
        network = getattr(network, "_functional", None)
    if network is None or not hasattr(network, "_run_through_graph") or not hasattr(
        network, "_nodes_by_depth"
    ):
        raise UnsupportedModelError(
            "implementation='structured' needs a functional or Sequential Keras model")
    return network


def is_walkable(network):
    """True when `functional_graph` can walk ``network``."""
    try:
        functional_graph(network)
        return True
    except UnsupportedModelError:
        return False


def run(graph, x, operation_fn):
    """Runs ``graph`` on ``x`` with every operation ``op`` replaced by ``operation_fn(op)``, a
    callable taking the operation's arguments; returns the (first) output."""
    out = graph._run_through_graph(x, operation_fn=operation_fn)  # noqa: SLF001
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out


def inference_kwargs(op, kwargs):
    """``kwargs`` with ``training=False`` when ``op`` takes a training argument (inference mode)."""
    if "training" in getattr(op, "_call_context_args", {}):
        kwargs["training"] = False
    return kwargs


def nodes(graph):
    """The graph's nodes, inputs first (deepest first)."""
    by_depth = graph._nodes_by_depth  # noqa: SLF001
    for depth in sorted(by_depth, reverse=True):
        yield from by_depth[depth]


def consumers(graph):
    """{id(tensor): [operations that take it as an input]} over the graph's nodes."""
    out = {}
    for node in nodes(graph):
        for t in node.input_tensors:
            out.setdefault(id(t), []).append(node.operation)
    return out


def layers(model, recursive=False):
    """The layers inside ``model`` (nested models' layers too when ``recursive``)."""
    return model._flatten_layers(include_self=False, recursive=recursive)  # noqa: SLF001


def call_count(layer):
    """How many times ``layer`` is called in the graphs it belongs to."""
    return len(layer._inbound_nodes)  # noqa: SLF001


# -- layers --------------------------------------------------------------------------------------


def is_linear(activation):
    """True for a Dense / Conv2D without an activation."""
    return activation is None or activation is keras.activations.linear


def linear_part(layer, a):
    """Dense / Conv2D output before the activation (the layer's own ops)."""
    dense = isinstance(layer, keras.layers.Dense)
    z = tf.matmul(a, layer.kernel) if dense else layer.convolution_op(a, layer.kernel)
    if layer.use_bias:
        z = z + layer.bias
    return z


def layer_rule(layer):
    """Which rule computes ``layer``'s contribution: DENSE, CONV, BATCHNORM or FALLBACK."""
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        return FALLBACK
    if type(layer) is keras.layers.Dense and len(layer.input.shape) == 2:
        return DENSE
    if (type(layer) is keras.layers.Conv2D and layer.data_format == "channels_last"
            and layer.groups == 1 and layer.padding in ("same", "valid")):
        return CONV
    if (type(layer) is keras.layers.BatchNormalization and layer.axis in (-1, len(layer.input.shape) - 1)
            and not getattr(layer, "renorm", False)):
        return BATCHNORM
    return FALLBACK


def weighted_layers(network):
    """[(layer, rule)] for every layer with trainable weights, in graph order.

    Raises:
      UnsupportedModelError: the model has no functional graph, or a layer with weights is called
        more than once (shared weights).
    """
    graph = functional_graph(network)
    out, seen = [], set()
    for node in nodes(graph):
        op = node.operation
        if op is None or node.is_input or not getattr(op, "trainable_weights", None):
            continue
        if id(op) in seen:
            raise UnsupportedModelError(
                f"layer {op.name!r} is called more than once (shared weights); use "
                "implementation='jacobian'")
        seen.add(id(op))
        out.append((op, layer_rule(op)))
    return out


def layer_shapes(network):
    """[(layer, rule, per-example input shape, per-example tap shape, number of weights)]."""
    out = []
    for layer, rule in weighted_layers(network):
        n = sum(math.prod(v.shape) for v in layer.trainable_variables)
        out.append((layer, rule, tuple(layer.input.shape[1:]), tuple(layer.output.shape[1:]), n))
    return out
