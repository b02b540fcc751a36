r"""Benchmark of the train and attack steps: bench/results/steps.json and a table.

    python -m bench.steps                 # MLP, CNN, narrow ResNet-18 on 32x32x3, batch 128
    python -m bench.steps --quick         # MLP and CNN only
    python -m bench.steps --jit_compile   # the same steps compiled with XLA

For each model, on one batch of random images: the median time (after a warm-up call) of
  * the standard, linearized and centered train steps (clean data), as ratios to the standard step
    (target ≤ 1.5x);
  * the PGD-20 adversarial steps, ``madry`` and ``clean_then_adv``, as ratios to the standard step
    against their floors of 21 and 22 forward-backward passes (target within 1.1x of the floor);
  * the PGD-20 attack alone, in images per second.
Ratios are measured in one run; absolute times depend on the machine.
"""

import os

from absl import flags
import keras
import numpy as np
import tensorflow as tf

from bench import measure
import tf_ntk
from tf_ntk import models
from tf_ntk import rundir
from tf_ntk import training
from tf_ntk.cli import common
from tf_ntk.robust import attacks

flags.DEFINE_bool("quick", False, "Only the MLP and the CNN.")
flags.DEFINE_bool("jit_compile", False, "Compile the steps with XLA.")
flags.DEFINE_integer("batch_size", 128, "Batch size (the protocol's 128).")
flags.DEFINE_integer("repeats", 5, "Timed calls per step (after one warm-up).")
flags.DEFINE_string("output", os.path.join(os.path.dirname(__file__), "results", "steps.json"),
                    "Where to write the JSON results.")
FLAGS = flags.FLAGS

MODELS = {
    "mlp256": ("mlp", (32, 32, 3), {"width": 256}),
    "cnn16": ("cnn", (32, 32, 3), {"width": 16}),
    "resnet18w16": ("resnet18", (32, 32, 3), {"width": 16, "zero_head": False}),
}
ATTACK_STEPS = 20
FLOORS = {"madry": ATTACK_STEPS + 1, "clean_then_adv": ATTACK_STEPS + 2}


def _step_timer(model, config, adversarial, batch):
    optimizer = keras.optimizers.SGD(config.lr, momentum=config.momentum)
    steps = training.TrainSteps(model, optimizer, config, tf.distribute.get_strategy())
    step = steps.make(adversarial)
    seed = tf.constant([0, 0], tf.int64)
    return lambda: [t.numpy() for t in step(batch, seed, tf.constant(0.0))]


def bench_model(key):
    name, shape, options = MODELS[key]
    keras.utils.set_random_seed(0)
    spec = models.spec(name, 10, shape, **options)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(FLAGS.batch_size,) + shape).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, FLAGS.batch_size).astype(np.int32))
    attack = attacks.PGDConfig(eps=4 / 255, steps=ATTACK_STEPS)
    base = dict(batch_size=FLAGS.batch_size, attack=attack, jit_compile=FLAGS.jit_compile, model=spec)
    row = {"model": key, "parameters": None, "batch_size": FLAGS.batch_size,
           "jit_compile": FLAGS.jit_compile}
    times = {}
    net = models.build(spec)
    row["parameters"] = models.num_params(net)
    times["standard"] = measure.median_seconds(
        _step_timer(net, training.TrainConfig(**base), False, (x, y)), FLAGS.repeats)
    for dynamics in ("linearized", "centered"):
        lin = tf_ntk.linearize(models.build(spec), centered=dynamics == "centered")
        config = training.TrainConfig.phase2(dynamics=dynamics, **base)
        times[dynamics] = measure.median_seconds(_step_timer(lin, config, False, (x, y)), FLAGS.repeats)
    for adv_mode in ("madry", "clean_then_adv"):
        config = training.TrainConfig(data_mode="adv", adv_mode=adv_mode, **base)
        times[f"pgd{ATTACK_STEPS}_{adv_mode}"] = measure.median_seconds(
            _step_timer(models.build(spec), config, True, (x, y)), max(2, FLAGS.repeats // 2))
    model_fn = lambda t: net(t, training=False)  # noqa: E731
    attack_fn = tf.function(lambda a, b, s: attack.attack(model_fn, a, b, seed=s),
                            jit_compile=FLAGS.jit_compile)
    seed = tf.constant([0, 1], tf.int64)
    times["attack"] = measure.median_seconds(lambda: attack_fn(x, y, seed).numpy(), FLAGS.repeats)
    row["seconds"] = times
    std = times["standard"]
    row["ratio_to_standard"] = {k: v / std for k, v in times.items() if k != "standard"}
    row["attack_images_per_second"] = FLAGS.batch_size / times["attack"]
    row["adv_over_floor"] = {m: times[f"pgd{ATTACK_STEPS}_{m}"] / std / f for m, f in FLOORS.items()}
    return row


def table(rows):
    head = (f"{'model':<12} {'params':>10} {'std step':>9} {'lin/std':>8} {'cen/std':>8} "
            f"{'madry/std':>10} {'(floor 21)':>10} {'c→a/std':>8} {'(floor 22)':>10} {'PGD-20 img/s':>13}")
    lines = [head, "-" * len(head)]
    for r in rows:
        q = r["ratio_to_standard"]
        lines.append(
            f"{r['model']:<12} {r['parameters']:>10,} {r['seconds']['standard'] * 1e3:>7.1f}ms "
            f"{q['linearized']:>8.2f} {q['centered']:>8.2f} {q['pgd20_madry']:>10.1f} "
            f"{r['adv_over_floor']['madry']:>9.2f}x {q['pgd20_clean_then_adv']:>8.1f} "
            f"{r['adv_over_floor']['clean_then_adv']:>9.2f}x {r['attack_images_per_second']:>13.0f}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    keys = ["mlp256", "cnn16"] if FLAGS.quick else list(MODELS)
    rows = []
    for key in keys:
        rows.append(bench_model(key))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    result = {"batch_size": FLAGS.batch_size, "jit_compile": FLAGS.jit_compile,
              "attack_steps": ATTACK_STEPS, "floors": FLOORS, "rows": rows,
              "cpu_count": os.cpu_count()}
    rundir.write_json(FLAGS.output, result)
    text = table(rows)
    with open(os.path.splitext(FLAGS.output)[0] + ".txt", "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    common.run(main)
