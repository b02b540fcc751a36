r"""ResNet-18 at full width (11.2 M parameters) on 500 CIFAR-shaped images, in bounded memory.

    python -m bench.ntk_resnet500                        # logit-0 kernel, 2 GiB budget
    python -m bench.ntk_resnet500 --kernel_kind=trace --memory_budget_gib=4

One timed call (tens of minutes on 2 CPU cores), with the plan, a progress line per block, the wall
time and the process's peak resident memory above its resident memory before the call. Writes
bench/results/ntk_resnet500.json.
"""

import os
import time

from absl import flags
import numpy as np
import tensorflow as tf

from bench import measure
import tf_ntk
from tf_ntk import models
from tf_ntk import rundir
from tf_ntk.cli import common

flags.DEFINE_integer("n", 500, "Examples.", lower_bound=1)
flags.DEFINE_enum("kernel_kind", "logit", ["logit", "trace"], "logit 0 or the trace kernel.")
flags.DEFINE_float("memory_budget_gib", 2.0, "Memory budget of the kernel computation.", lower_bound=0.01)
flags.DEFINE_enum("nn_implementation", "auto", ["auto", "jacobian", "structured"], "Implementation.")
flags.DEFINE_string("result", os.path.join(os.path.dirname(__file__), "results", "ntk_resnet500.json"),
                    "Where to write the JSON result.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    tf.keras.utils.set_random_seed(0)
    model = models.get("resnet18", 10, (32, 32, 3), width=64, zero_head=False)
    x = tf.random.uniform((FLAGS.n, 32, 32, 3), seed=1)
    budget = int(FLAGS.memory_budget_gib * 2**30)
    logit = 0 if FLAGS.kernel_kind == "logit" else None
    plan = tf_ntk.ntk.plan(model, FLAGS.n, logit=logit, implementation=FLAGS.nn_implementation,
                           memory_budget_bytes=budget)
    print(f"{models.num_params(model):,} parameters, N={FLAGS.n}, {FLAGS.kernel_kind}: {plan}")
    measure.reset_peak()
    base = measure.vm_kib("VmRSS")
    start = time.perf_counter()

    def progress(done, total):
        print(f"  block {done}/{total}  {time.perf_counter() - start:.0f} s", flush=True)

    kernel = tf_ntk.empirical_ntk(model, x, logit=logit, implementation=FLAGS.nn_implementation,
                                  memory_budget_bytes=budget, progress=progress).numpy()
    seconds = time.perf_counter() - start
    peak_mib = (measure.vm_kib("VmHWM") - base) / 1024
    result = {"parameters": models.num_params(model), "n": FLAGS.n, "kind": FLAGS.kernel_kind,
              "implementation": plan.implementation, "block_size": plan.block_size,
              "num_blocks": plan.num_blocks, "budget_mib": budget / 2**20,
              "planned_peak_mib": plan.peak_bytes / 2**20, "seconds": seconds,
              "peak_mib_above_start": peak_mib, "finite": bool(np.isfinite(kernel).all()),
              "symmetric": bool(np.array_equal(kernel, kernel.T))}
    rundir.write_json(FLAGS.result, result)
    print(result)


if __name__ == "__main__":
    common.run(main)
