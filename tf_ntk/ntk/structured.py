"""Kernel blocks from per-layer structured rules (neural-tangents' "structured derivatives").

One forward pass through the model's functional graph records, for every layer with trainable weights,
its input a and the tensor z at its output (before the activation for Dense and Conv2D). One backward
pass per logit (vectorized over logits) gives every example's cotangent δ = ∂f_c/∂z: with
BatchNormalization in inference mode the examples are independent, so the gradient of Σ_i f_c(x_i)
with respect to z holds each example's own cotangent. The kernel is then a sum over layers:

  * Dense (2-D input): kernel W contributes (a_i·a_j)(δ_i^c·δ_j^d), the bias δ_i^c·δ_j^d; no
    per-example weight gradient is ever formed.
  * Conv2D: per-example kernel gradients as one einsum of input patches and output cotangents, or the
    patch-Gram form Σ_{s,t}(p_is·p_jt)(δ_is^c·δ_jt^d), whichever is cheaper for the layer's shapes.
  * BatchNormalization (channels last): scale from Σ_s x̂_is δ_is, offset from Σ_s δ_is.
  * Any other layer with trainable weights: per-example gradients of its own weights only, as
    vectorized vector-Jacobian products of that layer alone.

Block shapes and conventions are those of `tf_ntk.ntk.jacobian`. For the trace kernel every rule
contracts over the logits before forming anything (B1, B2): a Dense layer contributes
(a_i·a_j + 1) Σ_c δ_i^c·δ_j^c, one matmul of the cotangents with the logits joined to the features.
"""

import typing

import keras
import tensorflow as tf

from tf_ntk.ntk import keras_graph


def _param_index(network):
    return {id(v): k for k, v in enumerate(network.trainable_variables)}


class _Recorder:
    """Runs the graph, recording each weighted layer's input and its output tensor z (pre-activation)."""

    def __init__(self, rules):
        self.rules = {id(layer): rule for layer, rule in rules}
        self.inputs = {}
        self.taps = {}

    def wrap(self, op):
        rule = self.rules.get(id(op))

        def call(*args, **kwargs):
            kwargs = keras_graph.inference_kwargs(op, kwargs)
            if rule is None:
                return op(*args, **kwargs)
            extra = {k for k, v in kwargs.items() if v is not None and k != "training"}
            if len(args) != 1 or not tf.is_tensor(args[0]) or extra:
                raise keras_graph.UnsupportedModelError(
                    f"layer {op.name!r} takes several inputs; use implementation='jacobian'")
            a = args[0]
            self.inputs[id(op)] = a
            if (rule in (keras_graph.DENSE, keras_graph.CONV)
                    and not keras_graph.is_linear(op.activation)):
                pre = keras_graph.linear_part(op, a)
                self.taps[id(op)] = pre
                return op.activation(pre)
            out = op(a, **kwargs)
            self.taps[id(op)] = out
            return out

        return call


