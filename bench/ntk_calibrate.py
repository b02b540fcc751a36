r"""Measures the constants of the NTK cost model (`tf_ntk.ntk.cost`) on this machine.

    python -m bench.ntk_calibrate        # ~2 minutes on 2 CPU cores

Each constant is a rate relative to a 2048² float32 matmul measured in the same run (R multiply-adds
per second), from one compiled piece of the implementations timed on a small model:

  * gradient_float_cost: per-example gradients of a wide, cheap MLP (one multiply-add per weight),
    seconds x R per gradient float, less the 3 multiply-adds per weight of the backward pass at the
    measured efficiency;
  * vectorized_grad_efficiency: per-example gradients (pfor) of the CNN, 3 x forward multiply-adds
    per example and logit over seconds x R, the gradient floats' cost taken out;
  * batched_pass_efficiency (dense / conv): the structured rules' forward pass and L vectorized
    backward passes of the 3072-2048-2048-10 MLP and of the CNN (`cost.ModelStats` multiply-adds);
  * conv_rule_efficiency: the CNN's structured block less its passes and less the conv rules'
    Gram matmuls at R, against the conv rules' einsum multiply-adds (`cost.conv_rule_macs`);
  * batched_jvp_efficiency: ntvp's batched forward-mode pass, 20 tangents x 16 examples of the CNN,
    2 x forward multiply-adds per tangent and example;
  * vectorized_jvp_efficiency (dense / conv): the generic forward mode (ForwardAccumulator under pfor)
    on the MLP and on the CNN, the same count;
  * block_overhead: a whole kernel call on a 2-example, 8-unit MLP, seconds x R.

Prints the measured values next to the constants in use; bench/results/ntk_calibrate.json.
"""

import json
import os
import statistics

# pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import flags
import tensorflow as tf

from bench import ntk as ntk_bench
import tf_ntk
from tf_ntk import functional
from tf_ntk import models
from tf_ntk.cli import common
from tf_ntk.cli import quiet  # noqa: F401  (must precede TensorFlow)
from tf_ntk.ntk import cost
from tf_ntk.ntk import jacobian
from tf_ntk.ntk import keras_graph
from tf_ntk.ntk import ntvp
from tf_ntk.ntk import structured

flags.DEFINE_string("result", os.path.join(os.path.dirname(__file__), "results", "ntk_calibrate.json"),
                    "Where to write the JSON results.")
FLAGS = flags.FLAGS

L = 10


_MATMUL = {}


def _seconds(fn, repeats=5):
    """The time of ``fn`` in multiply-add equivalents: its median time x R, with R from a 2048²
    matmul timed in the same interleaved rounds (the machine's load changes between pieces)."""
    if not _MATMUL:
        a = tf.random.normal((2048, 2048))
        mm = tf.function(lambda x: tf.matmul(x, x))
        _MATMUL["fn"] = lambda: mm(a).numpy()
    times = ntk_bench.measure_cell({"mm": _MATMUL["fn"], "fn": fn}, repeats)
    rate = 2048**3 / times["mm"][0]
    _RATES.append(rate)
    return times["fn"][0] * rate


_RATES = []


def _compiled(fn, *args):
    compiled = tf.function(fn, autograph=False)
    return lambda: tf.nest.map_structure(lambda t: t.numpy(), compiled(*args))


def _model(arch, shape, width):
    tf.keras.utils.set_random_seed(0)
    model = models.get(arch, L, shape, width=width)
    f = functional.FunctionalModel(model)
    return model, f, cost.model_stats(model)


