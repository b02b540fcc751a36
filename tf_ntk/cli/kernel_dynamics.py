r"""How the NTK moves during training: walks the spawn checkpoints of one run (or two) and logs
kernel metrics against the epoch to TensorBoard and a CSV.

    tf-ntk-kernel-dynamics --run=runs/std --compare_run=runs/adv --per_class=20

For every spawn checkpoint (fractional epochs included) the kernel is computed on the same
class-balanced probe sets (train: --per_class per class; test: --test_per_class per class, for
kernel regression), cached in WORKDIR/kernels/<run>/epoch_<e>.npz (a rerun only computes what is
missing or was retrained), and these are logged (TensorBoard step = milli-epochs):
  kernel/distance_to_init, distance_to_final, velocity, target_alignment, cka_to_init,
  effective_rank, trace, eigenvalue_0..4, kernel_regression_accuracy, parameter_distance;
  a heat map (examples class by class) and a spectrum histogram;
  with --compare_run, comparison/distance and comparison/cka between the two runs at each epoch
  both have.
Writes WORKDIR/tb/<run>, WORKDIR/tb/comparison, kernel_dynamics.csv, comparison.csv, flags.json.
"""

import csv
import io
import os
import zipfile

from absl import flags
import numpy as np
import tensorflow as tf

from tf_ntk import checkpoints
from tf_ntk import data
from tf_ntk import dynamics
from tf_ntk import ntk
from tf_ntk import rundir
from tf_ntk import summaries
from tf_ntk.cli import common
from tf_ntk.cli import common_flags
from tf_ntk.ntk import metrics

common_flags.define_data_flags()
common_flags.define_image_flags()
common_flags.define_run_flags()
common_flags.define_kernel_flags()
common_flags.define_shard_flags()
common_flags.define_strategy_flags()
flags.DEFINE_string("run", None, "Run directory whose spawn checkpoints to walk (tf-ntk-train --workdir).")
flags.DEFINE_string("compare_run", None, "A second run on the same model and data, to compare with.")
flags.DEFINE_integer("test_per_class", 10, "Test examples per class for kernel-regression accuracy "
                     "(0: skip).", lower_bound=0)
common_flags.define_fraction("ridge", 1e-4, "Relative ridge of the kernel regression (× tr K / N).",
                             lower=0.0)
common_flags.define_fraction("max_epoch", None, "Only spawn checkpoints up to this epoch.")
flags.DEFINE_bool("heat_maps", True, "Log a heat map and spectrum histogram at every checkpoint.")
flags.DEFINE_string("kernel_cache", None, "Directory of cached kernels, shared by walks over the "
                    "same runs (default: WORKDIR/kernels); entries are keyed by run name, probe set "
                    "and checkpoint digest.")
flags.DEFINE_bool("compare_only", False, "With --compare_run, write only the comparison (the runs' "
                  "own metrics come from their own walks).")

FLAGS = flags.FLAGS
REQUIRED_FLAGS = ("run",)  # marked required when the binary runs (tf_ntk.cli.common.run)


def _label(run, taken):
    base = os.path.basename(os.path.normpath(run)) or "run"
    label, i = base, 1
    while label in taken:
        i += 1
        label = f"{base}_{i}"
    return label


def _spawns(run):
    spawns = checkpoints.list_spawns(run)
    if FLAGS.max_epoch is not None:
        spawns = [(e, p) for e, p in spawns if e <= FLAGS.max_epoch]
    if not spawns:
        raise ValueError(f"no spawn checkpoints in {run} (expected {run}/spawn/epoch_*)")
    return spawns


def _cached(cache_path, probe_key):
    """The cached kernel at ``cache_path`` if it was computed for ``probe_key``, else None."""
    if rundir.exists(cache_path):
        try:
            cached = rundir.read_npz(cache_path)
            if str(cached["probe_key"]) == probe_key:
                return cached["kernel"]
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, tf.errors.OpError):
            pass  # unreadable cache entry: recompute
    return None


def _kernel(model, x, cache_path, probe_key, strategy):
    """The (P+M, P+M) kernel on the train and test probes, from the cache when it matches."""
    cached = _cached(cache_path, probe_key)
    if cached is not None:
        return cached
    p = ntk.plan(model, len(x), logit=FLAGS.logit, implementation=FLAGS.implementation)
    kernel = ntk.empirical_ntk(model, x, logit=FLAGS.logit, implementation=FLAGS.implementation,
                               dtype=common_flags.kernel_dtype(FLAGS), progress=common.progress(p.num_blocks),
                               strategy=strategy).numpy()
    rundir.write_npz(cache_path, kernel=kernel, probe_key=np.array(probe_key))
    return kernel


