"""Kernel blocks from NTK-vector products ("ntvp"): column (j, b) of the kernel is J1 (J2ᵀ e_{j,b}).

For each column, the tangent t = J2ᵀ e_{j,b} = ∇θ f_b(x2_j) comes from one reverse-mode pass and
J1 t from one forward-mode pass over the whole x1 block. The columns are taken ``chunk`` at a time,
so J is never held beyond one chunk's tangents.

The forward-mode pass is batched over the chunk's T tangents by `batched_jvp`, a walk through the
model's functional graph. TensorFlow's pfor cannot vectorise a convolution whose filter differs per
tangent (it falls back to a loop, ~100x slower), so each layer with weights gets a batched rule:

  * Dense (2-D input): dz_t = da_t W + a dW_t + db_t, the tangents folded into the matmul's rows
    (da) and columns (dW);
  * Conv2D: dz_t = conv(da_t, W) + conv(a, dW_t) + db_t, the first with the tangents folded into the
    batch, the second as ONE convolution whose filters are the T tangent filters side by side along
    the output channels;
  * BatchNormalization (inference): dy_t = da_t γ/σ + x̂ dγ_t + dβ_t; after a Conv2D whose output
    only it consumes, folded into the convolutions' filters and bias (`fold_batchnorm`).

Element-wise activations multiply the tangents by their derivative (ReLU: a mask); linear layers
without weights (reshapes, average pooling, padding, Add) act on the tangents directly. Other ops
without weights (max pooling, Concatenate, softmax, plain Keras ops) take their JVP from
``tf.autodiff.ForwardAccumulator`` on their inputs tiled T times (the tangents are the batch). Any
other layer with weights (and nested models) gets a ForwardAccumulator vectorized over the tangents;
models the walker cannot enter (subclassed models) get one over the whole model.

The tangents of a chunk of whole examples come from one structured backward pass
(`tf_ntk.ntk.structured.per_example_gradients`). With x2 = x1, the columns go in `SYMMETRIC_GROUPS`
groups of examples, each against the rows up to its last example (the rest is mirrored): (G + 1) / 2G
of the forward-mode work.

Block shapes and conventions are those of `tf_ntk.ntk.jacobian`: (B1, B2, L, L), (B1, B2, L) or,
for the trace, (B1, B2).
"""

import keras
import tensorflow as tf

from tf_ntk.ntk import jacobian
from tf_ntk.ntk import keras_graph
from tf_ntk.ntk import structured

_ZERO = tf.UnconnectedGradients.ZERO

_L = keras.layers
# Layers without weights that act on each example linearly: the tangent is the layer applied to the
# tangents folded into the batch (inference mode: dropout is the identity).
_LINEAR = frozenset(getattr(_L, name) for name in (
    "Flatten", "Reshape", "Permute", "Identity", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianDropout", "GaussianNoise", "AlphaDropout",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "ZeroPadding1D", "ZeroPadding2D",
    "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D",
    "UpSampling3D") if hasattr(_L, name))
# Element-wise activations: the tangent is the derivative (one pass on the primal) times the tangent.
_ELEMENTWISE_LAYERS = frozenset(getattr(_L, name) for name in ("ReLU", "LeakyReLU", "ELU")
                                if hasattr(_L, name))
_ELEMENTWISE_ACTIVATIONS = frozenset(
    getattr(keras.activations, name) for name in (
        "relu", "relu6", "tanh", "sigmoid", "gelu", "elu", "selu", "softplus", "softsign", "silu",
        "swish", "leaky_relu", "hard_sigmoid", "hard_silu", "hard_swish", "mish", "exponential",
        "log_sigmoid", "celu", "hard_tanh", "tanh_shrink", "squareplus", "sparse_plus")
    if hasattr(keras.activations, name))


def _fold(t):
    """(T, B, ...) -> (T·B, ...), tangent-major."""
    if t.shape[2:].is_fully_defined():
        return tf.reshape(t, [-1] + t.shape[2:].as_list())
    return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))


