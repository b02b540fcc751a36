"""Kernel blocks from per-example Jacobians ("jacobian") and from NTK-vector products ("ntvp").

Both take a `tf_ntk.functional.FunctionalModel` ``f``, its weights ``params`` and two input blocks, and
return the kernel block of the logits ``logits`` (a list of L indices):

  * ``diagonal=False``: (B1, B2, L, L), entry [i, j, a, b] = ∇θ f_{logits[a]}(x1_i) · ∇θ f_{logits[b]}(x2_j);
  * ``diagonal=True``:  (B1, B2, L), entry [i, j, a] = ∇θ f_{logits[a]}(x1_i) · ∇θ f_{logits[a]}(x2_j).

``x2=None`` means x2 = x1 (the work for x1 is shared).
"""

import tensorflow as tf


def per_example_jacobians(f, params, x, logits):
    """Per-example, per-logit gradients, vectorized over (example, logit) pairs.

    Returns:
      A list, one per weight tensor, of (B, L, n_k) tensors: the flattened gradient of logit
      ``logits[a]`` of example i with respect to weight k.
    """
    logits = tf.constant(list(logits), tf.int32)
    num_logits = logits.shape[0]
    batch = tf.shape(x)[0]

    def one(args):
        xi, c = args
        with tf.GradientTape() as tape:
            tape.watch(params)
            out = tf.gather(f(params, xi[None])[0], c)
        return tape.gradient(out, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    xs = tf.repeat(x, num_logits, axis=0)
    cs = tf.tile(logits, [batch])
    grads = tf.vectorized_map(one, (xs, cs))
    return [tf.reshape(g, [batch, num_logits, -1]) for g in grads]


def contract(j1, j2, diagonal):
    """Σ_k J1_k J2_kᵀ for lists of (B1, L, n_k) and (B2, L, n_k): (B1, B2, L, L) or (B1, B2, L)."""
    out = None
    for a, b in zip(j1, j2):
        if diagonal:
            # (L, B1, n) @ (L, n, B2) -> (L, B1, B2)
            term = tf.matmul(tf.transpose(a, [1, 0, 2]), tf.transpose(b, [1, 2, 0]))
        else:
            b1, num_logits = tf.shape(a)[0], tf.shape(a)[1]
            b2 = tf.shape(b)[0]
            flat = tf.matmul(tf.reshape(a, [b1 * num_logits, -1]), tf.reshape(b, [b2 * num_logits, -1]),
                             transpose_b=True)
            term = tf.reshape(flat, [b1, num_logits, b2, num_logits])
        out = term if out is None else out + term
    if diagonal:
        return tf.transpose(out, [1, 2, 0])
    return tf.transpose(out, [0, 2, 1, 3])


def jacobian_block(f, params, x1, x2, logits, diagonal):
    """The kernel block by jacobian contraction: per-example Jacobians, then their inner products."""
    j1 = per_example_jacobians(f, params, x1, logits)
    j2 = j1 if x2 is None else per_example_jacobians(f, params, x2, logits)
    return contract(j1, j2, diagonal)


def ntvp_block(f, params, x1, x2, logits, diagonal, chunk=None):
    """The kernel block from NTK-vector products, never holding more than ``chunk`` gradients.

    Column (j, b) of the kernel is J1 (J2ᵀ e_{j,b}) = J1 ∇θ f_b(x2_j): one reverse-mode pass (the
    gradient of one logit of one example) and one forward-mode pass over the whole x1 block. The
    columns are computed ``chunk`` at a time (default: all B2·L at once).
    """
    x2 = x1 if x2 is None else x2
    logits_t = tf.constant(list(logits), tf.int32)
    num_logits = logits_t.shape[0]
    b1 = tf.shape(x1)[0]
    b2 = x2.shape[0]
    total = b2 * num_logits
    chunk = total if chunk is None else max(1, min(int(chunk), total))

    def column(args):
        xj, c = args
        with tf.GradientTape() as tape:
            tape.watch(params)
            out = tf.gather(f(params, xj[None])[0], c)
        tangent = tape.gradient(out, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        with tf.autodiff.ForwardAccumulator(params, tangent) as acc:
            y1 = f(params, x1)
        jvp = acc.jvp(y1, unconnected_gradients=tf.UnconnectedGradients.ZERO)  # (B1, O)
        if diagonal:
            return tf.gather(jvp, c, axis=1)  # (B1,)
        return tf.gather(jvp, logits_t, axis=1)  # (B1, L)

    xs = tf.repeat(x2, num_logits, axis=0)
    cs = tf.tile(logits_t, [b2])
    cols = []
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        cols.append(tf.vectorized_map(column, (xs[start:stop], cs[start:stop])))
    cols = tf.concat(cols, axis=0)  # (B2·L, B1[, L]) indexed by (j, b)
    if diagonal:
        return tf.transpose(tf.reshape(cols, [b2, num_logits, b1]), [2, 0, 1])
    # cols[(j, b), i, a] -> K[i, j, a, b]
    return tf.transpose(tf.reshape(cols, [b2, num_logits, b1, num_logits]), [2, 0, 3, 1])
