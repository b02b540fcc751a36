r"""Benchmark of the empirical NTK implementations: bench/results/ntk.json and a table.

    python -m bench.ntk              # the whole grid (tens of minutes on 2 CPU cores)
    python -m bench.ntk --quick      # MLP and CNN only, N=64 and 128

For every model, N, kind and implementation: the median wall time after a warm-up call, the peak
resident memory the call added (VmHWM, reset before each measurement), the estimated FLOPs of the
plan and the achieved FLOP/s as a fraction of a large float32 matmul's FLOP/s measured in the same
run. A naive loop (one tape.gradient per example and logit, dot products in NumPy) is timed at a
small N for comparison. Configurations whose estimated time exceeds --max_seconds are skipped and
listed as such.
"""

import json
import os
import statistics
import sys
import time

from absl import flags
import numpy as np
import tensorflow as tf

from binaries import common
import tf_ntk
from tf_ntk import models
from tf_ntk.ntk import oracle

flags.DEFINE_bool("quick", False, "Only the small models at N=64 and 128.")
flags.DEFINE_float("max_seconds", 90.0, "Skip a configuration estimated to take longer than this.")
flags.DEFINE_integer("repeats", 3, "Timed calls per configuration (after one warm-up).")
flags.DEFINE_string("output", os.path.join(os.path.dirname(__file__), "results", "ntk.json"),
                    "Where to write the JSON results.")
FLAGS = flags.FLAGS

IMPLEMENTATIONS = ("jacobian", "ntvp", "structured", "auto")
MODELS = {
    "mlp256_8x8": ("mlp", (8, 8, 1), {"width": 256}),
    "mlp2048_32x32x3": ("mlp", (32, 32, 3), {"width": 2048}),
    "cnn16_32x32x3": ("cnn", (32, 32, 3), {"width": 16}),
    "resnet18w16_32x32x3": ("resnet18", (32, 32, 3), {"width": 16, "zero_head": False}),
    "resnet18w64_32x32x3": ("resnet18", (32, 32, 3), {"width": 64, "zero_head": False}),
}