def record(f, params, x, logits, rules):
    """Forward pass with taps and the per-logit cotangents.

    Returns:
      (inputs, deltas): dicts keyed by id(layer): the layer input (B, ...) and the cotangents at its
      tap (L, B, ...) for the logits ``logits``.
    """
    graph = keras_graph.functional_graph(f.network)
    rec = _Recorder(rules)
    logits_t = tf.constant(list(logits), tf.int32)
    x = tf.cast(x, f.dtype)
    with tf.GradientTape(persistent=len(logits) > 1) as tape:
        # Eager tapes record only what depends on a watched tensor: watch the inputs.
        tape.watch(x)
        with keras.StatelessScope(state_mapping=f.state_mapping(params)):
            out = keras_graph.run(graph, x, rec.wrap)
        total = tf.reduce_sum(tf.gather(out, logits_t, axis=1), axis=0)  # (L,)
    keys = list(rec.taps)
    taps = [rec.taps[k] for k in keys]
    if len(logits) == 1:
        grads = tape.gradient(total, taps, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads = [g[None] for g in grads]
    else:
        grads = tape.jacobian(total, taps, unconnected_gradients=tf.UnconnectedGradients.ZERO,
                              experimental_use_pfor=True)
        del tape
    return rec.inputs, dict(zip(keys, grads))


# Layer contributions are summed in a working layout, transposed once at the end:
# (L, B1, B2) for diagonal blocks and (B1, L, B2, L) for full ones.


def _gram(u1, u2, kind):
    """Inner products of per-logit features u1 (L, B1, n), u2 (L, B2, n), in the working layout;
    for the trace, summed over the logits (Σ_c u1_c u2_cᵀ) before anything (B1, B2) is formed."""
    if kind == "trace":
        return _logit_sum_gram(u1, u2)
    if kind == "diagonal":
        return tf.matmul(u1, u2, transpose_b=True)
    num_logits, b1 = tf.shape(u1)[0], tf.shape(u1)[1]
    b2 = tf.shape(u2)[1]
    flat = tf.matmul(tf.reshape(tf.transpose(u1, [1, 0, 2]), [b1 * num_logits, -1]),
                     tf.reshape(tf.transpose(u2, [1, 0, 2]), [b2 * num_logits, -1]), transpose_b=True)
    return tf.reshape(flat, [b1, num_logits, b2, num_logits])


def _logit_sum_gram(u1, u2):
    """Σ_c u1_c u2_cᵀ (B1, B2) of u1 (L, B1, n), u2 (L, B2, n), the logits contracted with the
    features.

    Two forms, by shape: per-logit products summed at once (one batched matmul and a sum over L;
    its (L, B1, B2) products are no larger than the features when B1·B2 <= (B1 + B2)·n), or, for
    larger blocks, ONE (B1, L·n) x (L·n, B2) matmul of the features with the logits joined (no
    per-logit (B1, B2) product). On a 2-core CPU (TF 2.21) the long-K single matmul is ~3x slower
    than the batched one at B = 128, n = 2048 (it parallelises over the small output only).
    """
    num_logits, n = u1.shape[0], u1.shape[-1]
    if num_logits == 1:
        return tf.matmul(u1[0], u2[0], transpose_b=True)
    b1, b2 = u1.shape[1], u2.shape[1]
    if b1 is not None and b2 is not None and b1 * b2 <= (b1 + b2) * n:
        return tf.reduce_sum(tf.matmul(u1, u2, transpose_b=True), 0)
    flat = lambda u: tf.reshape(tf.transpose(u, [1, 0, 2]), [-1, num_logits * n])  # noqa: E731
    v1 = flat(u1)
    return tf.matmul(v1, v1 if u2 is u1 else flat(u2), transpose_b=True)


def _expand(gram, kind):
    """A (B1, B2) example Gram matrix broadcast against the working layout."""
    if kind == "trace":
        return gram
    return gram[None] if kind == "diagonal" else gram[:, None, :, None]


def _from_working_layout(kernel, kind):
    if kind == "trace":
        return kernel
    return tf.transpose(kernel, [1, 2, 0] if kind == "diagonal" else [0, 2, 1, 3])


def _dense(layer, a1, d1, a2, d2, kind):
    """(a_i·a_j + 1)(δ_i·δ_j) for kernel and bias; for the trace, (a_i·a_j + 1) Σ_c δ_i^c·δ_j^c."""
    dgram = _gram(d1, d2, kind)
    agram = tf.matmul(a1, a2, transpose_b=True)
    if layer.use_bias:
        agram = agram + 1.0
    return _expand(agram, kind) * dgram


def _patches(layer, a):
    """(B, S, kh·kw·Cin) input patches in the kernel's (kh, kw, Cin) order, S = output positions."""
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    p = tf.image.extract_patches(a, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1],
                                 rates=[1, dh, dw, 1], padding=layer.padding.upper())
    return tf.reshape(p, [tf.shape(a)[0], -1, kh * kw * a.shape[-1]])


def conv_uses_patch_gram(num_positions, patch_size, channels, num_logits, b1, b2, kind):
    """True when the patch-Gram form is cheaper (in multiply-adds) than per-example gradients."""
    pairs = num_logits**2 if kind == "full" else num_logits
    per_example = (b1 + b2) * num_logits * num_positions * patch_size * channels + (
        b1 * b2 * pairs * patch_size * channels)
    patch_gram = b1 * b2 * num_positions**2 * (patch_size + pairs * channels)
    return patch_gram < per_example


