"""`empirical_ntk` and `plan`: the kernel k(x, x') = ∇θf(x)·∇θf(x') of a Keras model, in blocks.

The gradient is with respect to the model's trainable weights θ (``model.trainable_variables``, or
``params`` in that order); BatchNormalization runs in inference mode with the model's running
statistics. The model is never modified. Three implementations give the same numbers (see
`empirical_ntk`); ``"auto"`` picks the cheapest for the model, N and O within the memory budget.

A call is validated, planned (`cost.plan`: implementation, block size within the memory budget) and
laid out in blocks (`_Blocks`); then either orchestrated eagerly (`_kernel_eagerly`: one compiled
block function per configuration, progress, the kernel assembled in host memory) or, inside a
tf.function or XLA, assembled as one graph (`_kernel_in_graph`: the block loop unrolled). Both run
the same block functions (`_block_fn`). A trace kernel (or one logit's) is computed from "trace"
blocks, contracted over the logits inside the implementations.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
import weakref

import keras
import numpy as np
import psutil
import tensorflow as tf

from tf_ntk import functional
from tf_ntk.ntk import cost
from tf_ntk.ntk import jacobian
from tf_ntk.ntk import keras_graph
from tf_ntk.ntk import ntvp
from tf_ntk.ntk import structured

KINDS = ("full", "diagonal", "trace")
"""The kernel's ``kind``: "full" (N1, N2, O, O) over all logit pairs, "diagonal" (N1, N2, O) the
logit-wise kernels, "trace" (N1, N2) their sum over the O logits."""
IMPLEMENTATIONS = ("jacobian", "ntvp", "structured", "auto")
"""The ``implementation`` names of `empirical_ntk`; "auto" picks the cheapest by the cost model."""
DEFAULT_BUDGET_FRACTION = 0.25
"""Default memory budget of `empirical_ntk`: this fraction of the host memory available when the
call starts (`default_memory_budget`)."""

_BLOCK_FNS = {
    "jacobian": jacobian.jacobian_block,
    "structured": structured.structured_block,
}

# Compiled block functions per model (eager calls), so repeated kernels do not retrace.
_COMPILED: weakref.WeakKeyDictionary[keras.Model, dict[tuple, Any]] = weakref.WeakKeyDictionary()
_STATS: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()


def default_memory_budget() -> int:
    """DEFAULT_BUDGET_FRACTION of the host memory available now, in bytes."""
    return int(DEFAULT_BUDGET_FRACTION * psutil.virtual_memory().available)


def _stats(model: keras.Model) -> Any:
    if model not in _STATS:
        _STATS[model] = cost.model_stats(model)
    return _STATS[model]


def _validate(model: keras.Model, x1: tf.Tensor, x2: tf.Tensor | None, kind: str, logit: int | None,
              implementation: str, dtype: tf.DType | str | None,
              memory_budget_bytes: int | None) -> functional.FunctionalModel:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown implementation {implementation!r}; known: {', '.join(IMPLEMENTATIONS)}")
    if dtype is not None and tf.as_dtype(dtype) not in (tf.float32, tf.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if memory_budget_bytes is not None and memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
    f = functional.FunctionalModel(model, dtype=dtype)
    f.check_inputs(x1)
    if x2 is not None:
        f.check_inputs(x2)
    if logit is not None:
        if kind != "trace":
            raise ValueError("logit=c gives the (N1, N2) kernel of logit c; do not also set kind")
        if isinstance(logit, bool) or not isinstance(logit, (int, np.integer)) or not (
            0 <= logit < f.num_outputs
        ):
            raise ValueError(f"logit must be an int in [0, {f.num_outputs}), got {logit!r}")
    return f


AUTO_TIE = 0.05
TIE_ORDER = ("structured", "jacobian", "ntvp")


def _block_kind(kind: str, logit: int | None) -> str:
    """The kind of blocks that compute a kernel of ``kind`` (or of one ``logit``): a trace kernel
    or a single logit's kernel comes from "trace" blocks (summed over their logits)."""
    return "trace" if logit is not None else kind