def calibrate():
    out = {}
    logits = list(range(L))

    # Per-example gradients: a wide, cheap MLP (traffic) and the CNN (compute).
    _, wide, wide_stats = _model("mlp", (32, 32, 3), 1024)
    x = tf.random.uniform((2, 32, 32, 3), seed=1)
    t = _seconds(_compiled(lambda a: jacobian.per_example_jacobians(wide, wide.params, a, logits), x))
    per_float = t / (2 * L * wide_stats.num_params)
    _, cnn, cnn_stats = _model("cnn", (32, 32, 3), 16)
    x = tf.random.uniform((64, 32, 32, 3), seed=1)
    t = _seconds(_compiled(lambda a: jacobian.per_example_jacobians(cnn, cnn.params, a, logits), x))
    grads = 64 * L * 3 * cnn_stats.forward_macs
    # Solve per_float = 3 f / (p eff) + cost (f = p for the MLP) and t R = grads / eff + floats cost.
    floats = 64 * L * cnn_stats.num_params
    ratio = wide_stats.forward_macs / wide_stats.num_params
    eff = grads / (t - floats * per_float) if t > floats * per_float else float("nan")
    for _ in range(20):  # the two equations share both unknowns; a few substitutions settle them
        float_cost = max(per_float - 3 * ratio / eff, 0.0)
        eff = grads / max(t - floats * float_cost, 1.0)
    out.update(gradient_float_cost=float_cost, vectorized_grad_efficiency=eff)

    # The structured rules' passes and the conv rules.
    _, mlp, mlp_stats = _model("mlp", (32, 32, 3), 2048)
    x = tf.random.uniform((128, 32, 32, 3), seed=1)
    rules = keras_graph.weighted_layers(mlp.network)
    t = _seconds(_compiled(lambda a: structured.record(mlp, mlp.params, a, logits, rules)[1], x))
    out["batched_pass_efficiency_dense"] = 128 * _passes(mlp_stats) / t
    x = tf.random.uniform((64, 32, 32, 3), seed=1)
    rules = keras_graph.weighted_layers(cnn.network)
    t_pass = _seconds(_compiled(lambda a: structured.record(cnn, cnn.params, a, logits, rules)[1], x))
    out["batched_pass_efficiency_conv"] = 64 * _passes(cnn_stats) / t_pass
    for kind in ("trace", "full"):
        t = _seconds(_compiled(
            lambda a, kind=kind: structured.structured_block(cnn, cnn.params, a, None, logits, kind), x))
        convs = [cost.conv_rule_macs(layer.positions, layer.patch_size, layer.channels, L, 64, 64,
                                     kind, True) for layer in cnn_stats.layers
                 if layer.rule == keras_graph.CONV]
        einsums = sum(e for _, e in convs)
        at_matmul_speed = sum(w - e for w, e in convs)
        out[f"conv_rule_efficiency_{kind}"] = einsums / max(t - t_pass - at_matmul_speed, 1.0)

    # Forward mode: ntvp's batched walker and the generic ForwardAccumulator.
    x = tf.random.uniform((16, 32, 32, 3), seed=1)
    tangents = [tf.random.normal((20, *p.shape)) for p in cnn.params]
    t = _seconds(_compiled(lambda a, v: ntvp.batched_jvp(cnn, cnn.params, a, v), x, tangents))
    out["batched_jvp_efficiency"] = 2 * cnn_stats.forward_macs * 16 * 20 / t
    t = _seconds(_compiled(lambda a, v: ntvp.generic_jvp(cnn, cnn.params, a, v), x, tangents), 1)
    out["vectorized_jvp_efficiency_conv"] = 2 * cnn_stats.forward_macs * 16 * 20 / t
    _, small, small_stats = _model("mlp", (8, 8, 1), 256)
    x = tf.random.uniform((64, 8, 8, 1), seed=1)
    tangents = [tf.random.normal((40, *p.shape)) for p in small.params]
    t = _seconds(_compiled(lambda a, v: ntvp.generic_jvp(small, small.params, a, v), x, tangents))
    out["vectorized_jvp_efficiency_dense"] = 2 * small_stats.forward_macs * 64 * 40 / t

    # Fixed cost of one block: a kernel call with next to no work.
    tiny, _, _ = _model("mlp", (2, 2, 1), 8)
    x = tf.random.uniform((2, 2, 2, 1), seed=1)
    for impl in ("jacobian", "structured", "ntvp"):
        t = _seconds(lambda impl=impl: tf_ntk.empirical_ntk(tiny, x, implementation=impl).numpy(), 20)
        out[f"block_overhead_{impl}"] = t
    out["matmul_gmacs"] = statistics.median(_RATES) / 1e9
    return out


def _passes(stats):
    """Multiply-adds of `structured.record` per example: one forward and L backward passes."""
    return stats.forward_macs + L * stats.backward_macs


def main(argv):
    del argv
    out = calibrate()
    in_use = {
        "gradient_float_cost": cost.GRADIENT_FLOAT_COST,
        "vectorized_grad_efficiency": cost.VECTORIZED_GRAD_EFFICIENCY,
        "batched_pass_efficiency_dense": cost.BATCHED_PASS_EFFICIENCY,
        "batched_pass_efficiency_conv": cost.CONV_BATCHED_PASS_EFFICIENCY,
        "conv_rule_efficiency_trace": cost.CONV_RULE_EFFICIENCY,
        "conv_rule_efficiency_full": cost.CONV_RULE_EFFICIENCY,
        "batched_jvp_efficiency": cost.BATCHED_JVP_EFFICIENCY,
        "vectorized_jvp_efficiency_conv": cost.CONV_VECTORIZED_JVP_EFFICIENCY,
        "vectorized_jvp_efficiency_dense": cost.VECTORIZED_JVP_EFFICIENCY,
        "block_overhead_jacobian": cost.BLOCK_OVERHEAD,
        "block_overhead_structured": cost.BLOCK_OVERHEAD,
        "block_overhead_ntvp": cost.BLOCK_OVERHEAD,
    }
    for key, value in out.items():
        print(f"{key:34s} {value:12.4g}   in use: {in_use.get(key, '')}")
    os.makedirs(os.path.dirname(FLAGS.result), exist_ok=True)
    with open(FLAGS.result, "w", encoding="utf-8") as f:
        json.dump({"measured": out, "in_use": in_use}, f, indent=1)


if __name__ == "__main__":
    common.run(main)