def _unfold(t, num_tangents):
    """(T·B, ...) -> (T, B, ...)."""
    if t.shape[1:].is_fully_defined():
        return tf.reshape(t, [num_tangents, -1] + t.shape[1:].as_list())
    return tf.reshape(t, tf.concat([[num_tangents, -1], tf.shape(t)[1:]], 0))


def _tile(t, num_tangents):
    """(B, ...) -> (T·B, ...): T copies, tangent-major (matching `_fold`)."""
    return tf.tile(t, [num_tangents] + [1] * (len(t.shape) - 1))


def _add(*terms):
    """The sum of the terms that are not None; None when all are."""
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


# -- BatchNormalization folded into the convolution before it --------------------------------------


def conv_then_batchnorm(graph):
    """{id(conv layer): BatchNormalization layer} for every Conv2D (no activation, called once)
    whose output feeds a BatchNormalization layer (called once, channels last) and nothing else."""
    consumers, outputs = keras_graph.consumers(graph), {id(t) for t in graph.outputs}
    out = {}
    for layer in keras_graph.layers(graph):
        if (keras_graph.layer_rule(layer) != keras_graph.CONV
                or not keras_graph.is_linear(layer.activation)
                or keras_graph.call_count(layer) != 1):
            continue
        users = consumers.get(id(layer.output), [])
        if (len(users) == 1 and id(layer.output) not in outputs
                and keras_graph.layer_rule(users[0]) == keras_graph.BATCHNORM
                and keras_graph.call_count(users[0]) == 1):
            out[id(layer)] = users[0]
    return out


def fold_batchnorm(kernel, dkernel, bias, dbias, inv, gamma, dgamma, mean, dbeta):
    """An inference-mode BatchNormalization folded into the Conv2D before it, on the tangent side.

    The pair computes y = s (conv(a, W) + b − μ) + β with s = γ/σ, σ = sqrt(var + ε). Its tangent
    along (da, dW, db, dγ, dβ) is

        dy = conv(da, W s) + conv(a, dW s + W dγ/σ) + db s + (b − μ) dγ/σ + dβ,

    so the BN's per-channel terms ride in the two convolutions (filters W s and dW s + W dγ/σ) and
    one per-tangent shift instead of extra passes over the (T, B, H, W, C) tangents. Channels are
    last everywhere; T is the number of tangents.

    Args:
      kernel: W, the conv filters (kh, kw, Cin, C).
      dkernel: dW, their tangents (T, kh, kw, Cin, C).
      bias: b (C,), or None for a conv without bias.
      dbias: db (T, C), or None for a conv without bias.
      inv: 1/σ (C,).
      gamma: γ (C,), or None for a BN without scale (then s = 1/σ and dγ is None).
      dgamma: dγ (T, C), or None.
      mean: μ, the moving mean (C,).
      dbeta: dβ (T, C), or None for a BN without center.

    Returns:
      (filters, dfilters, shift): W s (kh, kw, Cin, C) for conv(da, ·); dW s + W dγ/σ
      (T, kh, kw, Cin, C) for conv(a, ·); the shift db s + (b − μ) dγ/σ + dβ (T, C), or None when
      every term is absent.
    """
    scale = inv if gamma is None else inv * gamma
    terms = [None if dbias is None else dbias * scale]
    filters, dfilters = kernel * scale, dkernel * scale
    if gamma is not None:
        dg = dgamma * inv  # (T, C)
        dfilters = dfilters + kernel[None] * dg[:, None, None, None, :]
        terms.append(((0.0 if bias is None else bias) - mean) * dg)
    terms.append(dbeta)
    return filters, dfilters, _add(*terms)


class _BatchNormFolds:
    """The conv -> BN pairs of a graph (`conv_then_batchnorm`) and the BN output tangents that the
    conv rule computed for them (`fold_batchnorm`), held until the walk reaches the BN."""

    def __init__(self, graph):
        self.after = conv_then_batchnorm(graph)
        self.held = {}  # id(conv output) -> tangent of the BN output after it

    def batchnorm_after(self, conv):
        return self.after.get(id(conv))

    def hold(self, conv_output, tangent):
        self.held[id(conv_output)] = tangent

    def take(self, bn_input):
        """The held tangent of the BN applied to ``bn_input``, or None."""
        return self.held.pop(id(bn_input), None)


