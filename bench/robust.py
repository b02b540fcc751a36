r"""Benchmark of the robust evaluation: bench/results/robust.json and a table.

    python -m bench.robust                  # protocol, strong, strong + sanity report, AutoAttack
    python -m bench.robust --no_autoattack  # without AutoAttack (minutes on 2 cores)

On the whole digits test set (360 images) at ε = 0.2, for a centered CNN (the `make run` CNN
trained 3 clean epochs, then centered phase 2 for 3 epochs on clean data): the wall time and the
robust accuracy of each named attack (`tf_ntk.robustness`), with times as ratios to the protocol's
PGD-100 measured in one run. Target: the strong evaluation of the 360 images in under 2 minutes
on the 2-core machine.
"""

import os
import time

from binaries import quiet  # noqa: F401  (must precede TensorFlow)

# pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import app
from absl import flags
import keras

import tf_ntk
from tf_ntk import checkpoints
from tf_ntk import data
from tf_ntk import evaluation
from tf_ntk import models
from tf_ntk import robustness
from tf_ntk import sanity
from tf_ntk import training

flags.DEFINE_float("eps", 0.2, "L∞ radius in pixel units.")
flags.DEFINE_bool("autoattack", True, "Also time ART's AutoAttack (about 2-3 minutes here).")
flags.DEFINE_string("output", os.path.join(os.path.dirname(__file__), "results", "robust.json"),
                    "Where to write the JSON results.")

FLAGS = flags.FLAGS


def centered_cnn():
    """The `make run` CNN, 3 clean epochs, then a centered model trained 3 clean epochs from it."""
    training.set_seed(0)
    x, y = data.load_arrays("digits", "train")
    net = models.get("cnn", 10, (8, 8, 1))
    net.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x, y, batch_size=128, epochs=3, verbose=0, shuffle=False)
    centered = tf_ntk.linearize(net, centered=True)
    centered.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    centered.fit(x, y, batch_size=128, epochs=3, verbose=0, shuffle=False)
    return centered


def table(rows):
    head = f"{'attack':<28} {'robust':>7} {'seconds':>8} {'/ protocol':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['attack']:<28} {r['robust_accuracy']:>7.3f} {r['seconds']:>8.1f} "
                     f"{r['ratio_to_protocol']:>10.2f}")
    return "\n".join(lines)


def main(argv):
    del argv
    model = centered_cnn()
    fn = evaluation.inference_fn(model)
    x, y = data.load_arrays("digits", "test")
    benign = evaluation.accuracy(fn, evaluation._as_dataset(x, y, 256))  # noqa: SLF001
    runs = [("protocol", lambda: robustness.evaluate(fn, x, y, robustness.protocol(FLAGS.eps)).accuracy),
            ("strong", lambda: robustness.evaluate(fn, x, y, robustness.strong(FLAGS.eps)).accuracy),
            ("strong + sanity report", lambda: sanity.sanity_checks(
                fn, x, y, robustness.strong(FLAGS.eps)).robust)]
    if FLAGS.autoattack:
        runs.append(("autoattack", lambda: robustness.evaluate(
            fn, x, y, robustness.named("autoattack", FLAGS.eps)).accuracy))
    rows = []
    for name, run in runs:
        start = time.perf_counter()
        accuracy = run()
        rows.append({"attack": name, "robust_accuracy": accuracy,
                     "seconds": time.perf_counter() - start})
        print(f"{name}: robust {accuracy:.4f} in {rows[-1]['seconds']:.1f} s", flush=True)
    for r in rows:
        r["ratio_to_protocol"] = r["seconds"] / rows[0]["seconds"]
    result = {"model": "centered CNN (digits, 3+3 epochs)", "examples": len(y), "eps": FLAGS.eps,
              "benign_accuracy": benign, "rows": rows}
    checkpoints.write_json(FLAGS.output, result)
    text = table(rows)
    with open(os.path.splitext(FLAGS.output)[0] + ".txt", "w", encoding="utf-8") as f:
        f.write(f"benign accuracy {benign:.3f}, {len(y)} images, eps {FLAGS.eps}\n{text}\n")
    print(text)


if __name__ == "__main__":
    app.run(main)
