r"""Benchmark of the empirical NTK implementations: bench/results/ntk.json and ntk.txt.

    python -m bench.ntk              # the whole grid (~20 minutes on 2 CPU cores)
    python -m bench.ntk --quick      # MLP and CNN only, N=64 and 128
    python -m bench.ntk --models=cnn16_32x32x3 --sizes=64 --output=/tmp/ntk.json   # one cell

For every model, N and kind (a cell): every implementation and ``auto``, each warmed up once and
timed once, then the contenders (auto and the implementations within 1.5x of the fastest) timed in
interleaved rounds (one call of each per round, so that a busy machine slows them alike); the median
wall time per implementation, the peak resident memory its first call added
(VmHWM, reset before it), the estimated FLOPs of the plan and the achieved FLOP/s as a fraction of a
large float32 matmul's FLOP/s measured in the same run. ``auto``'s time over the best fixed
implementation's, in the same cell, is the choice's cost. A naive loop (one tape.gradient per
example and logit, `tf_ntk.ntk.oracle`) is timed at a small N for comparison. Configurations whose
estimated time exceeds --max_seconds are skipped and listed as such.
"""

import json
import os
import statistics
import sys
import time

from absl import flags
import numpy as np
import tensorflow as tf

from bench import measure
import tf_ntk
from tf_ntk import models
from tf_ntk.cli import common
from tf_ntk.ntk import oracle

flags.DEFINE_bool("quick", False, "Only the small models at N=64 and 128.")
flags.DEFINE_list("models", [], "Only these models (names of MODELS); default: all.")
flags.DEFINE_list("sizes", [], "Only these N; default: 64, 128, 256 (and 500 for ResNet's logit kernel).")
flags.DEFINE_float("max_seconds", 90.0, "Skip a configuration estimated to take longer than this.")
flags.DEFINE_integer("repeats", 3, "Timed calls per configuration (after one warm-up).")
flags.DEFINE_string("output", os.path.join(os.path.dirname(__file__), "results", "ntk.json"),
                    "Where to write the JSON results (the table goes beside it, .txt).")
FLAGS = flags.FLAGS

IMPLEMENTATIONS = ("jacobian", "ntvp", "structured", "auto")
MODELS = {
    "mlp256_8x8": ("mlp", (8, 8, 1), {"width": 256}),
    "mlp2048_32x32x3": ("mlp", (32, 32, 3), {"width": 2048}),
    "cnn16_32x32x3": ("cnn", (32, 32, 3), {"width": 16}),
    "resnet18w16_32x32x3": ("resnet18", (32, 32, 3), {"width": 16, "zero_head": False}),
    "resnet18w64_32x32x3": ("resnet18", (32, 32, 3), {"width": 64, "zero_head": False}),
}
# Timing: after a warm-up call each, one timed call of every implementation of a cell, then rounds
# of the contenders only (auto, and the implementations within CONTENDER_RATIO of the fastest so
# far) until each has --repeats calls and, for fast ones, about TARGET_SECONDS of calls (at most
# MAX_CALLS): medians of a few millisecond-scale calls are noisy on a shared machine.
CONTENDER_RATIO = 1.5
TARGET_SECONDS, MAX_CALLS = 2.0, 25


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_cell(fns, repeats, contenders=None):
    """{name: (median seconds, peak MiB added by its first call)} for the functions of one cell.

    Each function is warmed up once (tracing and compiling; its peak memory is measured around that
    call) and timed once; then the contenders (``contenders(medians)`` -> names; default: all) are
    timed in rounds, one call of each per round, so that a change in the machine's load affects
    them alike, until each has ``repeats`` calls and about TARGET_SECONDS (at most MAX_CALLS).
    """
    peaks = {}
    for name, fn in fns.items():
        can_reset = measure.reset_peak()
        base = measure.vm_kib("VmRSS")
        _timed(fn)
        peaks[name] = max((measure.vm_kib("VmHWM") - base) / 1024, 0.0) if can_reset else float("nan")
    times = {name: [_timed(fn)] for name, fn in fns.items()}
    medians = {name: statistics.median(t) for name, t in times.items()}
    chosen = set(fns) if contenders is None else set(contenders(medians))
    while True:
        due = [name for name in fns if name in chosen and (len(times[name]) < repeats or (
            sum(times[name]) < TARGET_SECONDS and len(times[name]) < MAX_CALLS))]
        if not due:
            break
        for name in due:
            times[name].append(_timed(fns[name]))
    return {name: (statistics.median(times[name]), peaks[name]) for name in fns}