# -- the forward-mode walk -------------------------------------------------------------------------


class _Walk:
    """One forward-mode pass: the graph runs on the primal inputs and every value carries (T, B, ...)
    tangents along the T weight tangents.

    ``tangents`` holds the tangent of every graph value with one (keyed by id of the value); a value
    without an entry has a zero tangent (the inputs, and anything computed from them alone).
    """

    def __init__(self, f, params, weight_tangents):
        self.f = f
        self.params = params
        self.num_tangents = weight_tangents[0].shape[0]
        variables = f.network.trainable_variables
        self.weight_tangents = {id(v): t for v, t in zip(variables, weight_tangents)}
        self.values = {id(v): value for v, value in f.state_mapping(params)}
        self.tangents = {}
        self.graph_values = set()
        self.graph = keras_graph.functional_graph(f.network)
        self.folds = _BatchNormFolds(self.graph)

    def value(self, variable):
        return self.values[id(variable)]

    def weight_tangent(self, variable):
        """The (T, *shape) tangent of a weight; zeros for a weight that is not trainable."""
        t = self.weight_tangents.get(id(variable))
        if t is None:
            t = tf.zeros([self.num_tangents] + list(variable.shape), self.f.dtype)
        return t

    def is_value(self, v):
        return tf.is_tensor(v) and id(v) in self.graph_values

    def record(self, out, tangent):
        outs = tf.nest.flatten(out)
        tangents = [None] * len(outs) if tangent is None else tf.nest.flatten(tangent)
        for o, t in zip(outs, tangents):
            if tf.is_tensor(o):
                self.graph_values.add(id(o))
                if t is not None:
                    self.tangents[id(o)] = t

    def operation(self, op):
        """``op`` as the graph calls it: its output, its tangent recorded by the rule for ``op``."""

        def call(*args, **kwargs):
            c = _Call(self, op, args, keras_graph.inference_kwargs(op, kwargs))
            out, tangent = _apply_rule(self, c)
            self.record(out, tangent)
            return out

        return call

    def run(self, x):
        """(output (B, O), its tangents (T, B, O)) on inputs ``x``."""
        self.graph_values.add(id(x))
        with keras.StatelessScope(state_mapping=self.f.state_mapping(self.params)):
            out = keras_graph.run(self.graph, x, self.operation)
        tangent = self.tangents.get(id(out))
        if tangent is None:
            return out, tf.zeros([self.num_tangents] + tf.unstack(tf.shape(out)), out.dtype)
        return out, tangent


class _Call:
    """One operation call in the walk: the op, its arguments and their tangents."""

    def __init__(self, walk, op, args, kwargs, in_tangents=None):
        self.op, self.args, self.kwargs = op, args, kwargs
        self.flat = tf.nest.flatten((args, kwargs))
        if in_tangents is None:
            in_tangents = [walk.tangents.get(id(v)) if walk.is_value(v) else None for v in self.flat]
        self.in_tangents = in_tangents
        # The op's own weights that have tangents (trainable weights of the model).
        self.own = [v for v in getattr(op, "trainable_variables", ())
                    if id(v) in walk.weight_tangents]
        # One tensor input and no other tensor arguments: the batched rules' form.
        self.single = len(args) == 1 and tf.is_tensor(args[0]) and not {
            k for k, v in kwargs.items() if v is not None and k != "training"}

    @property
    def x(self):
        return self.args[0]

    @property
    def dx(self):
        return self.in_tangents[0]

    def primal(self):
        return self.op(*self.args, **self.kwargs)


# -- rules: (walk, call) -> (output, output tangent), or None when the rule does not apply ---------


