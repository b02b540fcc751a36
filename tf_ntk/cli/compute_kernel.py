r"""The empirical NTK of a checkpoint on a class-balanced probe set → kernel.npz and TensorBoard.

    tf-ntk-compute-kernel --checkpoint=runs/adv/spawn/epoch_10 --per_class=50 --logit=3

Writes to --workdir (default RUN/kernels/<checkpoint name>): kernel.npz (kernel (P, P), labels (P,),
indices into the split, logit or -1 for the trace kernel, epoch), heat_map.png (viridis, examples
class by class, white lines between classes), flags.json, and TensorBoard events with the heat map,
spectrum and scalar metrics. The probe set comes from the data set the checkpoint was trained on
unless --dataset says otherwise.

The kernel is computed as tiles of --block_size examples (tiles/, removed once assembled), so a
killed run resumes with the tiles it has. A large kernel runs as K independent, preemptible jobs:

    for i in 0 1 2; do tf-ntk-compute-kernel --checkpoint=... --num_shards=3 --shard=$i & done

each computes its share of the tiles (its flags in shards/<i>-of-3/); the last one to finish
assembles kernel.npz, exactly the kernel one process computes.
"""

import math
import os

from absl import flags
import numpy as np
import tensorflow as tf

from tf_ntk import checkpoints
from tf_ntk import dynamics
from tf_ntk import ntk
from tf_ntk import rundir
from tf_ntk import summaries
from tf_ntk.cli import common
from tf_ntk.cli import common_flags
from tf_ntk.ntk import kernel_shards
from tf_ntk.ntk import metrics

common_flags.define_data_flags()
common_flags.define_image_flags()
common_flags.define_run_flags()
common_flags.define_checkpoint_flag()
common_flags.define_kernel_flags()
common_flags.define_shard_flags()
common_flags.define_strategy_flags()
flags.DEFINE_integer("block_size", None, "Tile side in examples (default: the largest the memory "
                     "budget allows).", lower_bound=1)

FLAGS = flags.FLAGS
REQUIRED_FLAGS = ("checkpoint",)  # marked required when the binary runs (tf_ntk.cli.common.run)


def main(argv):
    del argv
    if FLAGS.shard >= FLAGS.num_shards:
        raise ValueError(f"--shard={FLAGS.shard} must be below --num_shards={FLAGS.num_shards}")
    if FLAGS.overwrite and FLAGS.num_shards > 1:  # each shard would delete the others' tiles
        raise ValueError("--overwrite cannot be combined with --num_shards: remove the work directory's "
                         "kernel.npz and tiles/ once, then start the shards")
    strategy = common_flags.kernel_strategy(FLAGS)
    meta = checkpoints.read_spawn_meta(FLAGS.checkpoint)
    num_classes = meta["model"]["num_classes"]
    common.check_logit(FLAGS.logit, num_classes)
    workdir = FLAGS.workdir or common.default_workdir(FLAGS.checkpoint, "kernels")
    out = os.path.join(workdir, "kernel.npz")
    sharded = FLAGS.num_shards > 1
    if sharded and rundir.exists(out) and not FLAGS.overwrite:
        print(f"{out} is already assembled; nothing to do")
        return
    common.check_new_output(out, FLAGS.overwrite)
    x, y, idx = common.checkpoint_probe(FLAGS, meta)
    model, _ = dynamics.load_model(FLAGS.checkpoint)
    dtype = common_flags.kernel_dtype(FLAGS)
    plan = ntk.plan(model, len(x), logit=FLAGS.logit, implementation=FLAGS.implementation,
                    block_size=FLAGS.block_size)
    tiles_dir = os.path.join(workdir, "tiles")
    key = (f"{checkpoints.fingerprint(FLAGS.checkpoint)}|{FLAGS.dataset}|{FLAGS.probe_split}|"
           f"{FLAGS.per_class}|{FLAGS.probe_seed}|{FLAGS.logit}|{dtype}|{plan.implementation}")
    what = "trace kernel" if FLAGS.logit is None else f"kernel of logit {FLAGS.logit}"
    n_tiles = len(kernel_shards.tiles(len(x), plan.block_size))

    def compute(shard):
        print(f"{what} of {FLAGS.checkpoint} on {len(x)} {FLAGS.probe_split} examples "
              f"({FLAGS.per_class} per class), {plan.implementation}, {n_tiles} tile(s) of "
              f"{plan.block_size}" + (f"; shard {shard} of {FLAGS.num_shards}" if sharded else ""))
        done, total = kernel_shards.compute_shard(
            model, x, tiles_dir, shard=shard, num_shards=FLAGS.num_shards, block_size=plan.block_size,
            key=key, logit=FLAGS.logit, implementation=plan.implementation, dtype=dtype, strategy=strategy,
            progress=common.progress(max(1, math.ceil(n_tiles / FLAGS.num_shards)), unit="tile"))
        print(f"{done} tile(s) computed, {total - done} already there")

    if FLAGS.overwrite:
        with rundir.open_run(workdir):
            rundir.rmtree(tiles_dir)
            if rundir.exists(out):
                rundir.remove(out)
    if sharded:
        with rundir.open_run(os.path.join(workdir, "shards", f"{FLAGS.shard}-of-{FLAGS.num_shards}")) as d:
            common.write_flags(d, __name__)
            compute(FLAGS.shard)
        left = kernel_shards.missing(tiles_dir, len(x), plan.block_size)
        if left:
            print(f"shard {FLAGS.shard} done; {len(left)} tile(s) of other shards missing: the last "
                  "shard to finish assembles the kernel")
            return
    try:
        with rundir.open_run(workdir, keep_if=lambda d: rundir.exists(tiles_dir)):
            if rundir.exists(out):
                print(f"{out} was assembled by another shard")
                return
            resolved = common.write_flags(workdir, __name__)
            if not sharded:
                compute(0)
            kernel = kernel_shards.assemble(tiles_dir, len(x), plan.block_size)
            _write_outputs(workdir, out, kernel, y, idx, meta, resolved)
            rundir.rmtree(tiles_dir)
            rundir.rmtree(os.path.join(workdir, "shards"))
    except rundir.LockedError:
        if sharded:
            print("another shard is assembling the kernel")
            return
        raise


def _write_outputs(workdir, out, kernel, y, idx, meta, resolved):
    heat_map = os.path.join(workdir, "heat_map.png")
    rundir.write_bytes(heat_map, tf.io.encode_png(summaries.heat_map(kernel, labels=y)[0]).numpy())
    rundir.write_npz(out, kernel=kernel, labels=y, indices=idx,
                     logit=np.int64(-1 if FLAGS.logit is None else FLAGS.logit),
                     epoch=np.float64(meta.get("epoch", np.nan)))
    values = metrics.kernel_summary(kernel, labels=y)
    epoch = meta.get("epoch") or 0
    writer = tf.summary.create_file_writer(workdir)
    with writer.as_default(step=summaries.epoch_step(epoch)):
        summaries.write_kernel("kernel", kernel, epoch, labels=y)
        for name, value in values.items():
            tf.summary.scalar(f"kernel/{name}", value)
        summaries.write_config(resolved)
    writer.flush()
    print(", ".join(f"{k} {v:.4g}" for k, v in values.items()))
    print(f"kernel: {out}   heat map: {heat_map}   "
          f"{summaries.tensorboard_command(workdir)}")


def run():
    """The `tf-ntk-compute-kernel` console command (`python -m binaries.compute_kernel` in a checkout)."""
    common.command(main)


if __name__ == "__main__":
    run()