def _contenders(medians):
    """auto and the fixed implementations within CONTENDER_RATIO of the fastest."""
    fixed = {k: v for k, v in medians.items() if k != "auto"}
    best = min(fixed.values(), default=0.0)
    return [k for k, v in medians.items() if k == "auto" or v <= CONTENDER_RATIO * best]


def matmul_flops():
    """FLOP/s of a 2048² float32 matmul, the machine's practical peak."""
    a = tf.random.normal((2048, 2048))
    mm = tf.function(lambda x: tf.matmul(x, x))
    seconds, _ = measure_cell({"mm": lambda: mm(a).numpy()}, 5)["mm"]
    return 2 * 2048**3 / seconds


def naive_kernel(model, x, kind):
    """The slow reference (`tf_ntk.ntk.oracle`): one tape.gradient per example and logit, dot
    products in NumPy."""
    jac = oracle.jacobian(model, x)
    full = oracle.kernel(jac, jac)
    return full if kind == "full" else np.einsum("ijaa->ija", full).mean(-1)


def _grid():
    """(model name, N, kind, logit) of every cell, in order."""
    for name, (arch, _, _) in MODELS.items():
        if FLAGS.models and name not in FLAGS.models:
            continue
        if FLAGS.quick and not name.startswith(("mlp256", "cnn")):
            continue
        cells = [(n, kind, None) for n in ((64, 128) if FLAGS.quick else (64, 128, 256))
                 for kind in ("trace", "full")]
        if arch == "resnet18" and not FLAGS.quick:
            cells.append((500, "logit", 0))
        for n, kind, logit in cells:
            if not FLAGS.sizes or str(n) in FLAGS.sizes:
                yield name, n, kind, logit


def _kernel_fn(model, x, kind, logit, impl):
    return lambda: tf_ntk.empirical_ntk(model, x, kind=kind, logit=logit,
                                        implementation=impl).numpy()


def run_benchmark(log):
    peak_flops = matmul_flops()
    log(f"matmul peak: {peak_flops / 1e9:.1f} GFLOP/s")
    records, built = [], {}
    for name, n, kind, logit in _grid():
        arch, shape, opts = MODELS[name]
        if name not in built:
            tf.keras.utils.set_random_seed(0)
            built[name] = models.get(arch, 10, shape, **opts)
        model = built[name]
        x = tf.random.uniform((n, *shape), seed=1)
        call_kind = "trace" if kind == "logit" else kind
        cell, fns = {}, {}
        for impl in IMPLEMENTATIONS:
            rec = dict(model=name, params=models.num_params(model), n=n, kind=kind,
                       implementation=impl)
            cell[impl] = rec
            try:
                plan = tf_ntk.ntk.plan(model, n, kind=call_kind, logit=logit, implementation=impl)
            except MemoryError as e:
                rec["skipped"] = str(e)
                continue
            rec.update(chosen=plan.implementation, block_size=plan.block_size,
                       est_gflop=2 * plan.raw_macs / 1e9, est_peak_mib=plan.peak_bytes / 2**20,
                       est_macs=plan.macs)
            # The plan's efficiency-weighted count (calibrated to the matmul peak, `cost`) at half
            # the peak: a conservative forecast.
            est_seconds = 2 * plan.macs / (0.5 * peak_flops)
            if est_seconds > FLAGS.max_seconds:
                rec["skipped"] = f"estimated {est_seconds:.0f} s"
                log(f"skip {name} n={n} {kind} {impl}: estimated {est_seconds:.0f} s")
                continue
            fns[impl] = _kernel_fn(model, x, call_kind, logit, impl)
        for impl, (seconds, peak) in measure_cell(fns, FLAGS.repeats, _contenders).items():
            rec = cell[impl]
            rec.update(seconds=seconds, peak_mib=peak,
                       gflops=rec["est_gflop"] / seconds,
                       fraction_of_peak=rec["est_gflop"] * 1e9 / seconds / peak_flops)
            log(f"{name:22s} n={n:4d} {kind:6s} {impl:10s} {seconds:9.4f} s  "
                f"peak {peak:8.1f} MiB  ({rec['chosen']}, block {rec['block_size']})")
        records += cell.values()
    naive = []
    for name, n in (("mlp256_8x8", 32), ("cnn16_32x32x3", 16), ("resnet18w16_32x32x3", 8)):
        if name not in built:
            continue
        model = built[name]
        x = tf.random.uniform((n, *MODELS[name][1]), seed=1)
        fns = {impl: _kernel_fn(model, x, "trace", None, impl) for impl in IMPLEMENTATIONS}
        fns["naive"] = lambda model=model, x=x: naive_kernel(model, x, "trace")
        times = measure_cell(fns, FLAGS.repeats, lambda medians: [k for k in medians if k != "naive"])
        naive_s = times["naive"][0]
        entry = dict(model=name, n=n, kind="trace", naive_seconds=naive_s)
        for impl in IMPLEMENTATIONS:
            entry[f"{impl}_seconds"] = times[impl][0]
            entry[f"{impl}_speedup_over_naive"] = naive_s / times[impl][0]
        naive.append(entry)
        log(f"naive {name} n={n}: {naive_s:.3f} s; " + ", ".join(
            f"{impl} {entry[impl + '_speedup_over_naive']:.0f}x" for impl in IMPLEMENTATIONS))
    return dict(matmul_gflops=peak_flops / 1e9, records=records, naive=naive,
                auto=auto_table(records), targets=targets(records, naive))


