"""Kernel blocks from per-example Jacobians ("jacobian").

`jacobian_block` takes a `tf_ntk.functional.FunctionalModel` ``f``, its weights ``params`` and two
input blocks, and returns the kernel block of the logits ``logits`` (a list of L indices):

  * ``kind="full"``: (B1, B2, L, L), entry [i, j, a, b] = ∇θ f_{logits[a]}(x1_i) · ∇θ f_{logits[b]}(x2_j);
  * ``kind="diagonal"``: (B1, B2, L), entry [i, j, a] = ∇θ f_{logits[a]}(x1_i) · ∇θ f_{logits[a]}(x2_j);
  * ``kind="trace"``: (B1, B2), entry [i, j] = Σ_a ∇θ f_{logits[a]}(x1_i) · ∇θ f_{logits[a]}(x2_j).

All the implementations (`tf_ntk.ntk.structured`, `tf_ntk.ntk.ntvp`) follow these conventions.

``x2=None`` means x2 = x1 (the work for x1 is shared).
"""

import tensorflow as tf


def column_gradients(f, params, xs, cs):
    """∇θ f_{cs[t]}(xs[t]) for every t, vectorized over t: a list, one per weight tensor of
    ``params``, of (T, *shape) tensors. ``xs`` (T, ...) inputs, ``cs`` (T,) int32 logit indices; a
    weight the logit does not depend on gets zeros. The one per-example gradient of the package."""

    def one(args):
        xi, c = args
        with tf.GradientTape() as tape:
            tape.watch(params)
            out = tf.gather(f(params, xi[None])[0], c)
        return tape.gradient(out, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return tf.vectorized_map(one, (xs, cs))


def per_example_jacobians(f, params, x, logits):
    """Per-example, per-logit gradients, vectorized over (example, logit) pairs.

    Returns:
      A list, one per weight tensor, of (B, L, n_k) tensors: the flattened gradient of logit
      ``logits[a]`` of example i with respect to weight k.
    """
    logits = tf.constant(list(logits), tf.int32)
    num_logits = logits.shape[0]
    batch = tf.shape(x)[0]
    xs = tf.repeat(x, num_logits, axis=0)
    cs = tf.tile(logits, [batch])
    grads = column_gradients(f, params, xs, cs)
    return [tf.reshape(g, [batch, num_logits, -1]) for g in grads]


def contract(j1, j2, kind):
    """Σ_k J1_k J2_kᵀ for lists of (B1, L, n_k) and (B2, L, n_k): (B1, B2, L, L), (B1, B2, L) or,
    for the trace, (B1, B2), the sum over the logits."""
    out = None
    for a, b in zip(j1, j2):
        # With x2 = x1 (b is a), one copy of the Jacobian serves both sides.
        if kind != "full":
            # (L, B1, n) @ (L, n, B2) -> (L, B1, B2)
            at = tf.transpose(a, [1, 0, 2])
            term = tf.matmul(at, at if b is a else tf.transpose(b, [1, 0, 2]), transpose_b=True)
        else:
            b1, num_logits = tf.shape(a)[0], tf.shape(a)[1]
            b2 = tf.shape(b)[0]
            af = tf.reshape(a, [b1 * num_logits, -1])
            flat = tf.matmul(af, af if b is a else tf.reshape(b, [b2 * num_logits, -1]),
                             transpose_b=True)
            term = tf.reshape(flat, [b1, num_logits, b2, num_logits])
        out = term if out is None else out + term
    if kind == "trace":
        # Summed over the logits once, after the weights (one (L·n)-long matmul per example pair
        # runs ~3x slower than L batched n-long ones on a 2-core CPU).
        return tf.reduce_sum(out, 0)
    if kind == "diagonal":
        return tf.transpose(out, [1, 2, 0])
    return tf.transpose(out, [0, 2, 1, 3])


def jacobian_block(f, params, x1, x2, logits, kind):
    """The kernel block by jacobian contraction: per-example Jacobians, then their inner products."""
    j1 = per_example_jacobians(f, params, x1, logits)
    j2 = j1 if x2 is None else per_example_jacobians(f, params, x2, logits)
    return contract(j1, j2, kind)