def _dense(walk, c):
    if not c.single:
        return None
    layer, a, da, num = c.op, c.x, c.dx, walk.num_tangents
    z = keras_graph.linear_part(layer, a)
    dw = walk.weight_tangent(layer.kernel)  # (T, n, m)
    n, m = dw.shape[1], dw.shape[2]
    wide = tf.reshape(tf.transpose(dw, [1, 0, 2]), [n, num * m])
    dz = tf.transpose(tf.reshape(tf.matmul(a, wide), [-1, num, m]), [1, 0, 2])
    if da is not None:
        dz = dz + _unfold(tf.matmul(_fold(da), layer.kernel), num)
    if layer.use_bias:
        dz = dz + walk.weight_tangent(layer.bias)[:, None, :]
    return _activation(walk, layer, z, dz)


def _conv(walk, c):
    """dz_t = conv(da_t, W) + conv(a, dW_t) + db_t; with the BatchNormalization that alone consumes
    z folded in (`fold_batchnorm`), that BN's output tangent instead, held for its step."""
    if not c.single:
        return None
    layer, a, da, num = c.op, c.x, c.dx, walk.num_tangents
    z = keras_graph.linear_part(layer, a)
    kernel = walk.value(layer.kernel)
    dw = walk.weight_tangent(layer.kernel)  # (T, kh, kw, Cin, Cout)
    shift = walk.weight_tangent(layer.bias) if layer.use_bias else None  # (T, Cout)
    bn = walk.folds.batchnorm_after(layer)
    if bn is not None:
        kernel, dw, shift = fold_batchnorm(
            kernel, dw, walk.value(layer.bias) if layer.use_bias else None, shift,
            inv=tf.math.rsqrt(walk.value(bn.moving_variance) + bn.epsilon),
            gamma=walk.value(bn.gamma) if bn.scale else None,
            dgamma=walk.weight_tangent(bn.gamma) if bn.scale else None,
            mean=walk.value(bn.moving_mean),
            dbeta=walk.weight_tangent(bn.beta) if bn.center else None)
    # conv(a, dW_t) for every t: ONE convolution with the T tangent filters side by side along the
    # output channels (its per-tangent shift fused in as a bias), then (B, H, W, T, Cout)
    # -> (T, B, H, W, Cout).
    kh, kw, cin, cout = dw.shape[1:]
    wide = tf.reshape(tf.transpose(dw, [1, 2, 3, 0, 4]), [kh, kw, cin, num * cout])
    y = layer.convolution_op(a, wide)
    if shift is not None:
        y = tf.nn.bias_add(y, tf.reshape(shift, [num * cout]))
    dz = tf.transpose(tf.reshape(y, [-1, y.shape[1], y.shape[2], num, cout]), [3, 0, 1, 2, 4])
    if da is not None:
        dz = dz + _unfold(layer.convolution_op(_fold(da), kernel), num)
    if bn is not None:
        walk.folds.hold(z, dz)
        return z, None
    return _activation(walk, layer, z, dz)


def _batchnorm(walk, c):
    if not c.single:
        return None
    layer, a, da, num = c.op, c.x, c.dx, walk.num_tangents
    out = layer(a, training=False)
    inv = tf.math.rsqrt(walk.value(layer.moving_variance) + layer.epsilon)
    channels = a.shape[-1]
    per_tangent = [num] + [1] * (len(a.shape) - 1) + [channels]
    terms = []
    if da is not None:
        terms.append(da * (inv * walk.value(layer.gamma) if layer.scale else inv))
    if layer.scale:
        xhat = (a - walk.value(layer.moving_mean)) * inv
        terms.append(xhat * tf.reshape(walk.weight_tangent(layer.gamma), per_tangent))
    if layer.center:
        terms.append(tf.reshape(walk.weight_tangent(layer.beta), per_tangent))
    tangent = _add(*terms)
    if da is None and not layer.scale:
        tangent = tangent + tf.zeros_like(out)  # a bare dβ: broadcast to (T, B, ...)
    return out, tangent