def auto_table(records):
    """Per cell: the fastest fixed implementation, auto's choice and auto's time over the fastest's."""
    cells = {}
    for r in records:
        cells.setdefault((r["model"], r["n"], r["kind"]), {})[r["implementation"]] = r
    out = []
    for (model, n, kind), cell in cells.items():
        fixed = {k: r["seconds"] for k, r in cell.items() if k != "auto" and "seconds" in r}
        auto = cell.get("auto", {})
        if not fixed or "seconds" not in auto:
            continue
        best = min(fixed, key=fixed.get)
        out.append(dict(model=model, n=n, kind=kind, best=best, best_seconds=fixed[best],
                        auto_chose=auto["chosen"], auto_seconds=auto["seconds"],
                        auto_over_best=auto["seconds"] / fixed[best]))
    return out


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
    for model in ("mlp256_8x8", "mlp2048_32x32x3"):
        t = _time(records, model, 128, "trace", "auto")
        if t:
            out[f"{model}_n128_trace_auto_ms"] = 1e3 * t
    ratios = [c["auto_over_best"] for c in auto_table(records)]
    out["auto_over_fastest_max"] = max(ratios) if ratios else None
    best_vs_jacobian = {}
    for c in auto_table(records):
        j = _time(records, c["model"], c["n"], c["kind"], "jacobian")
        if c["model"].startswith(("cnn", "resnet")) and j:
            best_vs_jacobian[f"{c['model']}/{c['n']}/{c['kind']}"] = j / c["best_seconds"]
    out["conv_best_speedup_over_jacobian"] = best_vs_jacobian
    out["min_speedup_over_naive"] = min(
        (e[f"{impl}_speedup_over_naive"] for e in naive for impl in IMPLEMENTATIONS), default=None)
    return out


def format_table(results):
    """The cells as a table: seconds per implementation, auto's choice, auto over the fastest."""
    lines = [f"matmul peak: {results['matmul_gflops']:.1f} GFLOP/s", "",
             f"{'model':22s} {'N':>4s} {'kind':6s} " + " ".join(
                 f"{impl:>10s}" for impl in IMPLEMENTATIONS) + f"  {'auto chose':10s} {'auto/best':>9s}"]
    cells = {}
    for r in results["records"]:
        cells.setdefault((r["model"], r["n"], r["kind"]), {})[r["implementation"]] = r
    auto = {(c["model"], c["n"], c["kind"]): c for c in results["auto"]}
    for key, cell in cells.items():
        cols = []
        for impl in IMPLEMENTATIONS:
            r = cell.get(impl, {})
            cols.append(f"{r['seconds']:10.4f}" if "seconds" in r else f"{'-':>10s}")
        a = auto.get(key)
        tail = f"  {a['auto_chose']:10s} {a['auto_over_best']:9.3f}" if a else ""
        lines.append(f"{key[0]:22s} {key[1]:4d} {key[2]:6s} " + " ".join(cols) + tail)
    lines += ["", "seconds: median wall time of one call; '-': skipped (estimated over --max_seconds or "
              "over the memory budget)", ""]
    for e in results["naive"]:
        lines.append(f"naive {e['model']} n={e['n']}: {e['naive_seconds']:.3f} s; " + ", ".join(
            f"{impl} {e[impl + '_speedup_over_naive']:.0f}x" for impl in IMPLEMENTATIONS))
    lines += ["", "targets:"] + [f"  {k}: {v}" for k, v in results["targets"].items()]
    return "\n".join(lines) + "\n"


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv):
    del argv

    def log(line):
        print(line)
        sys.stdout.flush()

    results = run_benchmark(log)
    os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
    _write(FLAGS.output, json.dumps(results, indent=1))
    table = format_table(results)
    _write(os.path.splitext(FLAGS.output)[0] + ".txt", table)
    print("\n" + table)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    common.run(main)
