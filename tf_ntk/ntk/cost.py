"""Cost and memory estimates of the kernel implementations, for block sizes and ``implementation="auto"``.

All counts are per kernel block of b1 x b2 examples with L logits: multiply-adds ("flops" below count
2 per multiply-add) and bytes of the largest simultaneously live tensors. They are estimates from the
model's layer shapes, good to a small factor, which is what choosing a block size and a method needs.
"""

import dataclasses
import math

import keras

from tf_ntk.ntk import keras_graph
from tf_ntk.ntk import ntvp
from tf_ntk.ntk import structured

# The constants below are rates relative to a 2048² float32 matmul (R multiply-adds per second,
# timed in the same interleaved rounds as each measured piece), measured by
# ``python -m bench.ntk_calibrate`` (bench/ntk_calibrate.py documents each measurement; results in
# bench/results/ntk_calibrate.json) on the project's 2-core x86-64 CPU with AVX-512 (TF 2.21,
# Keras 3.15, R ≈ 240 G multiply-adds/s), rounded from three runs that agreed within ±10%. The choice
# of ``auto`` they make is checked on bench/ntk.py's grid (bench/results/ntk.txt).

# Per-example gradients vectorized with pfor (the jacobian method; ntvp's tangents for models the
# rules cannot walk): 3 x forward multiply-adds per example and logit, at this fraction of R
# (measured 0.12-0.13 on the 3-conv CNN, 64 examples x 10 logits).
VECTORIZED_GRAD_EFFICIENCY = 0.125
# The structured rules' forward pass and L vectorized backward passes of cotangents
# (`structured.record`; `ModelStats.backward_macs` per logit): measured 0.83-0.86 of R on the
# 3072-2048-2048-10 MLP (large matmuls) and 0.17 on the CNN (convolutions' input gradients under
# pfor, BN, pooling); the conv value applies to models with any Conv2D.
BATCHED_PASS_EFFICIENCY = 0.85
CONV_BATCHED_PASS_EFFICIENCY = 0.17
# The generic forward mode (`ntvp.generic_jvp`: a ForwardAccumulator vectorized over tangents, for
# models the walker cannot enter): 2 x forward multiply-adds per tangent and example, measured
# 0.33-0.37 of R on the 64-256-256-10 MLP (40 tangents x 64 examples) and 0.19-0.23 on the CNN
# (20 tangents x 16 examples).
VECTORIZED_JVP_EFFICIENCY = 0.35
CONV_VECTORIZED_JVP_EFFICIENCY = 0.2
# ntvp's forward-mode pass batched over tangents by its graph walker (`ntvp.batched_jvp`, conv nets
# included): measured 0.35-0.39 of R on the CNN (20 tangents x 16 examples).
BATCHED_JVP_EFFICIENCY = 0.37
# ntvp takes its columns in chunks whose largest forward-mode activation (chunk x rows x the largest
# layer output) stays about this size: the CNN's tangents ran 2.2x faster per tangent in chunks of 20
# (20 MiB) than all 160 at once (bench/ntk.py on the same 2-core CPU, 32 MiB last-level cache).
NTVP_CHUNK_BYTES = 16 * 2**20
# The conv rule's einsums (patches x cotangents, or the patch Gram), `conv_rule_macs`: the CNN's
# structured block less its passes and less its Gram matmuls at R, against the einsums'
# multiply-adds; measured 0.22-0.24 of R for trace blocks and 0.15-0.16 for full ones (64 examples).
CONV_RULE_EFFICIENCY = 0.2
# Cost, in multiply-add equivalents, of every float of per-example gradients a method materialises
# (allocation, pfor's copies, reading it back): per-example gradients of a 3072-1024-1024-10 MLP
# (one multiply-add per weight), time x R per gradient float less the backward pass's own
# multiply-adds at VECTORIZED_GRAD_EFFICIENCY; measured 94-98 (0.4 ns per float). It makes the
# jacobian method memory-bound for large dense models.
GRADIENT_FLOAT_COST = 95
# Fixed cost of one block (dispatch of the compiled block function and its many small ops), in
# multiply-add equivalents: a whole kernel call on a 2-example, 8-unit MLP, time x R; measured
# 3.4-6.2e8 (1.5-2.5 ms) for the three implementations.
BLOCK_OVERHEAD = 4e8


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Per-example shapes of one layer with trainable weights."""

    rule: str
    input_size: int
    output_size: int
    num_params: int
    positions: int = 1  # conv: output positions S
    patch_size: int = 1  # conv: kh·kw·Cin
    channels: int = 1  # conv / BN: output channels


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """What the estimates need to know about a model, per example.

    Attributes:
      num_params: P.
      forward_macs: multiply-adds of one forward pass.
      backward_macs: multiply-adds of one backward pass of cotangents (no weight gradients) down to
        the output of the first layer with weights (none below it is needed): the forward pass less
        that layer's multiply-adds.
      activations: floats of all layer outputs of one forward pass.
      has_conv: the model has convolutions (pfor is slow on their weight gradients).
      layers: `LayerStats` of the weighted layers, or None when the graph cannot be walked.
      largest_activation: floats of the largest layer output of one example.
    """

    num_params: int
    forward_macs: float
    activations: float
    has_conv: bool
    layers: tuple | None = None
    largest_activation: float = 0.0
    backward_macs: float | None = None

    def __post_init__(self):
        if self.backward_macs is None:
            object.__setattr__(self, "backward_macs", self.forward_macs)


def _size(shape):
    return math.prod(int(d) for d in shape if d is not None)


def model_stats(model):
    """`ModelStats` of a built Keras model."""
    num_params = sum(_size(v.shape) for v in model.trainable_variables)
    forward = activations = largest = 0.0
    has_conv = False
    macs = {}  # id(layer) -> its forward multiply-adds
    for layer in keras_graph.layers(model, recursive=True):
        try:
            out = _size(layer.output.shape[1:])
        except (AttributeError, ValueError):
            continue
        activations += out
        largest = max(largest, out)
        if isinstance(layer, keras.layers.Conv2D):
            has_conv = True
            macs[id(layer)] = out * _size(layer.kernel.shape[:-1])
        elif isinstance(layer, keras.layers.Dense):
            macs[id(layer)] = out * int(layer.kernel.shape[0]) * max(1, _size(layer.input.shape[1:-1]))
        else:
            macs[id(layer)] = out
        forward += macs[id(layer)]
    forward = max(forward, num_params)
    backward = forward
    try:
        layers = []
        for layer, rule, in_shape, out_shape, n in keras_graph.layer_shapes(model):
            stats = dict(rule=rule, input_size=_size(in_shape), output_size=_size(out_shape),
                         num_params=n, channels=int(out_shape[-1]))
            if rule == keras_graph.CONV:
                stats.update(positions=_size(out_shape[:-1]),
                             patch_size=_size(layer.kernel.shape[:-1]))
            layers.append(LayerStats(**stats))
            if len(layers) == 1:
                backward = max(forward - macs.get(id(layer), 0.0), 0.0)
        layers = tuple(layers)
    except (keras_graph.UnsupportedModelError, AttributeError, ValueError):
        layers = None
    return ModelStats(num_params, forward, activations, has_conv, layers, largest, backward)


@dataclasses.dataclass(frozen=True)
class BlockCost:
    """Estimated cost of one block: ``macs`` (matmul-equivalent multiply-adds, efficiency applied),
    ``raw_macs`` (plain multiply-adds, for FLOP/s reports) and ``bytes`` (peak working set)."""

    macs: float
    raw_macs: float
    bytes: float


def block_cost(stats, implementation, b1, b2, num_logits, kind, symmetric, itemsize, chunk=None):
    """`BlockCost` of one (b1, b2) block of ``kind`` ("full", "diagonal" or "trace").
    ``symmetric``: x2 is x1 (b2 == b1, work shared)."""
    nb = b1 if symmetric else b1 + b2
    pairs = num_logits**2 if kind == "full" else num_logits
    out = b1 * b2 * {"full": num_logits**2, "diagonal": num_logits, "trace": 1}[kind]
    p, f, a = stats.num_params, stats.forward_macs, stats.activations
    grad_eff = VECTORIZED_GRAD_EFFICIENCY
    if stats.layers is not None:  # ntvp's walker batches the forward-mode pass over tangents
        jvp_eff = BATCHED_JVP_EFFICIENCY
    else:
        jvp_eff = CONV_VECTORIZED_JVP_EFFICIENCY if stats.has_conv else VECTORIZED_JVP_EFFICIENCY
    if implementation == "jacobian":
        grads = nb * num_logits * 3 * f
        contract = b1 * b2 * pairs * p
        traffic = nb * num_logits * p * GRADIENT_FLOAT_COST
        # Per-example gradients are produced, then reshaped/concatenated: count them twice.
        return BlockCost(grads / grad_eff + contract + traffic, grads + contract,
                         itemsize * (nb * num_logits * (2 * p + 2 * a) + out))
    if implementation == "ntvp":
        columns = b2 * num_logits
        chunk = columns if chunk is None else chunk
        # A symmetric block runs column group g against the rows up to its last example only.
        groups = min(ntvp.SYMMETRIC_GROUPS, b1)
        rows = b1 * (groups + 1) / (2 * groups) if symmetric else b1
        work = columns * (3 * f / grad_eff + 2 * f * rows / jvp_eff + p * GRADIENT_FLOAT_COST)
        raw = columns * f * (3 + 2 * rows)
        return BlockCost(work, raw, itemsize * (chunk * (p + 3 * a * (b1 + 1)) + 2 * out))
    if implementation == "structured":
        if stats.layers is None:
            return None
        # One forward pass and L backward passes of cotangents (`structured.record`).
        passes = nb * (f + num_logits * stats.backward_macs)
        macs = passes / (CONV_BATCHED_PASS_EFFICIENCY if stats.has_conv else BATCHED_PASS_EFFICIENCY)
        raw = passes
        live = nb * a * (1 + 2 * num_logits)
        extra = 0.0
        for layer in stats.layers:
            if layer.rule == keras_graph.DENSE:
                work = b1 * b2 * (layer.input_size + pairs * layer.output_size)
                mem = 0.0
            elif layer.rule == keras_graph.CONV:
                s, k, c = layer.positions, layer.patch_size, layer.channels
                work, einsums = conv_rule_macs(s, k, c, num_logits, b1, b2, kind, symmetric)
                if structured.conv_uses_patch_gram(s, k, c, num_logits, b1, b2, kind):
                    mem = b1 * b2 * s * s * (1 + num_logits) + nb * s * k
                else:
                    mem = nb * (num_logits * k * c + s * k)
                    macs += nb * num_logits * k * c * GRADIENT_FLOAT_COST
                # The einsums below matmul speed; the per-example gradients' Gram is one matmul.
                macs += einsums * (1 / CONV_RULE_EFFICIENCY - 1)
            elif layer.rule == keras_graph.BATCHNORM:
                work = nb * num_logits * 2 * layer.output_size + b1 * b2 * pairs * 2 * layer.channels
                mem = nb * num_logits * 2 * layer.channels
            else:
                grads = nb * num_logits * 3 * max(layer.num_params, layer.output_size)
                work = grads / grad_eff + b1 * b2 * pairs * layer.num_params + (
                    nb * num_logits * layer.num_params * GRADIENT_FLOAT_COST)
                mem = nb * num_logits * (layer.num_params + 2 * layer.output_size)
            macs += work
            raw += work
            extra = max(extra, mem)
        return BlockCost(macs, raw, itemsize * (live + extra + 2 * out))
    raise ValueError(f"unknown implementation {implementation!r}")


def conv_rule_macs(positions, patch_size, channels, num_logits, b1, b2, kind, symmetric):
    """(all, einsums): multiply-adds of the structured conv rule on a (b1, b2) block, and the part of
    them in einsums (the patch Gram form, or the per-example gradients of the other form, whose Gram
    is one matmul)."""
    s, k, c = positions, patch_size, channels
    nb = b1 if symmetric else b1 + b2
    pairs = num_logits**2 if kind == "full" else num_logits
    if structured.conv_uses_patch_gram(s, k, c, num_logits, b1, b2, kind):
        work = b1 * b2 * s * s * (k + pairs * c)
        return work, work
    einsums = nb * num_logits * s * k * c
    return einsums + b1 * b2 * pairs * k * c, einsums


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a kernel will be computed: implementation, block size, block count and totals."""

    implementation: str
    block_size: int
    num_blocks: int
    macs: float
    raw_macs: float
    peak_bytes: float
    chunk: int | None = None