def _vm_kib(field):
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak():
    """Resets the process's peak resident set size (Linux ≥ 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _measure(fn, repeats):
    """(median seconds, peak MiB added above the resident set before the first call).

    The peak covers the warm-up call too (TensorFlow's allocator keeps what it took then). A
    configuration whose warm-up call (tracing included) takes over 10 s is timed once.
    """
    can_reset = _reset_peak()
    base = _vm_kib("VmRSS")
    start = time.perf_counter()
    fn()  # warm-up: traces and compiles
    if time.perf_counter() - start > 10:
        repeats = 1
    times = []
    # Fast configurations get more calls (up to 20, about a second in all): medians of a few
    # millisecond-scale calls are noisy on a shared machine.
    while len(times) < repeats or (sum(times) < 1.0 and len(times) < 20):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    peak = (_vm_kib("VmHWM") - base) / 1024 if can_reset else float("nan")
    return statistics.median(times), max(peak, 0.0)


def matmul_flops():
    """FLOP/s of a 2048² float32 matmul, the machine's practical peak."""
    a = tf.random.normal((2048, 2048))
    mm = tf.function(lambda x: tf.matmul(x, x))
    mm(a).numpy()
    seconds, _ = _measure(lambda: mm(a).numpy(), 5)
    return 2 * 2048**3 / seconds


def naive_kernel(model, x, kind):
    """The slow reference (`tf_ntk.ntk.oracle`): one tape.gradient per example and logit, dot
    products in NumPy."""
    jac = oracle.jacobian(model, x)
    full = oracle.kernel(jac, jac)
    return full if kind == "full" else np.einsum("ijaa->ija", full).mean(-1)


def _grid():
    for name, (arch, shape, opts) in MODELS.items():
        if FLAGS.quick and not name.startswith(("mlp256", "cnn")):
            continue
        sizes = (64, 128) if FLAGS.quick else (64, 128, 256)
        for n in sizes:
            for kind in ("trace", "full"):
                yield name, arch, shape, opts, n, kind, None
        if arch == "resnet18" and not FLAGS.quick:
            yield name, arch, shape, opts, 500, "logit", 0


def run_benchmark():
    peak_flops = matmul_flops()
    print(f"matmul peak: {peak_flops / 1e9:.1f} GFLOP/s")
    records, built = [], {}
    for name, arch, shape, opts, n, kind, logit in _grid():
        if name not in built:
            tf.keras.utils.set_random_seed(0)
            built[name] = models.get(arch, 10, shape, **opts)
        model = built[name]
        x = tf.random.uniform((n, *shape), seed=1)
        call_kind = "trace" if kind == "logit" else kind
        for impl in IMPLEMENTATIONS:
            rec = dict(model=name, params=models.num_params(model), n=n, kind=kind,
                       implementation=impl)
            try:
                plan = tf_ntk.ntk.plan(model, n, kind=call_kind, logit=logit, implementation=impl)
            except MemoryError as e:
                records.append({**rec, "skipped": str(e)})
                continue
            rec.update(chosen=plan.implementation, block_size=plan.block_size,
                       est_gflop=2 * plan.raw_macs / 1e9, est_peak_mib=plan.peak_bytes / 2**20)
            # The plan's efficiency-weighted count at half the matmul peak: a rough forecast.
            est_seconds = 2 * plan.macs / (0.5 * peak_flops)
            if est_seconds > FLAGS.max_seconds:
                records.append({**rec, "skipped": f"estimated {est_seconds:.0f} s"})
                print(f"skip {name} n={n} {kind} {impl}: estimated {est_seconds:.0f} s")
                continue
            fn = lambda: tf_ntk.empirical_ntk(model, x, kind=call_kind, logit=logit,  # noqa: E731
                                              implementation=impl).numpy()
            seconds, peak = _measure(fn, FLAGS.repeats)
            rec.update(seconds=seconds, peak_mib=peak,
                       gflops=2 * plan.raw_macs / seconds / 1e9,
                       fraction_of_peak=2 * plan.raw_macs / seconds / peak_flops)
            records.append(rec)
            print(f"{name:22s} n={n:4d} {kind:6s} {impl:10s} {seconds:9.4f} s  "
                  f"peak {peak:8.1f} MiB  ({plan.implementation}, block {plan.block_size})")
            sys.stdout.flush()
    naive = []
    for name, n in (("mlp256_8x8", 32), ("cnn16_32x32x3", 16), ("resnet18w16_32x32x3", 8)):
        if name not in built:
            continue
        model = built[name]
        x = tf.random.uniform((n, *MODELS[name][1]), seed=1)
        naive_s, _ = _measure(lambda: naive_kernel(model, x, "trace"), 1)
        entry = dict(model=name, n=n, kind="trace", naive_seconds=naive_s)
        for impl in IMPLEMENTATIONS:
            s, _ = _measure(lambda: tf_ntk.empirical_ntk(model, x, implementation=impl).numpy(),
                            FLAGS.repeats)
            entry[f"{impl}_seconds"] = s
            entry[f"{impl}_speedup_over_naive"] = naive_s / s
        naive.append(entry)
        print(f"naive {name} n={n}: {naive_s:.3f} s; " + ", ".join(
            f"{impl} {entry[impl + '_speedup_over_naive']:.0f}x" for impl in IMPLEMENTATIONS))
    return dict(matmul_gflops=peak_flops / 1e9, records=records, naive=naive,
                targets=targets(records, naive))


def _time(records, model, n, kind, impl):
    for r in records:
        if (r["model"], r["n"], r["kind"], r["implementation"]) == (model, n, kind, impl):
            return r.get("seconds")
    return None


def targets(records, naive):
    """The issue's targets as ratios from this run."""
    out = {}
    for kind in ("trace", "full"):
        j = _time(records, "mlp256_8x8", 128, kind, "jacobian")
        s = _time(records, "mlp256_8x8", 128, kind, "structured")
        if j and s:
            out[f"mlp256_n128_{kind}_structured_speedup_over_jacobian"] = j / s
    for r in records:
        if (r["model"], r["n"], r["kind"], r["implementation"]) == (
                "mlp2048_32x32x3", 128, "trace", "structured") and "peak_mib" in r:
            out["mlp2048_n128_structured_peak_mib"] = r["peak_mib"]
            out["mlp2048_n128_jacobian_jacobians_gib"] = 128 * 10 * r["params"] * 4 / 2**30
    groups = {}
    for r in records:
        if "seconds" in r:
            groups.setdefault((r["model"], r["n"], r["kind"]), {})[r["implementation"]] = r["seconds"]
    auto_ratios, best_vs_jacobian = [], {}
    for key, times in groups.items():
        fixed = {k: v for k, v in times.items() if k != "auto"}
        if "auto" in times and fixed:
            auto_ratios.append(times["auto"] / min(fixed.values()))
        if key[0].startswith(("cnn", "resnet")) and "jacobian" in fixed:
            best_vs_jacobian["/".join(map(str, key))] = fixed["jacobian"] / min(fixed.values())
    out["auto_over_fastest_max"] = max(auto_ratios) if auto_ratios else None
    out["conv_best_speedup_over_jacobian"] = best_vs_jacobian
    out["min_speedup_over_naive"] = min(
        (e[f"{impl}_speedup_over_naive"] for e in naive for impl in IMPLEMENTATIONS), default=None)
    return out


def main(argv):
    del argv
    results = run_benchmark()
    os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
    tmp = FLAGS.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, FLAGS.output)
    print("\ntargets:")
    for key, value in results["targets"].items():
        print(f"  {key}: {value}")
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    common.run(main)
