r"""The kernel machine of every spawn checkpoint of a phase-1 run: benign and robust accuracy of the
infinite-time centered predictor f(x) = k(x, X)(K + λI)⁻¹Y (`tf_ntk.kernel_machine`), no training.

    tf-ntk-kernel-machine --phase1_run=runs/adv --eps=0.2 --train_per_class=50

For each spawn checkpoint of --phase1_run (or those at --at_epochs, up to --max_epoch): the kernel
machine of the spawn's full empirical NTK on a class-balanced training subset (--train_per_class per
class drawn with --train_seed; 0: the whole training split), ridge λ = --relative_ridge × the kernel's
mean eigenvalue tr(K)/(N·O) (or --absolute_ridge), solved by --solver; then its accuracy on that
subset, its benign accuracy on the first --test_examples test images and its robust accuracy there:
the worst case per example of the protocol PGD (--attack_steps, default 100; --attack_* flags) and the
strong ensemble (--strong_restarts, --square_queries), as tf-ntk-evaluate --attack=protocol,strong.

Writes to --workdir (default PHASE1_RUN/kernel_machine): spawns/epoch_<e>.json per checkpoint (a rerun
reuses those whose checkpoint and settings match), kernel_machine.csv, TensorBoard events
(kernel_machine/* against the spawn epoch, in milli-epochs), flags.json, and kernel_machine.json last.
"""

import csv
import io
import json
import os
import time

from absl import flags
import numpy as np
import tensorflow as tf

from tf_ntk import checkpoints
from tf_ntk import data
from tf_ntk import dynamics
from tf_ntk import rundir
from tf_ntk import summaries
from tf_ntk.cli import common
from tf_ntk.cli import common_flags
from tf_ntk.ntk import kernel_regression
from tf_ntk.robust import ensembles
from tf_ntk.robust import evaluation

common_flags.define_data_flags()
common_flags.define_image_flags()
common_flags.define_batch_flag()
common_flags.define_attack_flags()
common_flags.define_strong_flags()
common_flags.define_seed_flag()
common_flags.define_run_flags()
flags.DEFINE_string("phase1_run", None, "Phase-1 run directory whose spawn checkpoints to walk "
                    "(tf-ntk-train --workdir).")
common_flags.define_float_list("at_epochs", None, "Only the spawn checkpoints at these epochs (default: every one).")
common_flags.define_fraction("max_epoch", None, "Only spawn checkpoints up to this epoch.")
flags.declare_key_flag("max_epoch")  # shared with tf-ntk-kernel-dynamics, which may define it first
flags.DEFINE_integer("train_per_class", 50, "Training examples per class the kernel machine is solved "
                     "on, class-balanced (0: the whole training split).", lower_bound=0)
flags.DEFINE_integer("train_seed", 0, "Seed of the class-balanced training subset.")
common_flags.define_fraction("relative_ridge", kernel_regression.DEFAULT_RIDGE,
                             "Ridge λ as a multiple of the kernel's mean eigenvalue tr(K)/(N·O).",
                             lower=0.0)
common_flags.define_fraction("absolute_ridge", None, "Ridge λ itself (overrides --relative_ridge).",
                             lower=0.0)
flags.DEFINE_enum("solver", "auto", list(kernel_regression.SOLVERS), "direct: form the full kernel; "
                  "cg: matrix-free conjugate gradients; auto: direct up to N·O = "
                  f"{kernel_regression.DIRECT_MAX_SIZE}.")
common_flags.define_fraction("cg_tol", 1e-6, "Conjugate gradients stop at ‖r‖ ≤ tol·‖Y‖.", lower=0.0)
flags.DEFINE_integer("cg_max_iterations", 1000, "Conjugate-gradient iterations at most.", lower_bound=1)
flags.DEFINE_enum("solve_dtype", "float32", ["float32", "float64"], "Precision of the kernel and of "
                  "the VJP/JVP passes (the solve itself is float64).")
flags.DEFINE_integer("test_examples", None, "Evaluate on the first N test images (default: all).",
                     lower_bound=1)