def _choose(f: functional.FunctionalModel, implementation: str, n1: int, n2: int, num_logits: int, kind: str,
            symmetric: bool, budget: int, block_size: int | None) -> cost.Plan:
    """The `cost.Plan` to run: the given implementation, or the cheapest that fits."""
    stats = _stats(f.model)
    itemsize = f.dtype.size
    names = ("jacobian", "ntvp", "structured") if implementation == "auto" else (implementation,)
    plans, errors = [], []
    for name in names:
        try:
            p = cost.plan(stats, name, n1, n2, num_logits, kind, symmetric, itemsize, budget,
                          block_size)
        except MemoryError as e:
            errors.append(str(e))
            continue
        if p is None:
            if implementation != "auto":
                # Let the structured walker explain why it cannot handle this model.
                keras_graph.weighted_layers(f.network)
                raise keras_graph.UnsupportedModelError(
                    "implementation='structured' cannot handle this model")
            continue
        plans.append(p)
    if not plans:
        raise MemoryError("; ".join(errors) or "no implementation can compute this kernel")
    # Estimates within AUTO_TIE of the cheapest are a tie the cost model cannot resolve: the
    # structured rules win it (in the benchmark they are as fast or faster on such ties and hold
    # less memory), then the jacobian contraction.
    cheapest = min(p.macs for p in plans)
    tied = [p for p in plans if p.macs <= (1 + AUTO_TIE) * cheapest]
    return min(tied, key=lambda p: TIE_ORDER.index(p.implementation))


def plan(model: keras.Model, n1: int, n2: int | None = None, *, kind: str = "trace", logit: int | None = None,
         implementation: str = "auto", memory_budget_bytes: int | None = None, dtype: tf.DType | str | None = None,
         block_size: int | None = None) -> cost.Plan:
    """The `cost.Plan` that `empirical_ntk` would follow for N1 x N2 inputs (no computation)."""
    f = functional.FunctionalModel(model, dtype=dtype)
    num_logits = 1 if logit is not None else f.num_outputs
    return _choose(f, implementation, n1, n1 if n2 is None else n2, num_logits,
                   _block_kind(kind, logit), n2 is None,
                   memory_budget_bytes or default_memory_budget(), block_size)


# -- graph assembly: one block, then the blocks of a whole kernel ---------------------------------


def _transpose_block(block: tf.Tensor, kind: str) -> tf.Tensor:
    """Block (j, i) of a symmetric kernel from block (i, j)."""
    return tf.transpose(block, {"full": [1, 0, 3, 2], "diagonal": [1, 0, 2], "trace": [1, 0]}[kind])