def _write_csv(path, rows):
    if not rows:
        return
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("run", "epoch"), k))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    rundir.write_text(path, buf.getvalue())


def main(argv):
    del argv
    strategy = common_flags.kernel_strategy(FLAGS)
    if FLAGS.compare_only and not FLAGS.compare_run:
        raise ValueError("--compare_only needs --compare_run")
    runs = [FLAGS.run] + ([FLAGS.compare_run] if FLAGS.compare_run else [])
    spawns = {run: _spawns(run) for run in runs}
    metas = {run: checkpoints.read_spawn_meta(spawns[run][0][1]) for run in runs}
    spec = metas[runs[0]]["model"]
    for run in runs[1:]:
        other = metas[run]["model"]
        if other["input_shape"] != spec["input_shape"] or other["num_classes"] != spec["num_classes"]:
            raise ValueError(f"{run} and {runs[0]} differ in inputs or classes; kernels on one probe "
                             "set need both")
    _, opts = common.recorded_data(FLAGS, metas[runs[0]])
    num_classes = spec["num_classes"]
    common.check_logit(FLAGS.logit, num_classes)
    x_tr, y_tr = data.load_arrays(FLAGS.dataset, FLAGS.probe_split, **opts)
    common.check_input_shape(f"run {runs[0]}", spec, x_tr.shape[1:], FLAGS.dataset)
    x_p, y_p = data.class_balanced_sample(x_tr, y_tr, FLAGS.per_class, seed=FLAGS.probe_seed,
                                          num_classes=num_classes)
    if FLAGS.test_per_class:
        x_te, y_te = data.load_arrays(FLAGS.dataset, "test", **opts)
        x_q, y_q = data.class_balanced_sample(x_te, y_te, FLAGS.test_per_class, seed=FLAGS.probe_seed,
                                              num_classes=num_classes)
    else:
        x_q, y_q = x_p[:0], y_p[:0]
    x_all = np.concatenate([x_p, x_q])
    n = len(x_p)
    probe_key = (f"{FLAGS.dataset}|{FLAGS.probe_split}|{FLAGS.per_class}|{FLAGS.test_per_class}|"
                 f"{FLAGS.probe_seed}|{FLAGS.logit}|{common_flags.kernel_dtype(FLAGS)}|{opts}")
    workdir = FLAGS.workdir or os.path.join(FLAGS.run, "kernel_dynamics")
    labels = {}
    for run in runs:
        labels[run] = _label(run, set(labels.values()) | {"comparison"})
    def cache_path(run, epoch):
        return os.path.join(FLAGS.kernel_cache or os.path.join(workdir, "kernels"), labels[run],
                            f"{checkpoints.spawn_name(epoch)}.npz")

    if FLAGS.shard >= FLAGS.num_shards:
        raise ValueError(f"--shard={FLAGS.shard} must be below --num_shards={FLAGS.num_shards}")
    if FLAGS.num_shards > 1:
        walk = [(run, epoch, path) for run in runs for epoch, path in spawns[run]]
        mine = [w for k, w in enumerate(walk) if k % FLAGS.num_shards == FLAGS.shard]
        shard_dir = os.path.join(workdir, "shards", f"{FLAGS.shard}-of-{FLAGS.num_shards}")
        with rundir.open_run(shard_dir):
            common.write_flags(shard_dir, __name__)
            print(f"shard {FLAGS.shard} of {FLAGS.num_shards}: {len(mine)} of {len(walk)} checkpoint kernels")
            for run, epoch, path in mine:
                print(f"  {labels[run]} epoch {epoch:g}")
                model, _ = dynamics.load_model(path)
                _kernel(model, x_all, cache_path(run, epoch),
                        f"{probe_key}|{checkpoints.fingerprint(path)}", strategy)
        left = [w for w in walk if _cached(cache_path(w[0], w[1]),
                                           f"{probe_key}|{checkpoints.fingerprint(w[2])}") is None]
        if left:
            print(f"shard {FLAGS.shard} done; {len(left)} kernel(s) of other shards missing: the last "
                  "shard to finish writes the metrics")
            return
    try:
        _walk(runs, spawns, labels, workdir, cache_path, x_all, n, x_q, y_p, y_q, probe_key, num_classes,
              strategy)
    except rundir.LockedError:
        if FLAGS.num_shards > 1:
            print("another shard is writing the metrics")
            return
        raise