FLAGS = flags.FLAGS
REQUIRED_FLAGS = ("phase1_run",)  # marked required when the binary runs (tf_ntk.cli.common.run)
SPAWNS_DIR = "spawns"
RESULTS = rundir.KERNEL_MACHINE
CSV = "kernel_machine.csv"
METRICS = ("benign_accuracy", "robust_accuracy", "robust_accuracy_protocol", "robust_accuracy_strong",
           "train_accuracy")


def _spawns(run):
    """[(epoch, path)] of the spawn checkpoints the flags select."""
    spawns = checkpoints.list_spawns(run)
    if not spawns:
        raise ValueError(f"no spawn checkpoints in {run} (expected {run}/spawn/epoch_*)")
    if FLAGS.at_epochs:
        wanted = set(FLAGS.at_epochs)
        missing = sorted(wanted - {epoch for epoch, _ in spawns})
        if missing:
            raise ValueError(f"--at_epochs: no spawn checkpoint at epoch(s) "
                             f"{', '.join(f'{e:g}' for e in missing)} in {run}")
        spawns = [(e, p) for e, p in spawns if e in wanted]
    if FLAGS.max_epoch is not None:
        spawns = [(e, p) for e, p in spawns if e <= FLAGS.max_epoch]
        if not spawns:
            raise ValueError(f"no spawn checkpoints in {run} up to --max_epoch={FLAGS.max_epoch:g}")
    return spawns


def _attacks():
    """(protocol PGD, strong ensemble) from the attack flags."""
    protocol = common_flags.attack_config(FLAGS, default_steps=100)
    return protocol, common_flags.strong_ensemble(FLAGS)


def _settings(protocol, strong):
    """What a spawn's result depends on besides its checkpoint (the cache key)."""
    keys = ("dataset", "image_size", "channels", "train_per_class", "train_seed", "relative_ridge",
            "absolute_ridge", "solver", "cg_tol", "cg_max_iterations", "solve_dtype", "test_examples",
            "batch_size", "seed")
    return json.dumps({**{k: FLAGS[k].value for k in keys}, "protocol": protocol.to_dict(),
                       "strong": strong.to_dict()}, sort_keys=True)


def _measure(path, train, test, protocol, strong, holder):
    """One spawn: the kernel machine, its accuracies and how it was solved. ``holder``: a list of
    the centered model that holds the kernel machines, filled at the first spawn (a model kept by
    the sweep worker where one is free) and reused for the next, its traced attacks with it."""
    start = time.time()
    spawn, _ = dynamics.load_model(path)
    if not holder:
        holder.append(dynamics.load_model(path, dynamics="centered", reuse=True)[0])
    x_tr, y_tr = train
    km = kernel_regression.kernel_machine(
        spawn, x_tr, y_tr, ridge=FLAGS.relative_ridge, absolute_ridge=FLAGS.absolute_ridge,
        solver=FLAGS.solver, per_class=FLAGS.train_per_class or None, seed=FLAGS.train_seed,
        dtype=FLAGS.solve_dtype, batch_size=FLAGS.batch_size, tol=FLAGS.cg_tol,
        max_iterations=FLAGS.cg_max_iterations, model=holder[0])
    info = km.kernel_machine_info
    fn = evaluation.inference_fn(km)
    used = info.train_indices if info.train_indices is not None else np.arange(len(y_tr))
    x_te, y_te = test
    row = {"train_accuracy": evaluation.accuracy(
        fn, evaluation.as_dataset(x_tr[used], y_tr[used], FLAGS.batch_size))}
    row["benign_accuracy"] = evaluation.accuracy(fn, evaluation.as_dataset(x_te, y_te, FLAGS.batch_size))
    outcomes = {}
    for name, attack in (("protocol", protocol), ("strong", strong)):
        outcomes[name] = ensembles.evaluate(fn, x_te, y_te, attack, seed=FLAGS.seed,
                                             batch_size=FLAGS.batch_size)
        row[f"robust_accuracy_{name}"] = outcomes[name].accuracy
    row["robust_accuracy"] = float(np.mean(ensembles.worst_case([outcomes["protocol"], outcomes["strong"]])[0]))
    row["rejected"] = sum(o.rejected for o in outcomes.values())
    row.update(info.to_dict())
    row["seconds"] = time.time() - start
    return row