def _blocks(n1, n2, b, symmetric):
    k1, k2 = math.ceil(n1 / b), math.ceil(n2 / b)
    return k1 * (k1 + 1) // 2 if symmetric else k1 * k2


def plan(stats, implementation, n1, n2, num_logits, kind, symmetric, itemsize, budget_bytes,
         block_size=None):
    """The largest block (and, for ntvp, column chunk) whose working set fits ``budget_bytes``.

    Returns None when the implementation cannot handle the model; raises MemoryError when not even
    a block of one example fits.
    """
    n_max = max(n1, n2)

    def cost(b, chunk=None):
        # With several blocks, the off-diagonal ones of a symmetric kernel have two sides to
        # differentiate: plan for those.
        one_block = b >= n_max
        return block_cost(stats, implementation, min(b, n1), min(b, n2), num_logits, kind,
                          symmetric and one_block, itemsize, chunk)

    if cost(1) is None:
        return None
    candidates = [block_size] if block_size else sorted(
        {min(n_max, 2**k) for k in range(0, 16)} | {n_max}, reverse=True)
    for b in candidates:
        b = max(1, min(int(b), n_max))
        chunk = None
        if implementation == "ntvp":
            columns = min(b, n2) * num_logits
            # At least one example's L columns (their tangents come from one structured pass).
            chunk = min(columns, max(num_logits, int(NTVP_CHUNK_BYTES // (
                min(b, n1) * max(stats.largest_activation, 1) * itemsize))))
            while chunk > 1 and cost(b, chunk).bytes > budget_bytes:
                chunk = max(1, chunk // 2)
        if block_size:
            c = cost(b, chunk)
        else:
            # Prefer even blocks (less padding in the last one) when they fit too: the estimate is
            # not monotone in the block size (the conv rule switches form).
            even = math.ceil(n_max / math.ceil(n_max / b))
            fits = [(v, cost(v, chunk)) for v in (even, b) if cost(v, chunk).bytes <= budget_bytes]
            if not fits:
                continue
            b, c = fits[0]
        nblocks = _blocks(n1, n2, b, symmetric)
        return Plan(implementation, b, nblocks, c.macs * nblocks + BLOCK_OVERHEAD * nblocks,
                    c.raw_macs * nblocks, c.bytes, chunk)
    raise MemoryError(
        f"implementation {implementation!r} needs about {cost(1, 1).bytes / 2**20:.0f} MiB for a "
        f"single example, more than the memory budget of {budget_bytes / 2**20:.0f} MiB")