def _walk(runs, spawns, labels, workdir, cache_path, x_all, n, x_q, y_p, y_q, probe_key, num_classes,
          strategy):
    """Every checkpoint's kernel (cached ones reused), the metrics, comparison, CSVs and TensorBoard."""
    with rundir.open_run(workdir):
        resolved = common.write_flags(workdir, __name__)
        rows, comparison_rows, kernels = [], [], {}
        for run in runs:
            label = labels[run]
            if not FLAGS.compare_only:
                writer = tf.summary.create_file_writer(os.path.join(workdir, "tb", label))
                with writer.as_default(step=0):
                    summaries.write_config({**resolved, "run": rundir.abspath(run)})
            print(f"{label}: {len(spawns[run])} spawn checkpoints, kernels on {n} + {len(x_q)} probe examples")
            run_kernels, params0, previous = [], None, None
            for epoch, path in spawns[run]:
                print(f"  epoch {epoch:g}")
                model, _ = dynamics.load_model(path)
                params = [v.numpy() for v in model.trainable_variables]
                params0 = params if params0 is None else params0
                k_all = _kernel(model, x_all, cache_path(run, epoch),
                                f"{probe_key}|{checkpoints.fingerprint(path)}", strategy)
                run_kernels.append((epoch, k_all, params))
            kernels[run] = {e: k_all[:n, :n] for e, k_all, _ in run_kernels}
            if FLAGS.compare_only:
                continue
            init_k = run_kernels[0][1][:n, :n]
            final_k = run_kernels[-1][1][:n, :n]
            scale = summaries.colour_scale([k_all[:n, :n] for _, k_all, _ in run_kernels])
            for epoch, k_all, params in run_kernels:
                k = k_all[:n, :n]
                values = metrics.kernel_summary(
                    k, labels=y_p, init=init_k,
                    previous=None if previous is None else previous[1],
                    dt=None if previous is None else epoch - previous[0])
                values["distance_to_final"] = metrics.kernel_distance(k, final_k)
                if len(x_q):
                    values["kernel_regression_accuracy"] = metrics.kernel_regression_accuracy(
                        k, k_all[n:, :n], y_p, y_q, ridge=FLAGS.ridge, num_classes=num_classes)
                values["parameter_distance"] = metrics.parameter_distance(params, params0)
                with writer.as_default(step=summaries.epoch_step(epoch)):
                    for name, value in values.items():
                        tf.summary.scalar(f"kernel/{name}", value)
                    if FLAGS.heat_maps:
                        summaries.write_kernel("kernel", k, epoch, scale=scale, labels=y_p)
                rows.append({"run": label, "epoch": epoch, **values})
                previous = (epoch, k)
            writer.flush()
        if len(runs) == 2:
            a, b = (kernels[r] for r in runs)
            writer = tf.summary.create_file_writer(os.path.join(workdir, "tb", "comparison"))
            for epoch in sorted(set(a) & set(b)):
                values = {"distance": metrics.kernel_distance(a[epoch], b[epoch]),
                          "cka": metrics.cka(a[epoch], b[epoch])}
                with writer.as_default(step=summaries.epoch_step(epoch)):
                    for name, value in values.items():
                        tf.summary.scalar(f"comparison/{name}", value)
                comparison_rows.append({"run": f"{labels[runs[0]]} vs {labels[runs[1]]}",
                                        "epoch": epoch, **values})
            writer.flush()
        _write_csv(os.path.join(workdir, rundir.KERNEL_DYNAMICS), rows)
        _write_csv(os.path.join(workdir, rundir.COMPARISON), comparison_rows)
    last = {}
    for r in rows:
        last[r["run"]] = r
    for label, r in last.items():
        extra = (f", kernel regression {r['kernel_regression_accuracy']:.3f}"
                 if "kernel_regression_accuracy" in r else "")
        print(f"{label} @ epoch {r['epoch']:g}: distance to init {r['distance_to_init']:.4f}, "
              f"effective rank {r['effective_rank']:.1f}, alignment {r['target_alignment']:.3f}{extra}")
    if comparison_rows:
        print(f"{comparison_rows[-1]['run']} @ epoch {comparison_rows[-1]['epoch']:g}: "
              f"distance {comparison_rows[-1]['distance']:.4f}")
    print(f"csv: {os.path.join(workdir, 'kernel_dynamics.csv')}   "
          f"{summaries.tensorboard_command(os.path.join(workdir, 'tb'))}")


def run():
    """The `tf-ntk-kernel-dynamics` console command (`python -m binaries.kernel_dynamics` in a checkout)."""
    common.command(main)


if __name__ == "__main__":
    run()