def _csv_text(rows):
    columns = ["epoch", *METRICS, "solver", "ridge", "mean_eigenvalue", "examples", "iterations",
               "residual", "rejected", "seconds"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def main(argv):
    del argv
    run = FLAGS.phase1_run
    spawns = _spawns(run)
    meta = checkpoints.read_spawn_meta(spawns[0][1])
    if (meta.get("config") or {}).get("dynamics", "standard") != "standard":
        raise ValueError(f"{run} is a phase-2 run; the kernel machine takes the spawns of a phase-1 run")
    dataset, opts = common.recorded_data(FLAGS, meta)
    train = data.load_arrays(dataset, "train", **opts)
    common.check_input_shape(f"run {run}", meta["model"], train[0].shape[1:], dataset)
    x_te, y_te = data.load_arrays(dataset, "test", **opts)
    test = (x_te[:FLAGS.test_examples], y_te[:FLAGS.test_examples])
    protocol, strong = _attacks()
    settings = _settings(protocol, strong)
    workdir = FLAGS.workdir or os.path.join(run, "kernel_machine")
    results_path = os.path.join(workdir, RESULTS)
    spawn_dir = os.path.join(workdir, SPAWNS_DIR)

    with rundir.open_run(workdir, overwrite=FLAGS.overwrite, finished=lambda d: rundir.exists(results_path),
                         keep_if=lambda d: bool(rundir.glob(os.path.join(spawn_dir, "*.json")))):
        resolved = common.write_flags(workdir, __name__)
        print(f"{run}: kernel machines of {len(spawns)} spawn checkpoints on {dataset}, "
              f"{FLAGS.train_per_class or 'all'} training examples per class, {len(test[1])} test images")
        rows, holder = [], []
        for epoch, path in spawns:
            cache = os.path.join(spawn_dir, f"{checkpoints.spawn_name(epoch)}.json")
            key = f"{checkpoints.fingerprint(path)}|{settings}"
            row = None
            if rundir.exists(cache):
                try:
                    cached = rundir.read_json(cache, "spawn result")
                    row = cached["row"] if cached.get("key") == key else None
                except (rundir.RecordError, KeyError):
                    row = None  # unreadable: measure again
            if row is None:
                row = {"epoch": epoch, **_measure(path, train, test, protocol, strong, holder)}
                rundir.write_json(cache, {"key": key, "row": row})
            rows.append(row)
            print(f"  epoch {epoch:g}: {row['solver']} solve on {row['examples']} examples "
                  f"(λ {row['ridge']:.3g}, {row['iterations']} CG iterations), train accuracy "
                  f"{row['train_accuracy']:.3f}, benign {row['benign_accuracy']:.3f}, robust "
                  f"{row['robust_accuracy']:.3f} ({row['seconds']:.0f} s)")
        writer = tf.summary.create_file_writer(workdir)
        with writer.as_default(step=0):
            summaries.write_config({**resolved, "phase1_run": rundir.abspath(run)})
        for row in rows:
            with writer.as_default(step=summaries.epoch_step(row["epoch"])):
                for name in (*METRICS, "ridge", "iterations", "residual"):
                    tf.summary.scalar(f"kernel_machine/{name}", row[name])
        writer.flush()
        rundir.write_text(os.path.join(workdir, CSV), _csv_text(rows))
        rundir.write_json(results_path, {
            "phase1_run": rundir.abspath(run), "flags": resolved, "examples": len(test[1]),
            "attack": {"protocol": protocol.to_dict(), "strong": strong.to_dict()}, "rows": rows})
    print(f"csv: {os.path.join(workdir, CSV)}   results: {results_path}")


def run():
    """The `tf-ntk-kernel-machine` console command (`python -m binaries.kernel_machine` in a checkout)."""
    common.command(main)


if __name__ == "__main__":
    run()
