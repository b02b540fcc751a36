r"""Where robust evaluation spends its time: bench/results/evaluation_profile.json and a table.

    python -m bench.evaluation_profile            # the quick preset's models, 180 test images
    python -m bench.evaluation_profile --examples=60 --output=/tmp/profile.json

Trains the quick preset's adversarial phase-1 model (seed 0, the sweep's own command) and the
centered phase-2 model on clean data from its last spawn, then runs the strong ensemble of the
preset (`tf-ntk-evaluate --attack=strong --strong_restarts=2 --square_queries=250`) member by
member, each on the examples the members before it left robust, as the evaluation does. Per member:

- seconds: its wall time on those examples (tracing and compiling included);
- overhead: the same member on one example (tracing, compiling, per-call set-up);
- passes: the forward-backward passes (forward-only for Square) per example it asks for;
- ideal: one compiled forward-backward over the same examples, timed, × passes;
- seconds / ideal: how far the member is from the speed of its own arithmetic.

Then the side by side of the issue: the whole `evaluate` work (protocol PGD-100 and the strong
ensemble) against a plain compiled L∞ PGD-100 with 3 restarts and 2 losses on the same images,
measured in the same run, as a ratio. Ratios only: these machines are noisy.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import flags
import numpy as np
import tensorflow as tf

from bench import measure
from tf_ntk.cli import common
from tf_ntk import attacks
from tf_ntk import autoattack
from tf_ntk import data
from tf_ntk import dynamics
from tf_ntk import evaluation
from tf_ntk import robustness
from tf_ntk import study

flags.DEFINE_integer("examples", 180, "Test images (the quick preset evaluates 180).", lower_bound=1)
flags.DEFINE_string("workdir", None, "Where the two models are trained (default: a temporary "
                    "directory, removed after).")
flags.DEFINE_string("output", os.path.join(os.path.dirname(__file__), "results",
                                           "evaluation_profile.json"), "The JSON results.")
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_models(root):
    """(phase-1 adversarial checkpoint, centered clean phase-2 checkpoint) of the quick preset,
    trained by the sweep's own commands."""
    preset = study.PRESETS["quick"]
    jobs = {job.name: job for job in study.plan(preset, root)}
    phase1 = jobs[f"phase1/{study.phase1_name('adversarial', 0)}"]
    last = float(preset.phase1_epochs)
    phase2 = jobs[f"phase2/{study.phase2_name('centered', 'clean', 'adversarial', 0, last)}"]
    for job in (phase1, phase2):
        proc = subprocess.run([sys.executable, "-m", job.module, *job.args], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                              check=False)
        if proc.returncode:
            raise RuntimeError(f"{job.name}: {proc.stderr.strip().splitlines()[-1:]}")
    spawn = os.path.join(root, "phase1", study.phase1_name("adversarial", 0), "spawn")
    run2 = os.path.join(root, "phase2", study.phase2_name("centered", "clean", "adversarial", 0, last))
    return (os.path.join(spawn, f"epoch_{study.epoch_name(last)}"),
            os.path.join(run2, "spawn", f"epoch_{study.epoch_name(float(preset.phase2_epochs))}"))


def _passes(member):
    """Forward-backward passes per example (Square: forward passes) the member asks for."""
    if isinstance(member, attacks.PGDConfig):
        return member.steps * member.restarts
    if isinstance(member, autoattack.APGDConfig):
        return member.steps * member.restarts
    if isinstance(member, autoattack.SquareConfig):
        return member.queries * member.restarts
    raise TypeError(type(member).__name__)


