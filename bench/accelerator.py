r"""The accelerator check: the protocol's full-width ResNet-18 steps and kernel on one device.

    python -m bench.accelerator             # on a GPU (or TPU VM): ~8 minutes
    python -m bench.accelerator --smoke     # any CPU, seconds: the same code at toy sizes

On CIFAR-shaped random data (batch 128, 32x32x3), the median time (after a warm-up call that
traces and compiles) of the standard, adversarial (PGD-10, the protocol's clean-then-adversarial
step) and linearized (phase 2) train steps of ResNet-18 width 64 (11.2 M parameters), each without
and with XLA (``jit_compile``), and of the per-logit kernel on 500 images (the protocol's probe set
size), with the implementation `auto` picks. Writes bench/results/accelerator_<device>.json (device:
gpu, tpu or cpu; ``smoke`` in the name for --smoke) and prints a table; ratios to the standard step
are measured in one run.
"""

import os
import time

from absl import flags
import keras
import numpy as np
import tensorflow as tf

from bench import measure
import tf_ntk
from tf_ntk import models
from tf_ntk import training
from tf_ntk.cli import common
from tf_ntk.robust import attacks

flags.DEFINE_bool("smoke", False, "Toy sizes (ResNet-18 width 2, batch 8, 16 kernel images) so the "
                  "script's code runs on any CPU in seconds; its numbers mean nothing.")
flags.DEFINE_integer("repeats", 5, "Timed calls per step (after one warm-up).", lower_bound=1)
flags.DEFINE_string("output", None, "JSON path (default bench/results/accelerator_<device>.json).")
FLAGS = flags.FLAGS

FULL = {"width": 64, "batch": 128, "kernel_images": 500, "attack_steps": 10}
SMOKE = {"width": 2, "batch": 8, "kernel_images": 16, "attack_steps": 2}


def device_kind():
    """gpu, tpu or cpu: what tf.distribute's default device is."""
    if tf.config.list_logical_devices("TPU"):
        return "tpu"
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def device_model(kind):
    """The accelerator's model name ("NVIDIA H100 80GB HBM3", "TPU v4"), or the CPU's."""
    if kind == "gpu":
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        return details.get("device_name", "GPU")
    if kind == "tpu":
        return tf.config.list_logical_devices("TPU")[0].name
    return f"CPU ({os.cpu_count()} cores)"


def _step(model, config, adversarial, batch):
    optimizer = keras.optimizers.SGD(config.lr, momentum=config.momentum)
    step = training.TrainSteps(model, optimizer, config, tf.distribute.get_strategy()).make(adversarial)
    seed = tf.constant([0, 0], tf.int64)
    return lambda: [t.numpy() for t in step(batch, seed, tf.constant(0.0))]


def measure_steps(sizes, repeats):
    """{"steps": {name: seconds}, "ratios": {...}, "kernel_seconds", ...} for ``sizes``."""
    keras.utils.set_random_seed(0)
    spec = models.spec("resnet18", 10, (32, 32, 3), width=sizes["width"])
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(sizes["batch"], 32, 32, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, sizes["batch"]).astype(np.int32))
    attack = attacks.PGDConfig(eps=4 / 255, steps=sizes["attack_steps"])
    steps = {}
    for jit in (False, True):
        base = dict(batch_size=sizes["batch"], attack=attack, jit_compile=jit, model=spec)
        tag = "xla" if jit else "tf"
        steps[f"standard_{tag}"] = measure.median_seconds(
            _step(models.build(spec), training.TrainConfig(**base), False, (x, y)), repeats)
        adv = training.TrainConfig(data_mode="adv", adv_mode="clean_then_adv", **base)
        steps[f"adversarial_{tag}"] = measure.median_seconds(_step(models.build(spec), adv, True, (x, y)),
                                              max(1, repeats // 2))
        lin = tf_ntk.linearize(models.build(spec))
        steps[f"linearized_{tag}"] = measure.median_seconds(
            _step(lin, training.TrainConfig.phase2(dynamics="linearized", **base), False, (x, y)), repeats)
    model = models.build(spec)
    probe = tf.constant(rng.uniform(size=(sizes["kernel_images"], 32, 32, 3)).astype(np.float32))
    plan = tf_ntk.ntk.plan(model, sizes["kernel_images"], logit=0)
    start = time.perf_counter()
    kernel = tf_ntk.empirical_ntk(model, probe, logit=0).numpy()
    kernel_seconds = time.perf_counter() - start
    assert kernel.shape == (sizes["kernel_images"],) * 2 and np.isfinite(kernel).all()
    return {"parameters": models.num_params(model), "steps_seconds": steps,
            "ratios": {k: v / steps["standard_tf"] for k, v in steps.items()},
            "kernel_seconds": kernel_seconds, "kernel_implementation": plan.implementation,
            "kernel_blocks": plan.num_blocks}


def table(result):
    lines = [f"ResNet-18 width {result['sizes']['width']} ({result['parameters']:,} parameters), batch "
             f"{result['sizes']['batch']}, on {result['device']}{' (smoke)' if result['smoke'] else ''}",
             f"{'step':<14} {'TensorFlow':>12} {'XLA':>12} {'XLA / TF':>9}"]
    for name in ("standard", "adversarial", "linearized"):
        tf_s, xla_s = result["steps_seconds"][f"{name}_tf"], result["steps_seconds"][f"{name}_xla"]
        lines.append(f"{name:<14} {tf_s * 1e3:>10.1f}ms {xla_s * 1e3:>10.1f}ms {xla_s / tf_s:>9.2f}")
    lines.append(f"per-logit kernel on {result['sizes']['kernel_images']} images: "
                 f"{result['kernel_seconds']:.1f} s ({result['kernel_implementation']}, "
                 f"{result['kernel_blocks']} blocks)")
    return "\n".join(lines)


def main(argv):
    del argv
    sizes = SMOKE if FLAGS.smoke else FULL
    device = device_kind()
    result = {"device": device, "device_names": [d.name for d in tf.config.list_logical_devices()],
              "device_model": device_model(device),
              "smoke": FLAGS.smoke, "sizes": sizes, **measure_steps(sizes, 1 if FLAGS.smoke else FLAGS.repeats)}
    name = f"accelerator_{device}{'_smoke' if FLAGS.smoke else ''}.json"
    output = FLAGS.output or os.path.join(os.path.dirname(__file__), "results", name)
    measure.write_results(output, result, table(result))


if __name__ == "__main__":
    common.run(main)