def _vectorized(walk, c):
    """A layer with weights and no batched rule: its JVP vectorized over the tangents by pfor."""
    mapping = walk.f.state_mapping(walk.params)
    weights = [walk.value(v) for v in c.own]
    dweights = [walk.weight_tangents[id(v)] for v in c.own]
    inputs = [k for k, t in enumerate(c.in_tangents) if t is not None]
    dinputs = [c.in_tangents[k] for k in inputs]

    def one(tangents):
        dw, dx = tangents
        primals = weights + [c.flat[k] for k in inputs]
        with tf.autodiff.ForwardAccumulator(primals, list(dw) + list(dx)) as acc:
            local = list(zip(c.own, weights))
            with keras.StatelessScope(state_mapping=mapping + local):
                out = c.primal()
        return tf.nest.map_structure(lambda o: acc.jvp(o, unconnected_gradients=_ZERO), out)

    tangent = tf.vectorized_map(one, (dweights, dinputs))
    return c.primal(), tangent


def _tiled(walk, c):
    """An op without weights and without a rule: its inputs tiled T times, the tangents as the batch,
    through a ForwardAccumulator."""
    num = walk.num_tangents
    tiled = [_tile(v, num) if walk.is_value(v) else v for v in c.flat]
    primals = [tiled[k] for k, t in enumerate(c.in_tangents) if t is not None]
    tangents = [_fold(t) for t in c.in_tangents if t is not None]
    with tf.autodiff.ForwardAccumulator(primals, tangents) as acc:
        a, kw = tf.nest.pack_sequence_as((c.args, c.kwargs), tiled)
        out_tiled = c.op(*a, **kw)
    batch = tf.shape(c.flat[[k for k, v in enumerate(c.flat) if walk.is_value(v)][0]])[0]
    out = tf.nest.map_structure(lambda o: o[:batch], out_tiled)
    tangent = tf.nest.map_structure(
        lambda o: _unfold(acc.jvp(o, unconnected_gradients=_ZERO), num), out_tiled)
    return out, tangent


def _elementwise(fn, z, dz, kwargs=None):
    """An element-wise function: its derivative on the primal (B, ...) times the tangents."""
    if _is_plain_relu(fn):
        return fn(z, **(kwargs or {})), tf.where(z > 0, dz, tf.zeros([], dz.dtype))
    with tf.autodiff.ForwardAccumulator(z, tf.ones_like(z)) as acc:
        out = fn(z, **(kwargs or {}))
    return out, dz * acc.jvp(out, unconnected_gradients=_ZERO)


def _is_plain_relu(fn):
    if fn is keras.activations.relu:
        return True
    return type(fn) is _L.ReLU and fn.max_value is None and not fn.negative_slope and not fn.threshold


def _activation(walk, layer, z, dz):
    """A Dense / Conv2D layer's activation on its pre-activation z and tangents dz."""
    if keras_graph.is_linear(layer.activation):
        return z, dz
    if layer.activation in _ELEMENTWISE_ACTIVATIONS:
        return _elementwise(layer.activation, z, dz)
    walk.graph_values.add(id(z))
    return _tiled(walk, _Call(walk, layer.activation, (z,), {}, in_tangents=[dz]))


def _elementwise_layer(walk, c):
    return _elementwise(c.op, c.x, c.dx, c.kwargs) if c.single else None


def _activation_layer(walk, c):
    if c.single and c.op.activation in _ELEMENTWISE_ACTIVATIONS:
        return _elementwise(c.op, c.x, c.dx, c.kwargs)
    return None


def _linear(walk, c):
    if not c.single:
        return None
    return c.primal(), _unfold(c.op(_fold(c.dx), **c.kwargs), walk.num_tangents)


def _sum(walk, c):
    if len(c.args) != 1 or c.kwargs.keys() - {"training"}:
        return None
    return c.primal(), _add(*c.in_tangents)


# Layers with trainable weights, by `keras_graph.layer_rule`; the others, and calls that do not fit
# a rule, take `_vectorized`.
WEIGHTED_RULES = {
    keras_graph.DENSE: _dense,
    keras_graph.CONV: _conv,
    keras_graph.BATCHNORM: _batchnorm,
}
# Operations without trainable weights, by type; the others, and calls that do not fit a rule,
# take `_tiled`.
WEIGHTLESS_RULES = {
    **dict.fromkeys(_LINEAR, _linear),
    **dict.fromkeys(_ELEMENTWISE_LAYERS, _elementwise_layer),
    _L.Activation: _activation_layer,
    _L.Add: _sum,
}


