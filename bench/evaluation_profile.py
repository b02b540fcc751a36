r"""Where robust evaluation spends its time: bench/results/evaluation_profile.json and a table.

    python -m bench.evaluation_profile            # the quick preset's models, 180 test images
    python -m bench.evaluation_profile --examples=60 --output=/tmp/profile.json

Trains the quick preset's adversarial phase-1 model (seed 0, the sweep's own command) and the
centered phase-2 model on clean data from its last spawn, then runs the strong ensemble of the
preset (`tf-ntk-evaluate --attack=strong --strong_restarts=2 --square_queries=250`) on 180 test
images, as the evaluation does, three ways:

- before: the code before issue 23 (ART's APGD and Square, one traced function per member);
- now, cold: the ensemble as ``tf-ntk-evaluate`` runs it in a fresh process (tracing included:
  one traced function per attack family, shared by the members);
- now, member by member on those traces, each on the examples the members before it left robust:
  seconds, passes (forward-backward passes per example; forward for Square), ideal (one compiled
  forward-backward call over the same examples, timed, × passes), arithmetic (the same passes
  timed inside one compiled loop, without per-call dispatch) and the ratios.

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
from tf_ntk import data
from tf_ntk import dynamics
from tf_ntk import rundir
from tf_ntk.cli import common
from tf_ntk.robust import attacks
from tf_ntk.robust import autoattack
from tf_ntk.robust import ensembles
from tf_ntk.robust import evaluation
from tf_ntk.study import plan
from tf_ntk.study import presets

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
    preset = presets.PRESETS["quick"]
    jobs = {job.name: job for job in plan.plan(preset, root)}
    phase1 = jobs[f"phase1/{plan.phase1_name('adversarial', 0)}"]
    last = float(preset.phase1_epochs)
    phase2 = jobs[f"phase2/{plan.phase2_name('centered', 'clean', 'adversarial', 0, last)}"]
    for job in (phase1, phase2):
        _subprocess(["-m", job.module, *job.args])
    spawn = os.path.join(root, "phase1", plan.phase1_name("adversarial", 0), "spawn")
    run2 = os.path.join(root, "phase2", plan.phase2_name("centered", "clean", "adversarial", 0, last))
    return (os.path.join(spawn, f"epoch_{plan.epoch_name(last)}"),
            os.path.join(run2, "spawn", f"epoch_{plan.epoch_name(float(preset.phase2_epochs))}"))


def _passes(member):
    """Forward-backward passes per example (Square: forward passes) the member asks for."""
    if isinstance(member, (attacks.PGDConfig, autoattack.APGDConfig)):
        return member.steps * member.restarts
    if isinstance(member, autoattack.SquareConfig):
        return member.queries * member.restarts
    raise TypeError(type(member).__name__)


def _pass_seconds(fn, x, y, backward, passes=20):
    """(seconds of one forward(-backward) pass of ``fn`` over (x, y) as one XLA-compiled call,
    timed (the issue's ideal: it includes one call's dispatch), seconds of one pass when ``passes``
    of them run in one XLA-compiled loop, each at an input nudged by the last so that none can be
    skipped (the bare arithmetic))."""
    def one(point, y):
        if backward:
            with tf.GradientTape() as tape:
                tape.watch(point)
                loss = tf.reduce_sum(attacks.cross_entropy_loss(y, fn(point)))
            return 1e-6 * tf.sign(tape.gradient(loss, point))
        return 1e-9 * tf.reduce_sum(fn(point)) + tf.zeros_like(point)

    single = tf.function(one, jit_compile=True)

    @tf.function(jit_compile=True)
    def loop(x, y):
        return tf.while_loop(lambda i, _: i < passes, lambda i, d: (i + 1, d + one(x + d, y)),
                             (tf.constant(0), tf.zeros_like(x)))[1]

    x, y = tf.constant(x), tf.constant(y)
    return (measure.median_seconds(lambda: single(x, y).numpy(), repeats=20),
            measure.median_seconds(lambda: loop(x, y).numpy(), repeats=7) / passes)


def _ensemble(preset, implementation, apgd_restarts=None):
    return ensembles.strong(preset.eps, steps=preset.eval_steps, restarts=preset.strong_restarts,
                             square_queries=preset.square_queries, implementation=implementation,
                             apgd_restarts=apgd_restarts)


def _before(fn, x, y, preset):
    """(seconds, result) of the code before issue 23: ART's APGD (5 starts, whatever the preset's
    restarts) and Square, and one traced function per member (each member gets a fresh callable,
    so nothing is shared between them)."""
    result, start = None, time.perf_counter()
    for member in _ensemble(preset, "art", apgd_restarts=5).members:
        result = ensembles.evaluate(lambda v: fn(v), x, y, ensembles.Ensemble((member,)),
                                     start=result, batch_size=preset.batch_size)
    return time.perf_counter() - start, result


def _profile(checkpoint, x, y, preset):
    model, meta = dynamics.load_model(checkpoint)
    fn = evaluation.inference_fn(model)
    ensemble = _ensemble(preset, "tf")
    before_seconds, before = _before(fn, x, y, preset)
    print(f"  before: {before_seconds:.2f} s, robust accuracy {before.accuracy:.3f}", flush=True)
    cold = lambda v: fn(v)  # noqa: E731  (a fresh callable: its traces are made in this call)
    start = time.perf_counter()
    after = ensembles.evaluate(cold, x, y, ensemble, batch_size=preset.batch_size)
    after_seconds = time.perf_counter() - start
    print(f"  after: {after_seconds:.2f} s, robust accuracy {after.accuracy:.3f}", flush=True)
    rows, result, warm_total = [], None, 0.0
    for member in ensemble.members:  # again, member by member, on the traces made above
        survivors = np.flatnonzero(result.correct) if result is not None else np.arange(len(y))
        start = time.perf_counter()
        result = ensembles.evaluate(cold, x, y, ensembles.Ensemble((member,)), start=result,
                                     batch_size=preset.batch_size)
        seconds = time.perf_counter() - start
        warm_total += seconds
        backward = not isinstance(member, autoattack.SquareConfig)
        call, bare = (_pass_seconds(fn, x[survivors], y[survivors], backward) if len(survivors)
                      else (0.0, 0.0))
        ideal, arithmetic = call * _passes(member), bare * _passes(member)
        rows.append({"member": member.short(), "examples": int(len(survivors)),
                     "passes": _passes(member), "seconds": seconds, "ideal_seconds": ideal,
                     "ratio_to_ideal": seconds / ideal if ideal else None,
                     "arithmetic_seconds": arithmetic,
                     "ratio_to_arithmetic": seconds / arithmetic if arithmetic else None,
                     "robust_after": float(np.mean(result.correct))})
        print(f"  {rows[-1]['member']:<28} {len(survivors):>4} examples {seconds:7.3f} s "
              f"(ideal {ideal:6.3f} s, arithmetic {arithmetic:6.3f} s)", flush=True)
    return {"checkpoint": checkpoint, "epoch": meta.get("epoch"), "members": rows,
            "before_seconds": before_seconds, "before_robust_accuracy": before.accuracy,
            "after_seconds": after_seconds, "robust_accuracy": after.accuracy,
            "tracing_seconds": after_seconds - warm_total, "warm_seconds": warm_total,
            "robust_both": float(np.mean(before.correct & after.correct)),
            "broken_by_art_only": int(np.sum(~before.correct & after.correct)),
            "broken_by_tf_only": int(np.sum(~after.correct & before.correct))}


def _side_by_side(checkpoint, x, y, preset):
    """(seconds of the evaluate command's attacks: protocol + strong, seconds of a compiled plain
    PGD-100 x 3 restarts x 2 losses) on the same model and images, each from a fresh callable
    (tracing and compiling included, as in a fresh process)."""
    model, _ = dynamics.load_model(checkpoint)
    fn = evaluation.inference_fn(model)
    cold = lambda v: fn(v)  # noqa: E731
    start = time.perf_counter()
    ensembles.evaluate(cold, x, y, ensembles.protocol(preset.eps, steps=preset.eval_steps),
                        batch_size=preset.batch_size)
    ensembles.evaluate(cold, x, y, _ensemble(preset, "tf"), batch_size=preset.batch_size)
    evaluate_seconds = time.perf_counter() - start
    plain = lambda v: fn(v)  # noqa: E731
    start = time.perf_counter()
    for loss in ("ce", "margin"):
        config = attacks.PGDConfig(eps=preset.eps, steps=100, restarts=3, loss=loss, keep="best")
        ensembles.evaluate(plain, x, y, config, batch_size=len(y), jit_compile=True)
    return evaluate_seconds, time.perf_counter() - start


def _subprocess(args):
    """Seconds of ``python args`` in a fresh process, from the checkout's root."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args[:2])}: {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def _training(root, preset):
    """Per training job of the quick preset (phase-1 adversarial, centered phase 2 on clean and on
    adversarial data from the last spawn), run by the sweep's command in a fresh process: seconds
    beyond the process's start-up (importing TensorFlow and tf_ntk, measured alone), its epochs'
    seconds from its history.json, and the ideal: every epoch at the speed of the later ones
    (compiled steps, nothing traced)."""
    jobs = {job.name: job for job in plan.plan(preset, root)}
    last = float(preset.phase1_epochs)
    names = [f"phase1/{plan.phase1_name('adversarial', 0)}"]
    names += [f"phase2/{plan.phase2_name('centered', mode, 'adversarial', 0, last)}"
              for mode in ("clean", "adv")]
    train_size = len(data.load_arrays(preset.dataset, "train")[1])
    start_up = float(np.median([_subprocess(["-c", "import tf_ntk.cli.train"]) for _ in range(3)]))
    rows = []
    for name in names:
        job = jobs[name]
        workdir = os.path.join(root, "profile-" + name.replace("/", "-"))
        args = [a for a in job.args if not a.startswith("--workdir=")] + [f"--workdir={workdir}"]
        wall = _subprocess(["-m", job.module, *args]) - start_up
        epochs = [e["seconds"] for e in rundir.read_json(os.path.join(workdir, "history.json"),
                                                                    "history", expect=list)]
        steady = float(np.median(epochs[1:])) if len(epochs) > 1 else epochs[0]
        steps = -(-train_size // preset.batch_size)
        rows.append({"job": name, "seconds": wall, "start_up_seconds": start_up,
                     "epochs": len(epochs), "steps_per_epoch": steps,
                     "first_epoch_seconds": epochs[0], "steady_epoch_seconds": steady,
                     "step_seconds": steady / steps, "ideal_seconds": steady * len(epochs),
                     "outside_epochs_seconds": wall - sum(epochs)})
        print(f"  {name}: {wall:.2f} s beyond start-up, {len(epochs)} epochs of {steps} steps, "
              f"first epoch {epochs[0]:.2f} s, later ones {steady:.3f} s", flush=True)
    return rows


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    preset = presets.PRESETS["quick"]
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
        print("training jobs")
        training_rows = _training(root, preset)
    finally:
        if not FLAGS.workdir:
            shutil.rmtree(root, ignore_errors=True)
    result = {"examples": FLAGS.examples, "preset": "quick", "strong_restarts": preset.strong_restarts,
              "square_queries": preset.square_queries, "profiles": profiles,
              "training": training_rows,
              "side_by_side": {"evaluate_seconds": evaluate_seconds, "plain_pgd_seconds": plain_seconds,
                               "ratio": evaluate_seconds / plain_seconds}}
    lines = [f"Strong ensemble of the quick preset, {FLAGS.examples} test images, "
             f"--strong_restarts={preset.strong_restarts} --square_queries={preset.square_queries}", ""]
    for name, profile in profiles.items():
        lines += [f"{name}: before (ART's APGD and Square, one trace per member) "
                  f"{profile['before_seconds']:.1f} s, robust accuracy "
                  f"{profile['before_robust_accuracy']:.3f}; now {profile['after_seconds']:.1f} s "
                  f"({profile['before_seconds'] / profile['after_seconds']:.1f}x faster), robust "
                  f"accuracy {profile['robust_accuracy']:.3f} (worst case of both "
                  f"{profile['robust_both']:.3f}: broken only before {profile['broken_by_art_only']}, "
                  f"only now {profile['broken_by_tf_only']})",
                  f"  of which tracing (once per attack family and model) "
                  f"{profile['tracing_seconds']:.1f} s, attacking {profile['warm_seconds']:.2f} s",
                  f"{'member (traced)':<28} {'examples':>8} {'passes':>7} {'seconds':>8} "
                  f"{'ideal':>7} {'/ ideal':>8} {'arith.':>7} {'/ arith.':>9}"]
        for row in profile["members"]:
            ratios = [f"{row[k]:.2f}" if row[k] else "-" for k in ("ratio_to_ideal", "ratio_to_arithmetic")]
            lines.append(f"{row['member']:<28} {row['examples']:>8} {row['passes']:>7} "
                         f"{row['seconds']:>8.3f} {row['ideal_seconds']:>7.3f} {ratios[0]:>8} "
                         f"{row['arithmetic_seconds']:>7.3f} {ratios[1]:>9}")
        lines.append("")
    lines.append("ideal (the issue's): the member's passes per example x one XLA-compiled forward-backward "
                 "call (Square: forward) over its examples, timed; arith.: the same passes timed as 20 "
                 "in one XLA-compiled loop (no per-call dispatch: the bare arithmetic)")
    lines.append(f"evaluate's attacks (protocol + strong, tracing included) / compiled plain PGD-100 "
                 f"x3 restarts x2 losses (compiling included), same model and images: "
                 f"{evaluate_seconds / plain_seconds:.1f}")
    lines += ["", "Training jobs of the quick preset, each its command in a fresh process, its start-up "
              f"({training_rows[0]['start_up_seconds']:.1f} s: importing TensorFlow and tf_ntk) left out",
              f"{'job':<52} {'seconds':>7} {'ideal':>6} {'/ ideal':>7} {'tracing':>8} {'outside':>8} "
              f"{'ms/step':>8}"]
    for row in training_rows:
        lines.append(f"{row['job']:<52} {row['seconds']:>7.2f} {row['ideal_seconds']:>6.2f} "
                     f"{row['seconds'] / row['ideal_seconds']:>7.1f} "
                     f"{row['first_epoch_seconds'] - row['steady_epoch_seconds']:>8.2f} "
                     f"{row['outside_epochs_seconds']:>8.2f} {row['step_seconds'] * 1e3:>8.1f}")
    lines.append("ideal: every epoch at the speed of the later ones; tracing: the first epoch's extra "
                 "time; outside: building the model and data, the final evaluation and the writes")
    measure.write_results(FLAGS.output, result, "\n".join(lines))


if __name__ == "__main__":
    common.run(main)
