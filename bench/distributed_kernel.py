r"""Kernels spread out: MirroredStrategy replicas vs one device, and shards as processes vs one process.

    python -m bench.distributed_kernel            # ResNet-18 width 16, N = 256 (minutes on 2 cores)
    python -m bench.distributed_kernel --smoke    # toy sizes, seconds

The per-logit kernel (logit 0, float32, the implementation `auto` picks) of ResNet-18 (CIFAR form) on
N random 32x32x3 images, in blocks of N/4:
  - in this process, `empirical_ntk` on one device, then with ``strategy=`` MirroredStrategy over two
    logical CPU devices (the same blocks, two per round); each after a warm-up call that traces them;
  - `tf_ntk.ntk.kernel_shards` tiles: one process computing all of them, then two processes started
    together computing one shard each (then assembled), wall time from start to the assembled
    kernel, process start-up (importing TensorFlow) and tracing included, as a scheduler would see.
Writes bench/results/distributed_kernel.json and .txt; the ratios are measured in one run. On a
machine whose cores one device already keeps busy (this one: 2 cores), splitting cannot be faster;
the numbers say what the split costs there, and on several GPUs or hosts it is what scales.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import tensorflow as tf

# Two logical CPU devices for MirroredStrategy; must happen before TensorFlow starts its runtime.
if __name__ == "__main__" and "--shard_worker" not in " ".join(sys.argv):
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from absl import flags
import keras
import numpy as np

from bench import measure
import tf_ntk
from tf_ntk import models
from tf_ntk.cli import common
from tf_ntk.ntk import kernel_shards

flags.DEFINE_bool("smoke", False, "Toy sizes (width 2, N = 16) so the code runs in seconds.")
flags.DEFINE_string("shard_worker", None, "Internal: JSON {dir, shard, num_shards, sizes} of one shard.")
flags.DEFINE_string("output", None, "JSON path (default bench/results/distributed_kernel[_smoke].json).")
FLAGS = flags.FLAGS

FULL = {"width": 16, "n": 256}
SMOKE = {"width": 2, "n": 16}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_and_inputs(sizes):
    keras.utils.set_random_seed(0)
    model = models.get("resnet18", 10, (32, 32, 3), width=sizes["width"], zero_head=False)
    x = np.random.default_rng(0).uniform(size=(sizes["n"], 32, 32, 3)).astype(np.float32)
    return model, x


def _shard(spec):
    """One shard's tiles, in this (sub)process."""
    model, x = _model_and_inputs(spec["sizes"])
    kernel_shards.compute_shard(model, x, spec["dir"], shard=spec["shard"], num_shards=spec["num_shards"],
                                block_size=spec["sizes"]["n"] // 4, key="bench", logit=0)


def _processes(sizes, num_shards, directory):
    """Seconds from starting ``num_shards`` shard processes together to the assembled kernel."""
    start = time.perf_counter()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bench.distributed_kernel", "--shard_worker=" + json.dumps(
            {"dir": directory, "shard": k, "num_shards": num_shards, "sizes": sizes})], cwd=ROOT)
        for k in range(num_shards)]
    if any(p.wait() for p in procs):
        raise RuntimeError("a shard process failed")
    kernel = kernel_shards.assemble(directory, sizes["n"], sizes["n"] // 4)
    return time.perf_counter() - start, kernel


def measure_kernels(sizes):
    model, x = _model_and_inputs(sizes)
    block = sizes["n"] // 4
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    seconds, kernels = {}, {}
    for name, kw in (("one_device", {}), ("mirrored_2_cpus", {"strategy": strategy})):
        tf_ntk.empirical_ntk(model, x[:2 * block], logit=0, block_size=block, **kw)  # traces the blocks
        start = time.perf_counter()
        kernels[name] = tf_ntk.empirical_ntk(model, x, logit=0, block_size=block, **kw).numpy()
        seconds[name] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        seconds["one_process"], kernels["one_process"] = _processes(sizes, 1, os.path.join(tmp, "one"))
        seconds["two_processes"], kernels["two_processes"] = _processes(sizes, 2, os.path.join(tmp, "two"))
    scale = float(np.abs(kernels["one_device"]).max())
    return {
        "parameters": models.num_params(model), "sizes": sizes, "block_size": block,
        "implementation": tf_ntk.ntk.plan(model, sizes["n"], logit=0, block_size=block).implementation,
        "seconds": seconds,
        "ratios": {"mirrored_2_cpus / one_device": seconds["mirrored_2_cpus"] / seconds["one_device"],
                   "two_processes / one_process": seconds["two_processes"] / seconds["one_process"]},
        "max_relative_difference_to_one_device": {
            k: float(np.abs(v - kernels["one_device"]).max() / scale) for k, v in kernels.items()},
        "cpu_cores": os.cpu_count()}


def table(result):
    r, s = result["ratios"], result["seconds"]
    return "\n".join([
        f"per-logit kernel of ResNet-18 width {result['sizes']['width']} ({result['parameters']:,} parameters), "
        f"N = {result['sizes']['n']}, blocks of {result['block_size']} ({result['implementation']}), "
        f"{result['cpu_cores']} cores",
        f"MirroredStrategy over 2 logical CPUs / one device: {r['mirrored_2_cpus / one_device']:.2f} "
        f"({s['mirrored_2_cpus']:.1f} s / {s['one_device']:.1f} s)",
        f"2 shards as 2 processes / 1 process (start-up included): {r['two_processes / one_process']:.2f} "
        f"({s['two_processes']:.1f} s / {s['one_process']:.1f} s)",
        "largest difference to the one-device kernel (relative to its largest entry): " + ", ".join(
            f"{k} {v:.1e}" for k, v in result["max_relative_difference_to_one_device"].items())])


def main(argv):
    del argv
    if FLAGS.shard_worker:
        _shard(json.loads(FLAGS.shard_worker))
        return
    result = measure_kernels(SMOKE if FLAGS.smoke else FULL)
    output = FLAGS.output or os.path.join(ROOT, "bench", "results",
                                          f"distributed_kernel{'_smoke' if FLAGS.smoke else ''}.json")
    measure.write_results(output, result, table(result))


if __name__ == "__main__":
    common.run(main)