def _pass_seconds(fn, x, y, backward):
    """Median seconds of one compiled forward(-backward) pass of ``fn`` over (x, y)."""
    if backward:
        @tf.function(jit_compile=True)
        def step(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(attacks.cross_entropy_loss(y, fn(x)))
            return tape.gradient(loss, x)
    else:
        step = tf.function(lambda x, y: fn(x), jit_compile=True)
    x, y = tf.constant(x), tf.constant(y)
    return measure.median_seconds(lambda: step(x, y).numpy(), repeats=20)


def _profile(checkpoint, x, y, preset):
    model, meta = dynamics.load_model(checkpoint)
    fn = evaluation.inference_fn(model)
    ensemble = robustness.strong(preset.eps, steps=preset.eval_steps, restarts=preset.strong_restarts,
                                 square_queries=preset.square_queries)
    rows, result, total = [], None, 0.0
    for member in ensemble.members:
        survivors = np.flatnonzero(result.correct) if result is not None else np.arange(len(y))
        start = time.perf_counter()
        result = robustness.evaluate(fn, x, y, robustness.Ensemble((member,)), start=result,
                                     batch_size=preset.batch_size)
        seconds = time.perf_counter() - start
        one = survivors[:1] if len(survivors) else np.arange(1)
        start = time.perf_counter()
        robustness.evaluate(fn, x[one], y[one], robustness.Ensemble((member,)),
                            batch_size=preset.batch_size)
        overhead = time.perf_counter() - start
        backward = not isinstance(member, autoattack.SquareConfig)
        per_pass = _pass_seconds(fn, x[survivors], y[survivors], backward) if len(survivors) else 0.0
        ideal = per_pass * _passes(member)
        total += seconds
        if isinstance(member, autoattack.APGDConfig):  # the compiled implementation, same examples
            rows.append(_alternative(fn, x[survivors], y[survivors], member, per_pass, preset))
        rows.append({"member": member.short(), "examples": int(len(survivors)),
                     "passes": _passes(member), "seconds": seconds, "overhead_seconds": overhead,
                     "ideal_seconds": ideal, "ratio_to_ideal": seconds / ideal if ideal else None,
                     "robust_after": float(np.mean(result.correct))})
        print(f"  {rows[-1]['member']:<28} {len(survivors):>4} examples {seconds:7.2f} s "
              f"(one example {overhead:5.2f} s, ideal {ideal:6.2f} s)", flush=True)
    start = time.perf_counter()
    with_tf = robustness.evaluate(fn, x, y, robustness.strong(
        preset.eps, steps=preset.eval_steps, restarts=preset.strong_restarts,
        square_queries=preset.square_queries, apgd_implementation="tf"), batch_size=preset.batch_size)
    tf_seconds = time.perf_counter() - start
    print(f"  the whole ensemble with --apgd=tf: {tf_seconds:.2f} s, robust accuracy "
          f"{with_tf.accuracy:.3f} (with ART's APGD: {total:.2f} s, {result.accuracy:.3f})", flush=True)
    return {"checkpoint": checkpoint, "epoch": meta.get("epoch"), "members": rows,
            "strong_seconds": total, "robust_accuracy": float(np.mean(result.correct)),
            "strong_seconds_apgd_tf": tf_seconds, "robust_accuracy_apgd_tf": with_tf.accuracy,
            "robust_both": float(np.mean(result.correct & with_tf.correct))}


def _alternative(fn, x, y, member, per_pass, preset):
    """The row of ``member`` run by `tf_ntk.apgd` (outside the ensemble) on the same examples,
    with how many it breaks against ART's."""
    native = member.replace(implementation="tf")
    times = []
    for subset in (slice(None), slice(0, 1)):  # all, then one example (the overhead)
        start = time.perf_counter()
        result = robustness.evaluate(fn, x[subset], y[subset], robustness.Ensemble((native,)),
                                     batch_size=preset.batch_size)
        times.append(time.perf_counter() - start)
        if subset == slice(None):
            robust = result.correct
    art = robustness.evaluate(fn, x, y, robustness.Ensemble((member,)), batch_size=preset.batch_size)
    ideal = per_pass * _passes(member)
    print(f"    (alternative) {native.short():<28} {times[0]:7.2f} s, breaks {int(np.sum(~robust))} "
          f"where ART's breaks {int(np.sum(~art.correct))}", flush=True)
    return {"member": native.short(), "alternative": True, "examples": int(len(y)),
            "passes": _passes(member), "seconds": times[0], "overhead_seconds": times[1],
            "ideal_seconds": ideal, "ratio_to_ideal": times[0] / ideal if ideal else None,
            "breaks": int(np.sum(~robust)), "art_breaks": int(np.sum(~art.correct))}


def _side_by_side(checkpoint, x, y, preset):
    """(seconds of the evaluate command's attacks: protocol + strong, seconds of a compiled plain
    PGD-100 x 3 restarts x 2 losses) on the same model and images."""
    model, _ = dynamics.load_model(checkpoint)
    fn = evaluation.inference_fn(model)
    start = time.perf_counter()
    robustness.evaluate(fn, x, y, robustness.protocol(preset.eps, steps=preset.eval_steps),
                        batch_size=preset.batch_size)
    robustness.evaluate(fn, x, y, robustness.strong(
        preset.eps, steps=preset.eval_steps, restarts=preset.strong_restarts,
        square_queries=preset.square_queries), batch_size=preset.batch_size)
    evaluate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for loss in ("ce", "margin"):
        config = attacks.PGDConfig(eps=preset.eps, steps=100, restarts=3, loss=loss, keep="best")
        robustness.evaluate(fn, x, y, config, batch_size=len(y), jit_compile=True)
    return evaluate_seconds, time.perf_counter() - start


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    preset = study.PRESETS["quick"]
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="evaluation-profile-")
    try:
        adversarial, centered = _train_models(root)
        x, y = data.load_arrays(preset.dataset, "test")
        x, y = x[:FLAGS.examples], y[:FLAGS.examples]
        profiles = {}
        for name, checkpoint in (("adversarial phase 1", adversarial), ("centered phase 2", centered)):
            print(f"{name}: {checkpoint}")
            profiles[name] = _profile(checkpoint, x, y, preset)
        evaluate_seconds, plain_seconds = _side_by_side(adversarial, x, y, preset)
    finally:
        if not FLAGS.workdir:
            shutil.rmtree(root, ignore_errors=True)
    result = {"examples": FLAGS.examples, "preset": "quick", "strong_restarts": preset.strong_restarts,
              "square_queries": preset.square_queries, "profiles": profiles,
              "side_by_side": {"evaluate_seconds": evaluate_seconds, "plain_pgd_seconds": plain_seconds,
                               "ratio": evaluate_seconds / plain_seconds}}
    lines = [f"Strong ensemble of the quick preset, member by member, {FLAGS.examples} test images "
             "(each member on what the earlier ones left robust)", ""]
    for name, profile in profiles.items():
        lines += [f"{name} (robust accuracy {profile['robust_accuracy']:.3f}, "
                  f"{profile['strong_seconds']:.1f} s in all)",
                  f"{'member':<28} {'examples':>8} {'passes':>7} {'share':>6} {'one ex. / all':>13} "
                  f"{'time / ideal':>12}"]
        for row in profile["members"]:
            ratio = f"{row['ratio_to_ideal']:.1f}" if row["ratio_to_ideal"] else "-"
            share = "alt." if row.get("alternative") else f"{row['seconds'] / profile['strong_seconds']:.1%}"
            lines.append(f"{row['member']:<28} {row['examples']:>8} {row['passes']:>7} "
                         f"{share:>6} "
                         f"{row['overhead_seconds'] / row['seconds']:>13.2f} {ratio:>12}")
        lines.append(f"whole ensemble with --apgd=tf: {profile['strong_seconds_apgd_tf']:.1f} s "
                     f"({profile['strong_seconds'] / profile['strong_seconds_apgd_tf']:.1f}x faster), "
                     f"robust accuracy {profile['robust_accuracy_apgd_tf']:.3f} (worst case of both: "
                     f"{profile['robust_both']:.3f})")
        lines.append("")
    lines.append("alt.: the compiled tf_ntk.apgd (--apgd=tf) on the examples ART's APGD above it "
                 "attacked, outside the ensemble; breaks: " + "; ".join(
                     f"{r['member']} {r['breaks']} vs ART {r['art_breaks']}"
                     for p in profiles.values() for r in p["members"] if r.get("alternative")))
    lines.append(f"evaluate's attacks (protocol + strong) / compiled plain PGD-100 x3 restarts x2 "
                 f"losses, same model and images: {evaluate_seconds / plain_seconds:.1f}")
    measure.write_results(FLAGS.output, result, "\n".join(lines))


if __name__ == "__main__":
    common.run(main)
