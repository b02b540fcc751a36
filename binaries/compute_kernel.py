r"""The empirical NTK of a checkpoint on a class-balanced probe set → kernel.npz and TensorBoard.

    python -m binaries.compute_kernel --checkpoint=runs/adv/spawn/epoch_10 --per_class=50 --logit=3

Writes to --workdir (default RUN/kernels/<checkpoint name>): kernel.npz (kernel (P, P), labels (P,),
indices into the split, logit or -1 for the trace kernel, epoch), heat_map.png (viridis, examples
class by class, white lines between classes), flags.json, and TensorBoard events with the heat map,
spectrum and scalar metrics. The probe set comes from the data set the checkpoint was trained on
unless --dataset says otherwise.
"""

import os

from absl import flags
import numpy as np
import tensorflow as tf

from binaries import common
from binaries import common_flags
from tf_ntk import checkpoints
from tf_ntk import dynamics
from tf_ntk import metrics
from tf_ntk import ntk
from tf_ntk import rundir
from tf_ntk import summaries

common_flags.define_data_flags()
common_flags.define_image_flags()
common_flags.define_run_flags()
common_flags.define_checkpoint_flag()
common_flags.define_kernel_flags()
flags.adopt_module_key_flags(common_flags)

FLAGS = flags.FLAGS
REQUIRED_FLAGS = ("checkpoint",)  # marked required when the binary runs (binaries.common.run)


def main(argv):
    del argv
    meta = checkpoints.read_meta(FLAGS.checkpoint, require_model=True)
    num_classes = meta["model"]["num_classes"]
    common.check_logit(FLAGS.logit, num_classes)
    workdir = FLAGS.workdir or common.default_workdir(FLAGS.checkpoint, "kernels")
    out = os.path.join(workdir, "kernel.npz")
    common.check_new_output(out, FLAGS.overwrite)
    x, y, idx = common.checkpoint_probe(FLAGS, meta)
    model, _ = dynamics.load_model(FLAGS.checkpoint)
    plan = ntk.plan(model, len(x), logit=FLAGS.logit, implementation=FLAGS.implementation)
    with rundir.open_run(workdir):
        resolved = common.write_flags(workdir, __name__)
        what = "trace kernel" if FLAGS.logit is None else f"kernel of logit {FLAGS.logit}"
        print(f"{what} of {FLAGS.checkpoint} on {len(x)} {FLAGS.probe_split} examples "
              f"({FLAGS.per_class} per class), {plan.implementation}, {plan.num_blocks} block(s)")
        kernel = ntk.empirical_ntk(model, x, logit=FLAGS.logit, implementation=FLAGS.implementation,
                                   dtype=common_flags.kernel_dtype(FLAGS),
                                   progress=common.progress(plan.num_blocks)).numpy()
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
    print(f"kernel: {out}   heat map: {os.path.join(workdir, 'heat_map.png')}   "
          f"tensorboard --logdir {workdir} --samples_per_plugin=images=0")


if __name__ == "__main__":
    common.run(main)