def _conv(layer, a1, d1, a2, d2, kind):
    p1 = _patches(layer, a1)
    p2 = p1 if a2 is None else _patches(layer, a2)
    num_logits = d1.shape[0]
    cout = d1.shape[-1]
    d1 = tf.reshape(d1, [num_logits, tf.shape(d1)[1], -1, cout])  # (L, B, S, Cout)
    d2 = tf.reshape(d2, [num_logits, tf.shape(d2)[1], -1, cout])
    s, k = p1.shape[1], p1.shape[2]
    out = 0.0
    if layer.use_bias:
        out = _gram(tf.reduce_sum(d1, 2), tf.reduce_sum(d2, 2), kind)
    if conv_uses_patch_gram(s, k, cout, num_logits, p1.shape[0], p2.shape[0], kind):
        pgram = tf.einsum("isk,jtk->ijst", p1, p2)
        if kind == "trace":  # the logits join the channels: Σ_{s,t} P_ijst Σ_{c,n} δ_isn^c δ_jtn^c
            merged = lambda d: tf.reshape(  # noqa: E731
                tf.transpose(d, [1, 2, 0, 3]), [tf.shape(d)[1], s, num_logits * cout])
            return out + tf.einsum("ijst,isn,jtn->ij", pgram, merged(d1), merged(d2))
        if kind == "diagonal":
            terms = [tf.einsum("ijst,isn,jtn->ij", pgram, d1[c], d2[c]) for c in range(num_logits)]
            return out + tf.stack(terms, axis=0)
        rows = [tf.einsum("ijst,isn,djtn->ijd", pgram, d1[c], d2) for c in range(num_logits)]
        return out + tf.stack(rows, axis=1)
    g1 = tf.einsum("bsk,lbsn->lbkn", p1, d1)
    g2 = g1 if a2 is None else tf.einsum("bsk,lbsn->lbkn", p2, d2)
    flat = lambda g: tf.reshape(g, [num_logits, tf.shape(g)[1], k * cout])  # noqa: E731
    return out + _gram(flat(g1), flat(g2), kind)


def _batchnorm(layer, values, a1, d1, a2, d2, kind):
    mean = values[id(layer.moving_mean)]
    inv = tf.math.rsqrt(values[id(layer.moving_variance)] + layer.epsilon)
    num_logits = d1.shape[0]
    channels = d1.shape[-1]

    def features(a, d):
        d = tf.reshape(d, [num_logits, tf.shape(d)[1], -1, channels])  # (L, B, S, C)
        parts = []
        if layer.scale:
            xhat = tf.reshape((a - mean) * inv, [1, tf.shape(a)[0], -1, channels])
            parts.append(tf.reduce_sum(xhat * d, 2))
        if layer.center:
            parts.append(tf.reduce_sum(d, 2))
        return tf.concat(parts, axis=-1)  # (L, B, n)

    u1 = features(a1, d1)
    u2 = u1 if a2 is None else features(a2, d2)
    return _gram(u1, u2, kind)