def _block_fn(f: functional.FunctionalModel, implementation: str, logits: Sequence[int], kind: str, chunk: int | None,
              symmetric_block: bool, mean: bool) -> Callable[[Sequence[tf.Tensor], tf.Tensor, tf.Tensor], tf.Tensor]:
    """fn(params, a, b): the ``kind`` kernel block of inputs a against b, computed in ``f.dtype``
    (b ignored for a diagonal block of a symmetric kernel: a against itself, made exactly symmetric);
    divided by the number of logits when ``mean`` (the trace kernel is their mean)."""
    if implementation == "ntvp":
        raw = lambda p, a, b: ntvp.ntvp_block(f, p, a, b, logits, kind, chunk)  # noqa: E731
    else:
        block_fn = _BLOCK_FNS[implementation]
        raw = lambda p, a, b: block_fn(f, p, a, b, logits, kind)  # noqa: E731

    def fn(p: Sequence[tf.Tensor], a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        p = [tf.cast(v, f.dtype) for v in p]
        a = tf.cast(a, f.dtype)
        if symmetric_block:
            # A diagonal block is symmetric up to rounding; make it exactly so.
            block = raw(p, a, None)
            block = 0.5 * (block + _transpose_block(block, kind))
        else:
            block = raw(p, a, tf.cast(b, f.dtype))
        return block / len(logits) if mean else block

    return fn


class _CompiledBlock:
    """A block function compiled with tf.function, called through its concrete function for the
    arguments' types and shapes (cheaper per call than tf.function's dispatch, ~0.2 ms)."""

    def __init__(self, fn: Callable[[Sequence[tf.Tensor], tf.Tensor, tf.Tensor], tf.Tensor]) -> None:
        # No autograph: the block functions have no tensor-dependent Python control flow, and
        # converting Keras internals recursively makes tracing several times slower.
        self.function = tf.function(fn, autograph=False)
        self.concrete: dict[tuple, Any] = {}

    def __call__(self, params: Sequence[tf.Tensor], a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        key = (tuple((isinstance(p, tf.Variable), p.dtype, tuple(p.shape)) for p in params),
               a.dtype, tuple(a.shape), b.dtype, tuple(b.shape))
        fn = self.concrete.get(key)
        if fn is None:
            fn = self.concrete[key] = self.function.get_concrete_function(params, a, b)
        return fn(params, a, b)


def _compiled_block_fn(f: functional.FunctionalModel, implementation: str, logits: Sequence[int], kind: str,
                       chunk: int | None, symmetric_block: bool, mean: bool) -> _CompiledBlock:
    """`_block_fn` compiled once per model and configuration (eager calls)."""
    cache = _COMPILED.setdefault(f.model, {})
    key = (f.dtype.name, implementation, tuple(logits), kind, chunk, symmetric_block, mean)
    if key not in cache:
        cache[key] = _CompiledBlock(
            _block_fn(f, implementation, logits, kind, chunk, symmetric_block, mean))
    return cache[key]


class _Blocks:
    """The block layout of an (N1, N2) kernel: block (i, j) holds rows i… and columns j… of at most
    ``size`` examples each; a symmetric kernel computes the blocks with j >= i and mirrors the rest.

    Attributes:
      pairs: the (row start, column start) of every block to compute, row-major.
      tail: the trailing shape of a block of ``kind``: (L, L), (L,) or ().
    """

    def __init__(self, n1: int, n2: int, size: int, symmetric: bool, num_logits: int, kind: str) -> None:
        self.n1, self.n2, self.symmetric, self.kind = n1, n2, symmetric, kind
        self.b1, self.b2 = min(size, n1), min(size, n2)
        self.starts1, self.starts2 = list(range(0, n1, size)), list(range(0, n2, size))
        self.pairs = [(i, j) for i in self.starts1 for j in self.starts2 if not symmetric or j >= i]
        self.tail = {"full": (num_logits, num_logits), "diagonal": (num_logits,), "trace": ()}[kind]

    def is_diagonal_block(self, i: int, j: int) -> bool:
        return self.symmetric and i == j

    def mirror(self, block: tf.Tensor) -> tf.Tensor:
        """Block (j, i) from block (i, j) of a symmetric kernel."""
        return _transpose_block(block, self.kind)


def _kernel_in_graph(f: functional.FunctionalModel, params: Sequence[tf.Tensor], x1: tf.Tensor, x2: tf.Tensor,
                     chosen: cost.Plan, logits: Sequence[int], mean: bool, blocks: _Blocks) -> tf.Tensor:
    """The whole kernel inside a tf.function (or under XLA): the block loop unrolled at trace time."""
    out = {}
    for i, j in blocks.pairs:
        fn = _block_fn(f, chosen.implementation, logits, blocks.kind, chosen.chunk,
                       blocks.is_diagonal_block(i, j), mean)
        out[(i, j)] = fn(params, x1[i:i + blocks.b1], x2[j:j + blocks.b2])
    rows = []
    for i in blocks.starts1:
        row = [out[(i, j)] if (i, j) in out else blocks.mirror(out[(j, i)]) for j in blocks.starts2]
        rows.append(tf.concat(row, axis=1) if len(row) > 1 else row[0])
    return tf.concat(rows, axis=0) if len(rows) > 1 else rows[0]


# -- eager orchestration: compiled blocks, progress, the kernel assembled in host memory ----------


def _padded(x: tf.Tensor, start: int, size: int) -> tf.Tensor:
    """Rows start… of x, a short last block padded to ``size`` so that one compiled function serves
    every block (the padding rows are cut from the result)."""
    if start == 0 and x.shape[0] == size:
        return x
    part = x[start:start + size]
    if part.shape[0] < size:
        part = tf.pad(part, [[0, size - part.shape[0]]] + [[0, 0]] * (len(part.shape) - 1))
    return part


def _on_host(strategy: tf.distribute.Strategy) -> bool:
    """Whether the strategy's replicas are CPU devices (sharing the host's memory)."""
    devices = getattr(strategy.extended, "worker_devices", ())
    return all("CPU" in tf.DeviceSpec.from_string(d).device_type.upper() for d in devices if d)


def _kernel_eagerly(f: functional.FunctionalModel, params: Sequence[tf.Tensor], x1: tf.Tensor, x2: tf.Tensor,
                    chosen: cost.Plan, logits: Sequence[int], mean: bool, blocks: _Blocks,
                    progress: Callable[[int, int], Any] | None) -> tf.Tensor:
    """The kernel block by block through compiled block functions, assembled in host memory."""

    def compute(i: int, j: int) -> tf.Tensor:
        fn = _compiled_block_fn(f, chosen.implementation, logits, blocks.kind, chosen.chunk,
                                blocks.is_diagonal_block(i, j), mean)
        block = fn(params, _padded(x1, i, blocks.b1), _padded(x2, j, blocks.b2))
        rows, cols = min(blocks.b1, blocks.n1 - i), min(blocks.b2, blocks.n2 - j)
        if block.shape[0] != rows or block.shape[1] != cols:
            block = block[:rows, :cols]
        return block

    if len(blocks.pairs) == 1:
        kernel = compute(0, 0)
        if progress is not None:
            progress(1, 1)
        return kernel
    placer = _Placer(blocks, f.dtype, progress)
    for i, j in blocks.pairs:
        placer.put(i, j, compute(i, j).numpy())
    return tf.constant(placer.out)


class _Placer:
    """Writes computed blocks into the host kernel (and the mirror of an off-diagonal block of a
    symmetric kernel), reporting progress."""

    def __init__(self, blocks: _Blocks, dtype: tf.DType, progress: Callable[[int, int], Any] | None) -> None:
        self.blocks, self.progress, self.done = blocks, progress, 0
        self.out = np.empty((blocks.n1, blocks.n2) + blocks.tail, dtype.as_numpy_dtype)

    def cut(self, block: tf.Tensor, i: int, j: int) -> tf.Tensor:
        """A computed block without the padding rows/columns of a short last block."""
        rows, cols = min(self.blocks.b1, self.blocks.n1 - i), min(self.blocks.b2, self.blocks.n2 - j)
        return block[:rows, :cols]

    def put(self, i: int, j: int, block: tf.Tensor | np.ndarray) -> None:
        blocks = self.blocks
        block = self.cut(np.asarray(block), i, j)
        self.out[i:i + block.shape[0], j:j + block.shape[1]] = block
        if blocks.symmetric and i != j:
            self.out[j:j + block.shape[1], i:i + block.shape[0]] = np.swapaxes(block, 0, 1) if (
                block.ndim < 4) else block.transpose(1, 0, 3, 2)
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(blocks.pairs))


def _distributed_round_fn(f: functional.FunctionalModel, chosen: cost.Plan, logits: Sequence[int], kind: str,
                          symmetric_block: bool, mean: bool, strategy: tf.distribute.Strategy) -> Callable[..., Any]:
    """A tf.function running one block per replica: ``(params, a, b) -> per-replica blocks``, with
    ``a`` and ``b`` distributed values (one padded block of inputs per replica)."""
    cache = _COMPILED.setdefault(f.model, {})
    key = ("distributed", id(strategy), f.dtype.name, chosen.implementation, tuple(logits), kind,
           chosen.chunk, symmetric_block, mean)
    if key not in cache:
        fn = _block_fn(f, chosen.implementation, logits, kind, chosen.chunk, symmetric_block, mean)
        cache[key] = (strategy, tf.function(lambda p, a, b: strategy.run(fn, args=(p, a, b)),
                                            autograph=False))
    return cache[key][1]


def _kernel_distributed(f: functional.FunctionalModel, params: Sequence[tf.Tensor], x1: tf.Tensor, x2: tf.Tensor,
                        chosen: cost.Plan, logits: Sequence[int], mean: bool, blocks: _Blocks,
                        progress: Callable[[int, int], Any] | None, strategy: tf.distribute.Strategy) -> tf.Tensor:
    """The kernel's blocks spread over the strategy's local replicas, R blocks per round (a round
    short of blocks repeats its last one); assembled in host memory."""
    replicas = strategy.num_replicas_in_sync
    placer = _Placer(blocks, f.dtype, progress)
    params = [tf.convert_to_tensor(p) for p in params]
    for diagonal in (True, False):  # one function per round: diagonal and other blocks apart
        pairs = [(i, j) for i, j in blocks.pairs if blocks.is_diagonal_block(i, j) == diagonal]
        if not pairs:
            continue
        fn = _distributed_round_fn(f, chosen, logits, blocks.kind, diagonal, mean, strategy)
        for start in range(0, len(pairs), replicas):
            todo = pairs[start:start + replicas]
            chunk = todo + [todo[-1]] * (replicas - len(todo))
            a = strategy.experimental_distribute_values_from_function(
                lambda ctx, chunk=chunk: _padded(x1, chunk[ctx.replica_id_in_sync_group][0], blocks.b1))
            b = strategy.experimental_distribute_values_from_function(
                lambda ctx, chunk=chunk: _padded(x2, chunk[ctx.replica_id_in_sync_group][1], blocks.b2))
            results = strategy.experimental_local_results(fn(params, a, b))
            for (i, j), block in zip(todo, results):
                placer.put(i, j, block.numpy())
    return tf.constant(placer.out)


def empirical_ntk(model: keras.Model, x1: tf.Tensor | np.ndarray, x2: tf.Tensor | np.ndarray | None = None, *,
                  params: Sequence[tf.Tensor | np.ndarray] | None = None, kind: str = "trace", logit: int | None = None,
                  implementation: str = "auto", memory_budget_bytes: int | None = None,
                  dtype: tf.DType | str | None = None, progress: Callable[[int, int], Any] | None = None,
                  block_size: int | None = None, strategy: tf.distribute.Strategy | None = None) -> tf.Tensor:
    """The empirical NTK of ``model`` between inputs ``x1`` and ``x2``.

    Args:
      model: a built Keras model with logits output (N, O); BatchNormalization in inference mode.
      x1: inputs (N1, *input_shape).
      x2: inputs (N2, *input_shape), or None for the symmetric kernel of x1 with itself (only the
        blocks on and above the diagonal are computed; the rest is mirrored).
      params: weights at which to take the kernel (e.g. a spawn checkpoint), one tensor per
        ``model.trainable_variables`` entry in that order; default: the model's current weights.
      kind: ``"full"`` -> (N1, N2, O, O); ``"diagonal"`` -> (N1, N2, O), the per-logit kernels;
        ``"trace"`` -> (N1, N2), the mean over logits of the per-logit kernels (neural-tangents'
        convention).
      logit: an int c: the (N1, N2) kernel of logit c alone (at the cost of one logit).
      implementation: ``"jacobian"`` (per-example Jacobians, then contraction), ``"ntvp"``
        (NTK-vector products J1 (J2ᵀ v): per-example gradients as tangents, a forward-mode pass
        batched over a chunk of them; holds one chunk's tangents, never the Jacobian),
        ``"structured"`` (per-layer rules for Dense,
        Conv2D and BatchNormalization; per-example Jacobians for other layers' own weights), or
        ``"auto"`` (the cheapest estimate that fits the memory budget).
      memory_budget_bytes: peak working-set target; the inputs are split into blocks so that one
        block fits. Default: 25% of the host memory available.
      dtype: ``"float32"`` or ``"float64"`` (a float64 copy of the network computes the kernel);
        default: the model's compute dtype.
      progress: ``callback(done_blocks, total_blocks)`` after each block (eager calls only).
      block_size: force this many examples per block instead of the budget's choice.
      strategy: a single-host `tf.distribute.Strategy` (MirroredStrategy over GPUs or logical
        devices, TPUStrategy on one TPU VM) whose replicas compute the blocks in parallel, one block
        each per round (eager calls only). The memory budget then holds per replica, divided among
        replicas that share the host's memory (CPU devices). Across hosts, split the blocks with
        `tf_ntk.ntk.kernel_shards` (``compute_kernel --num_shards``) instead.

    Returns:
      A tf.Tensor in ``dtype`` of the shape given by ``kind`` / ``logit``.

    Works eagerly (block functions are compiled once per model and shape), inside ``tf.function``
    and under ``jit_compile=True`` (the block loop is unrolled at trace time).

    Raises:
      ValueError: unknown kind/implementation, logit out of range, inputs that do not fit the model,
        ``params`` that do not match the model's weights.
      MemoryError: not even one example fits the memory budget.
    """
    f = _validate(model, x1, x2, kind, logit, implementation, dtype, memory_budget_bytes)
    # Weights and inputs are cast to f.dtype inside the (compiled) block functions.
    params = f.params if params is None else functional.check_params(model, params, dtype=f.dtype)
    x1 = tf.convert_to_tensor(x1)
    symmetric = x2 is None
    x2 = x1 if symmetric else tf.convert_to_tensor(x2)
    n1, n2 = int(x1.shape[0]), int(x2.shape[0])
    logits = [int(logit)] if logit is not None else list(range(f.num_outputs))
    block_kind = _block_kind(kind, logit)
    mean = logit is None and kind == "trace"
    budget = memory_budget_bytes or default_memory_budget()
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if replicas > 1 and not tf.executing_eagerly():
        raise ValueError("empirical_ntk(strategy=...) spreads blocks from eager calls only; inside a "
                         "tf.function, call it under strategy.run instead")
    if replicas > 1 and memory_budget_bytes is None and _on_host(strategy):
        budget //= replicas
    chosen = _choose(f, implementation, n1, n2, len(logits), block_kind, symmetric, budget,
                     block_size)
    blocks = _Blocks(n1, n2, chosen.block_size, symmetric, len(logits), block_kind)
    if replicas > 1:
        return _kernel_distributed(f, params, x1, x2, chosen, logits, mean, blocks, progress, strategy)
    if tf.executing_eagerly():
        return _kernel_eagerly(f, params, x1, x2, chosen, logits, mean, blocks, progress)
    return _kernel_in_graph(f, params, x1, x2, chosen, logits, mean, blocks)
