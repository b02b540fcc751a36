r"""NTK eigen-images of a checkpoint: the inputs whose tangent features align with the top eigenvectors
of a per-logit kernel (positive and negative images) and with its kernel-regression weights ("w").

    tf-ntk-visualize-features --checkpoint=runs/adv/spawn/epoch_10 --logit=3

Protocol: per-logit kernel on --per_class examples per class; for eigenvector u_i, the tangent
direction v = Σ_j u_i[j] ∇θ f_c(x_j); 600 signed-gradient steps of 0.001 from a grey image, clipped to
[0, 1], maximising (minimising) the cosine between ∇θ f_c(x) and v. Writes PNGs, eigen_images.npz,
flags.json and TensorBoard images to --workdir (default RUN/features/<checkpoint name>).
"""

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
from tf_ntk.ntk import eigenimages
from tf_ntk.study import figures

common_flags.define_data_flags()
common_flags.define_image_flags()
common_flags.define_run_flags()
common_flags.define_checkpoint_flag()
common_flags.define_kernel_flags()
flags.DEFINE_integer("num_eigen", 3, "Top eigenvectors to visualise (at most the number of probe "
                     "examples, the kernel's size: fewer are computed, and recorded, when it is larger).",
                     lower_bound=1)
flags.DEFINE_integer("feature_steps", 600, "Signed-gradient steps per image.", lower_bound=1)
common_flags.define_fraction("feature_step_size", 0.001, "Step size per signed-gradient step "
                             "(pixel units).", lower=0.0)
flags.DEFINE_integer("png_scale", 8, "Nearest-neighbour upscaling of the PNGs.", lower_bound=1)

FLAGS = flags.FLAGS
REQUIRED_FLAGS = ("checkpoint",)  # marked required when the binary runs (tf_ntk.cli.common.run)


def _png(path, image, scale):
    img = np.kron(np.asarray(image, np.float32), np.ones((scale, scale, 1), np.float32))
    rundir.write_bytes(path, tf.io.encode_png(tf.cast(tf.round(255 * img), tf.uint8)).numpy())


def main(argv):
    del argv
    meta = checkpoints.read_spawn_meta(FLAGS.checkpoint)
    num_classes = meta["model"]["num_classes"]
    logit = 0 if FLAGS.logit is None else FLAGS.logit  # eigen-images need one logit's kernel
    common.check_logit(logit, num_classes)
    workdir = FLAGS.workdir or common.default_workdir(FLAGS.checkpoint, "features")
    out = os.path.join(workdir, rundir.EIGEN_IMAGES)
    common.check_new_output(out, FLAGS.overwrite)
    x, y, _ = common.checkpoint_probe(FLAGS, meta)
    model, _ = dynamics.load_model(FLAGS.checkpoint)
    with rundir.open_run(workdir):
        dtype = common_flags.kernel_dtype(FLAGS, default="float64")
        num_eigen = min(FLAGS.num_eigen, len(x))  # a P x P kernel has P eigenvectors
        resolved = common.write_flags(workdir, __name__, logit=logit, kernel_dtype=dtype,
                                      num_eigen=num_eigen)
        which = "--logit" if FLAGS.logit is not None else "the default; --logit chooses another"
        clamped = (f" (--num_eigen={FLAGS.num_eigen}, but the kernel of {len(x)} probe examples has "
                   f"{len(x)}: more --per_class gives more)") if num_eigen < FLAGS.num_eigen else ""
        print(f"eigen-images of logit {logit} ({which}) of {FLAGS.checkpoint}: {dtype} kernel on "
              f"{len(x)} examples, {num_eigen} eigenvectors ±{clamped}, and w; {FLAGS.feature_steps} "
              "steps each from grey and from the best probe image")
        kernel = ntk.empirical_ntk(model, x, logit=logit, implementation=FLAGS.implementation,
                                   dtype=dtype).numpy()
        images = eigenimages.eigen_images(model, x, kernel, logit, labels=y, num_eigen=num_eigen,
                                          steps=FLAGS.feature_steps, step_size=FLAGS.feature_step_size)
        failed = []
        for item in images:
            _png(os.path.join(workdir, f"{item['name']}.png"), item["image"], FLAGS.png_scale)
            ev = "" if item["eigenvalue"] is None else f"eigenvalue {item['eigenvalue']:.4g}, "
            note = "" if item["reached"] else "  NOT REACHED (the cosine has the wrong sign)"
            print(f"  {item['name']:>6}: {ev}cosine {item['cosine']:+.4f} (from {item['start']}){note}")
            if not item["reached"]:
                failed.append(f"{item['name']} (cosine {item['cosine']:+.3f}: {item['diagnosis']})")
        stack = np.stack([item["image"] for item in images])
        arrays = dict(images=stack, names=np.array([i["name"] for i in images]),
                      cosines=np.array([i["cosine"] for i in images]),
                      eigenvalues=np.array([np.nan if i["eigenvalue"] is None else i["eigenvalue"]
                                            for i in images]),
                      reached=np.array([i["reached"] for i in images]),
                      starts=np.array([i["start"] for i in images]),
                      readout=np.array([i["readout"] for i in images]),
                      other=np.array([i["other"] for i in images]),
                      diagnoses=np.array([i["diagnosis"] for i in images]))
        panel = figures.eigen_image_panel(
            [(f"logit {logit}", arrays)],
            f"eigen-images of {FLAGS.checkpoint} (epoch {meta.get('epoch')}), logit {logit}")
        panel_png = figures.png_bytes(panel)
        rundir.write_bytes(os.path.join(workdir, "eigen_images.png"), panel_png)
        rundir.write_npz(out, kernel=kernel, labels=y, logit=np.int64(logit), **arrays)
        writer = tf.summary.create_file_writer(workdir)
        epoch = meta.get("epoch") or 0
        with writer.as_default(step=summaries.epoch_step(epoch)):
            tf.summary.image(f"eigen_images/logit_{logit}", tf.io.decode_png(panel_png)[None],
                             description="Each image labelled with its eigenvector and sign (or w = "
                             "K⁻¹y), eigenvalue and achieved cosine; red: the search did not reach "
                             "the sign sought.")
            for item in images:
                label = "w = K⁻¹y" if item["name"] == "w" else f"eigenvector {item['name'][3:-1]}, " \
                    f"{'positive' if item['name'].endswith('+') else 'negative'} image"
                tf.summary.image(f"eigen_images/logit_{logit}/{item['name']}", item["image"][None],
                                 description=f"{label}; cosine {item['cosine']:+.4f}"
                                 f"{'' if item['reached'] else ' (NOT REACHED)'}")
                tf.summary.scalar(f"eigen_images/logit_{logit}/{item['name']}_cosine", item["cosine"])
            summaries.write_config(resolved)
        writer.flush()
    if failed:
        print(f"warning: the search did not reach the sign sought for {', '.join(failed)}: those "
              "images are the best found, not eigen-images (more --feature_steps or a larger "
              "--feature_step_size may help)")
    print(f"images: {workdir}/eigen_images.png, {workdir}/<name>.png   "
          f"{summaries.tensorboard_command(workdir)}")


def run():
    """The `tf-ntk-visualize-features` console command (`python -m binaries.visualize_features` in a checkout)."""
    common.command(main)


if __name__ == "__main__":
    run()
