r"""NTK eigen-images of a checkpoint: the inputs whose tangent features align with the top eigenvectors
of a per-logit kernel (positive and negative images) and with its kernel-regression weights ("w").

    python -m binaries.visualize_features --checkpoint=runs/adv/spawn/epoch_10 --logit=3

Protocol: per-logit kernel on --per_class examples per class; for eigenvector u_i, the tangent
direction v = Σ_j u_i[j] ∇θ f_c(x_j); 600 signed-gradient steps of 0.001 from a grey image, clipped to
[0, 1], maximising (minimising) the cosine between ∇θ f_c(x) and v. Writes PNGs, eigen_images.npz,
flags.json and TensorBoard images to --workdir (default RUN/features/<checkpoint name>).
"""

import os

from absl import flags
import numpy as np
import tensorflow as tf

from binaries import common
from binaries import common_flags
from tf_ntk import checkpoints
from tf_ntk import dynamics
from tf_ntk import eigenimages
from tf_ntk import ntk
from tf_ntk import rundir
from tf_ntk import summaries

common_flags.define_data_flags()
common_flags.define_model_flags()
common_flags.define_seed_flag()
common_flags.define_run_flags()
common_flags.define_checkpoint_flag()
common_flags.define_kernel_flags()
flags.DEFINE_integer("num_eigen", 3, "Top eigenvectors to visualise.", lower_bound=1)
flags.DEFINE_integer("feature_steps", 600, "Signed-gradient steps per image.", lower_bound=1)
common_flags.define_fraction("feature_step_size", 0.001, "Step size per signed-gradient step "
                             "(pixel units).", lower=0.0)
flags.DEFINE_integer("png_scale", 8, "Nearest-neighbour upscaling of the PNGs.", lower_bound=1)
flags.adopt_module_key_flags(common_flags)

FLAGS = flags.FLAGS


def _png(path, image, scale):
    img = np.kron(np.asarray(image, np.float32), np.ones((scale, scale, 1), np.float32))
    tf.io.write_file(path, tf.io.encode_png(tf.cast(tf.round(255 * img), tf.uint8)))


def main(argv):
    del argv
    if not FLAGS.checkpoint:
        raise ValueError("--checkpoint is required")
    meta = checkpoints.read_meta(FLAGS.checkpoint, require_model=True)
    num_classes = meta["model"]["num_classes"]
    logit = 0 if FLAGS.logit is None else FLAGS.logit
    common.check_logit(logit, num_classes)
    workdir = FLAGS.workdir or common.default_workdir(FLAGS.checkpoint, "features")
    out = os.path.join(workdir, "eigen_images.npz")
    common.check_new_output(out, FLAGS.overwrite)
    x, y, _ = common.checkpoint_probe(FLAGS, meta)
    model, _ = dynamics.load_model(FLAGS.checkpoint)
    with rundir.open_run(workdir):
        resolved = common.write_flags(workdir, __name__, logit=logit)
        print(f"eigen-images of logit {logit} of {FLAGS.checkpoint}: kernel on {len(x)} examples, "
              f"{FLAGS.num_eigen} eigenvectors ±, and w; {FLAGS.feature_steps} steps each")
        kernel = ntk.empirical_ntk(model, x, logit=logit, implementation=FLAGS.implementation,
                                   dtype="float64").numpy()
        images = eigenimages.eigen_images(model, x, kernel, logit, labels=y, num_eigen=FLAGS.num_eigen,
                                          steps=FLAGS.feature_steps, step_size=FLAGS.feature_step_size)
        for item in images:
            _png(os.path.join(workdir, f"{item['name']}.png"), item["image"], FLAGS.png_scale)
            ev = "" if item["eigenvalue"] is None else f"eigenvalue {item['eigenvalue']:.4g}, "
            print(f"  {item['name']:>6}: {ev}cosine {item['cosine']:+.4f}")
        stack = np.stack([item["image"] for item in images])
        rundir.write_npz(out, images=stack, names=np.array([i["name"] for i in images]),
                                   cosines=np.array([i["cosine"] for i in images]), kernel=kernel,
                                   labels=y, logit=np.int64(logit))
        writer = tf.summary.create_file_writer(workdir)
        epoch = meta.get("epoch") or 0
        with writer.as_default(step=summaries.epoch_step(epoch)):
            tf.summary.image(f"eigen_images/logit_{logit}", summaries.image_grid(stack, columns=2),
                             step=summaries.epoch_step(epoch))
            for item in images:
                tf.summary.image(f"eigen_images/logit_{logit}/{item['name']}", item["image"][None])
                tf.summary.scalar(f"eigen_images/logit_{logit}/{item['name']}_cosine", item["cosine"])
            summaries.write_config(resolved)
        writer.flush()
    print(f"images: {workdir}/*.png   tensorboard --logdir {workdir}")


if __name__ == "__main__":
    common.run(main)