def _fallback_gradients(layer, f, params, index, a, d):
    """Per-example gradients of ``layer``'s own weights (vectorized VJPs of the layer alone).

    Returns:
      [(k, g)]: for each of the layer's weights, its index k in ``params`` and its per-example,
      per-logit gradients g of shape (L, B, *weight shape).
    """
    own = [index[id(v)] for v in layer.trainable_variables]
    mapping = f.state_mapping(params)
    num_logits, batch = d.shape[0], tf.shape(d)[1]
    weights = [mapping[k][1] for k in own]

    def one(args):
        ai, di = args
        with tf.GradientTape() as tape:
            tape.watch(weights)
            local = [(mapping[k][0], w) for k, w in zip(own, weights)]
            with keras.StatelessScope(state_mapping=mapping + local):
                out = layer(ai[None], training=False)
            y = tf.reduce_sum(out * di[None])
        return tape.gradient(y, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    ai = tf.tile(a, [num_logits] + [1] * (len(a.shape) - 1))  # (L·B, ...) logit-major
    di = tf.reshape(d, [-1] + d.shape[2:].as_list())
    g = tf.vectorized_map(one, (ai, di))
    return [(k, tf.reshape(t, tf.concat([[num_logits, batch], tf.shape(t)[1:]], 0)))
            for k, t in zip(own, g)]


def _fallback(layer, ctx, a1, d1, a2, d2, kind):
    """Per-example gradients of this layer's own weights, then their inner products."""

    def features(a, d):
        grads = _fallback_gradients(layer, ctx.f, ctx.params, ctx.index, a, d)
        num_logits, batch = d.shape[0], tf.shape(d)[1]
        return tf.concat([tf.reshape(g, [num_logits, batch, -1]) for _, g in grads], axis=-1)

    u1 = features(a1, d1)
    u2 = u1 if a2 is None else features(a2, d2)
    return _gram(u1, u2, kind)


class _Context(typing.NamedTuple):
    """What the layer rules need besides the layer's inputs and cotangents."""

    f: object  # the FunctionalModel
    params: list  # its weights
    index: dict  # type: ignore[assignment]  # id(variable) -> index in params (shadows tuple.index)
    values: dict  # id(variable) -> value (weights and BN statistics)


# A layer's contribution to the kernel block, by `keras_graph.layer_rule`:
# rule(layer, ctx, a1, d1, a2, d2, kind), with a2 None when x2 is x1 (then d2 is d1).
KERNEL_RULES = {
    keras_graph.DENSE: lambda layer, ctx, a1, d1, a2, d2, kind: _dense(
        layer, a1, d1, a1 if a2 is None else a2, d2, kind),
    keras_graph.CONV: lambda layer, ctx, a1, d1, a2, d2, kind: _conv(layer, a1, d1, a2, d2, kind),
    keras_graph.BATCHNORM: lambda layer, ctx, a1, d1, a2, d2, kind: _batchnorm(
        layer, ctx.values, a1, d1, a2, d2, kind),
    keras_graph.FALLBACK: _fallback,
}


def per_example_gradients(f, params, x, logits):
    """∇θ f_c(x_i) for every logit c in ``logits`` and example i, from one forward pass, one
    backward pass per logit (vectorized) and each layer's rule.

    Returns:
      A list, one per weight tensor in ``params`` order, of (L, B, *weight shape) tensors.

    Raises:
      keras_graph.UnsupportedModelError: the model cannot be walked (see
        `keras_graph.weighted_layers`).
    """
    rules = keras_graph.weighted_layers(f.network)
    index = _param_index(f.network)
    values = {id(v): value for v, value in f.state_mapping(params)}
    inputs, deltas = record(f, params, x, logits, rules)
    num_logits = len(logits)
    out = [None] * len(params)
    for layer, rule in rules:
        a, d = inputs[id(layer)], deltas[id(layer)]
        batch = tf.shape(a)[0]
        if rule == keras_graph.DENSE:
            out[index[id(layer.kernel)]] = tf.einsum("bi,lbo->lbio", a, d)
            if layer.use_bias:
                out[index[id(layer.bias)]] = d
        elif rule == keras_graph.CONV:
            cout = d.shape[-1]
            d = tf.reshape(d, [num_logits, batch, -1, cout])  # (L, B, S, Cout)
            g = tf.einsum("bsk,lbsn->lbkn", _patches(layer, a), d)
            out[index[id(layer.kernel)]] = tf.reshape(g, [num_logits, batch] + list(layer.kernel.shape))
            if layer.use_bias:
                out[index[id(layer.bias)]] = tf.reduce_sum(d, 2)
        elif rule == keras_graph.BATCHNORM:
            channels = d.shape[-1]
            d = tf.reshape(d, [num_logits, batch, -1, channels])
            if layer.scale:
                inv = tf.math.rsqrt(values[id(layer.moving_variance)] + layer.epsilon)
                xhat = tf.reshape((a - values[id(layer.moving_mean)]) * inv, [1, batch, -1, channels])
                out[index[id(layer.gamma)]] = tf.reduce_sum(xhat * d, 2)
            if layer.center:
                out[index[id(layer.beta)]] = tf.reduce_sum(d, 2)
        else:
            for k, g in _fallback_gradients(layer, f, params, index, a, d):
                out[k] = g
    return out


def structured_block(f, params, x1, x2, logits, kind):
    """The kernel block as a sum of per-layer structured contributions (`KERNEL_RULES`).

    ``kind``: "full" (B1, B2, L, L), "diagonal" (B1, B2, L) or "trace" (B1, B2), the sum over the
    L logits, contracted over the logits inside every layer's rule.
    """
    rules = keras_graph.weighted_layers(f.network)
    ctx = _Context(f, params, _param_index(f.network),
                   {id(v): value for v, value in f.state_mapping(params)})
    in1, del1 = record(f, params, x1, logits, rules)
    in2, del2 = (in1, del1) if x2 is None else record(f, params, x2, logits, rules)
    total = None
    for layer, rule in rules:
        key = id(layer)
        a2 = None if x2 is None else in2[key]
        term = KERNEL_RULES[rule](layer, ctx, in1[key], del1[key], a2, del2[key], kind)
        total = term if total is None else total + term
    if total is None:
        raise keras_graph.UnsupportedModelError("the model has no trainable weights")
    return _from_working_layout(total, kind)
