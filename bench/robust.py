r"""Benchmark of the robust evaluation: bench/results/robust.json and a table.

    python -m bench.robust                  # protocol, strong, strong + sanity report, AutoAttack
    python -m bench.robust --nosanity       # without the sanity report (the slow part)

On the whole digits test set (360 images) at ε = 0.2, for a centered CNN (the `make run` one:
centered phase 2 on clean data from an adversarially trained spawn): the wall time and the
robust accuracy of each named attack (`tf_ntk.robust.ensembles`), with times as ratios to the protocol's
PGD-100 measured in one run. Target: the strong evaluation of the 360 images in under 2 minutes
on the 2-core machine.
"""

import os
import tempfile
import time

from absl import app
from absl import flags

from tf_ntk import data
from tf_ntk import dynamics
from tf_ntk import models
from tf_ntk import rundir
from tf_ntk import training
from tf_ntk.robust import attacks
from tf_ntk.robust import ensembles
from tf_ntk.robust import evaluation
from tf_ntk.robust import sanity

flags.DEFINE_float("eps", 0.2, "L∞ radius in pixel units.")
flags.DEFINE_bool("autoattack", True, "Also time ART's AutoAttack (about 2 minutes here).")
flags.DEFINE_bool("sanity", True, "Also time the sanity report on the strong attack (minutes).")
flags.DEFINE_string("output", os.path.join(os.path.dirname(__file__), "results", "robust.json"),
                    "Where to write the JSON results.")

FLAGS = flags.FLAGS


def centered_cnn(workdir):
    """The `make run` pair: the CNN trained 4 epochs adversarially (clean_then_adv, PGD-10, ε = 0.2),
    then a centered model trained 3 clean epochs from its epoch-1 spawn. The adversarial spawn
    keeps examples robust, so every attack has work to do (the slow case)."""
    spec = models.spec("cnn", 10, (8, 8, 1))

    def train_data(config):
        return lambda epoch: data.load("digits", "train", batch_size=config.batch_size, shuffle=True,
                                       seed=config.effective_data_seed, epoch=epoch)

    phase1 = training.TrainConfig.phase1(epochs=4, data_mode="adv", adv_mode="clean_then_adv",
                                         attack=attacks.PGDConfig(eps=FLAGS.eps, steps=10),
                                         model=spec, save_epochs=(1,))
    training.set_seed(0)
    training.train(models.build(spec), train_data(phase1), phase1, os.path.join(workdir, "adv"))
    spawn = os.path.join(workdir, "adv", "spawn", "epoch_1")
    phase2 = training.TrainConfig.phase2(dynamics="centered", spawn=spawn, epochs=3, model=spec,
                                         save_epochs=(3,))
    centered, _ = dynamics.load_model(spawn, dynamics="centered")
    training.train(centered, train_data(phase2), phase2, os.path.join(workdir, "centered"))
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
    with tempfile.TemporaryDirectory() as workdir:
        model = centered_cnn(workdir)
    fn = evaluation.inference_fn(model)
    x, y = data.load_arrays("digits", "test")
    benign = evaluation.accuracy(fn, evaluation.as_dataset(x, y, 256))
    runs = [("protocol", lambda: ensembles.evaluate(fn, x, y, ensembles.protocol(FLAGS.eps)).accuracy),
            ("strong", lambda: ensembles.evaluate(fn, x, y, ensembles.strong(FLAGS.eps)).accuracy)]
    if FLAGS.sanity:
        def strong_and_sanity():  # as tf-ntk-evaluate --sanity_checks runs them: the report reuses the outcome
            attack = ensembles.strong(FLAGS.eps)
            base = ensembles.evaluate(fn, x, y, attack)
            return sanity.sanity_checks(fn, x, y, attack, base=base).worst_case

        runs.append(("strong + sanity report", strong_and_sanity))
    if FLAGS.autoattack:
        runs.append(("autoattack", lambda: ensembles.evaluate(
            fn, x, y, ensembles.named("autoattack", FLAGS.eps)).accuracy))
    rows = []
    for name, run in runs:
        start = time.perf_counter()
        accuracy = run()
        rows.append({"attack": name, "robust_accuracy": accuracy,
                     "seconds": time.perf_counter() - start})
        print(f"{name}: robust {accuracy:.4f} in {rows[-1]['seconds']:.1f} s", flush=True)
    for r in rows:
        r["ratio_to_protocol"] = r["seconds"] / rows[0]["seconds"]
    result = {"model": "centered CNN, clean phase 2 (3 epochs) from an adversarial spawn (epoch 1)",
              "examples": len(y), "eps": FLAGS.eps,
              "benign_accuracy": benign, "rows": rows}
    rundir.write_json(FLAGS.output, result)
    text = table(rows)
    with open(os.path.splitext(FLAGS.output)[0] + ".txt", "w", encoding="utf-8") as f:
        f.write(f"benign accuracy {benign:.3f}, {len(y)} images, eps {FLAGS.eps}\n{text}\n")
    print(text)


if __name__ == "__main__":
    app.run(main)