def _apply_rule(walk, c):
    """(output, output tangent) of the call ``c``, by the rule for its operation."""
    folded = walk.folds.take(c.flat[0]) if c.flat else None
    if folded is not None:  # a BN after a conv: the conv rule computed its tangent
        return c.primal(), folded
    if not c.own and all(t is None for t in c.in_tangents):
        return c.primal(), None  # nothing here depends on the weights
    if c.own:
        rule, fallback = WEIGHTED_RULES.get(keras_graph.layer_rule(c.op)), _vectorized
    else:
        rule, fallback = WEIGHTLESS_RULES.get(type(c.op)), _tiled
    result = rule(walk, c) if rule is not None else None
    return fallback(walk, c) if result is None else result


def batched_jvp(f, params, x, weight_tangents):
    """Forward-mode products of the model's Jacobian with T weight tangents at once.

    Args:
      f: a `tf_ntk.functional.FunctionalModel`.
      params: the weights θ (one tensor per trainable weight).
      x: inputs (B, *input_shape).
      weight_tangents: one (T, *shape) tensor per trainable weight: T tangent directions in θ.

    Returns:
      (T, B, O): entry [t, i] = J(x_i) v_t, the directional derivative of the logits along tangent t.

    Raises:
      keras_graph.UnsupportedModelError: the model is not a functional or Sequential Keras model.
    """
    _, tangent = _Walk(f, params, weight_tangents).run(tf.cast(x, f.dtype))
    return tangent


def _example_tangents(f, params, xe, logits):
    """The tangents of the columns (j, b) of examples xe (E, ...), all L logits, j-major:
    a list of (E·L, *shape), one per weight.

    One forward pass and L vectorized backward passes give per-layer cotangents; each layer's
    structured rule turns them into per-example gradients (`tf_ntk.ntk.structured.per_example_gradients`).
    Models the rules cannot walk take a vectorized per-column gradient.
    """
    try:
        grads = structured.per_example_gradients(f, params, xe, logits)  # (L, E, *shape)
    except keras_graph.UnsupportedModelError:
        logits_t = tf.constant(list(logits), tf.int32)
        return jacobian.column_gradients(f, params, tf.repeat(xe, len(logits), axis=0),
                                tf.tile(logits_t, [tf.shape(xe)[0]]))
    return [tf.reshape(tf.transpose(g, [1, 0] + list(range(2, len(g.shape)))),
                       [-1] + g.shape[2:].as_list()) for g in grads]


def generic_jvp(f, params, x1, tangents):
    """(T, B1, O) by a ForwardAccumulator vectorized over the tangents (any Keras model)."""

    def one(tangent):
        with tf.autodiff.ForwardAccumulator(params, tangent) as acc:
            y1 = f(params, x1)
        return acc.jvp(y1, unconnected_gradients=_ZERO)

    return tf.vectorized_map(one, tangents)


# With x2 = x1, the columns are split into this many groups of examples; group g needs the rows of
# examples up to its last one (the rest is mirrored): (G + 1) / 2G of the forward-mode work.
SYMMETRIC_GROUPS = 8


def _columns(f, params, rows, x2, logits, diagonal, chunk, walkable):
    """The kernel columns (B2·L, R[, L]) of examples x2 (B2, ...) against the R ``rows``.

    Columns are indexed by (j, b) (example j of x2, logit b), j-major. They are taken ``chunk`` at a
    time in a loop (``tf.map_fn``), so that one chunk's tangents and forward-mode activations are
    live at once: whole examples (all L columns, their tangents from one structured backward pass)
    when ``chunk`` >= L, single columns otherwise.
    """
    num_logits = len(logits)
    logits_t = tf.constant(list(logits), tf.int32)
    per_example = chunk >= num_logits
    if per_example:
        units, unit = x2, num_logits  # a unit is an example: L columns
    else:
        units = (tf.repeat(x2, num_logits, axis=0), tf.tile(logits_t, [x2.shape[0]]))
        unit = 1  # a unit is one column (x2_j, logit b)
    total = x2.shape[0] * num_logits // unit
    num_chunks = -(-total // max(1, min(chunk // unit, total)))
    size = -(-total // num_chunks)  # units per chunk, as even as possible: the least padding
    if num_chunks * size > total:  # pad with copies of the last unit; cut below
        units = tf.nest.map_structure(
            lambda u: tf.concat([u, tf.repeat(u[-1:], num_chunks * size - total, axis=0)], 0), units)

    def one(chunk_units):
        if per_example:
            tangents = _example_tangents(f, params, chunk_units, logits)
            cs = tf.tile(logits_t, [size])
        else:
            xs, cs = chunk_units
            tangents = jacobian.column_gradients(f, params, xs, cs)
        jvp = (batched_jvp(f, params, rows, tangents) if walkable
               else generic_jvp(f, params, rows, tangents))  # (columns, R, O)
        if diagonal:
            return tf.gather(jvp, cs, axis=2, batch_dims=1)  # (columns, R)
        return tf.gather(jvp, logits_t, axis=2)  # (columns, R, L)

    columns = total * unit
    if num_chunks == 1:
        return one(units)[:columns]
    split = tf.nest.map_structure(
        lambda u: tf.reshape(u, [num_chunks, size] + u.shape[1:].as_list()), units)
    shape = [size * unit, rows.shape[0]] + ([] if diagonal else [num_logits])
    out = tf.map_fn(one, split, parallel_iterations=1,
                    fn_output_signature=tf.TensorSpec(shape, rows.dtype))
    return tf.reshape(out, [num_chunks * size * unit] + shape[1:])[:columns]


def ntvp_block(f, params, x1, x2, logits, kind, chunk=None):
    """The kernel block from NTK-vector products, holding at most ``chunk`` tangents at a time.

    Args:
      f, params: the `FunctionalModel` and its weights.
      x1, x2: input blocks (B1, ...) and (B2, ...); ``x2=None`` means x1 (column j is computed for
        rows i <= j, in `SYMMETRIC_GROUPS` groups of examples, and mirrored).
      logits: the L logit indices.
      kind: "full" (B1, B2, L, L), "diagonal" (B1, B2, L), the per-logit kernels, or "trace"
        (B1, B2), their sum (the per-logit columns summed over the logits).
      chunk: columns (j, b) per forward-mode pass (default: all B2·L).
    """
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    num_logits = len(logits)
    b1, b2 = x1.shape[0], x2.shape[0]
    diagonal = kind != "full"
    chunk = b2 * num_logits if chunk is None else max(1, int(chunk))
    walkable = keras_graph.is_walkable(f.network)
    if symmetric:
        groups = min(SYMMETRIC_GROUPS, b2)
        ends = [round((g + 1) * b2 / groups) for g in range(groups)]
        parts, start = [], 0
        for end in ends:
            cols = _columns(f, params, x1[:end], x2[start:end], logits, diagonal, chunk, walkable)
            if end < b1:
                cols = tf.pad(cols, [[0, 0], [0, b1 - end]] + [[0, 0]] * (len(cols.shape) - 2))
            parts.append(cols)
            start = end
        cols = tf.concat(parts, axis=0)
    else:
        cols = _columns(f, params, x1, x2, logits, diagonal, chunk, walkable)
    # cols: (B2·L, B1[, L]) indexed by (j, b)
    if kind == "trace":
        kernel = tf.transpose(tf.reduce_sum(tf.reshape(cols, [b2, num_logits, b1]), 1))
        axes = [1, 0]
    elif diagonal:
        kernel = tf.transpose(tf.reshape(cols, [b2, num_logits, b1]), [2, 0, 1])
        axes = [1, 0, 2]
    else:
        # cols[(j, b), i, a] -> K[i, j, a, b]
        kernel = tf.transpose(tf.reshape(cols, [b2, num_logits, b1, num_logits]), [2, 0, 3, 1])
        axes = [1, 0, 3, 2]
    if not symmetric:
        return kernel
    upper = tf.range(b1)[:, None] <= tf.range(b2)[None, :]
    upper = tf.reshape(upper, [b1, b2] + [1] * (len(kernel.shape) - 2))
    return tf.where(upper, kernel, tf.transpose(kernel, axes))
