r"""Benign and robust accuracy of a checkpoint under its dynamics, with a gradient-masking report.

    python -m binaries.evaluate --checkpoint=runs/adv/spawn/epoch_10 --eps=0.2
    python -m binaries.evaluate --checkpoint=runs/std/spawn/epoch_10 --eps=0.2 \
        --save_adversarial=runs/std/adv_eps0.2.npz
    python -m binaries.evaluate --checkpoint=runs/adv/spawn/epoch_10 \
        --transfer_from=runs/std/adv_eps0.2.npz

Defaults are the protocol's evaluation attack: L∞ PGD-100, ε = 4/255, step 2ε/100, one random start
(--attack_norm=l2 --eps=0.25 --attack_step_size=0.01 for the L2 attack). A phase-1 checkpoint can be
evaluated under another dynamics (--dynamics). Results go to --workdir (default
RUN/eval/<checkpoint name>): flags.json, evaluation.json and TensorBoard events.
"""

from binaries import quiet  # noqa: F401  (must precede TensorFlow)

# pylint: disable=g-import-not-at-top,g-bad-import-order
import os

from absl import flags
import tensorflow as tf

from binaries import common
from binaries import common_flags
from tf_ntk import checkpoints
from tf_ntk import data
from tf_ntk import evaluation
from tf_ntk import summaries

common_flags.define_data_flags()
common_flags.define_model_flags()
common_flags.define_attack_flags()
common_flags.define_seed_flag()
common_flags.define_run_flags()
common_flags.define_checkpoint_flag()
flags.DEFINE_enum("eval_dynamics", None, ["standard", "linearized", "centered"],
                  "Evaluate a phase-1 checkpoint under these dynamics (default: the checkpoint's own).")
flags.DEFINE_enum("split", "test", list(data.SPLITS), "Split to evaluate on.")
flags.DEFINE_integer("max_examples", None, "Evaluate on the first N examples only.", lower_bound=1)
flags.DEFINE_bool("sanity_checks", False, "Run the gradient-masking checks (several more attacks).")
flags.DEFINE_string("save_adversarial", None, "Save the adversarial set to this .npz.")
flags.DEFINE_string("transfer_from", None, "Also evaluate on a saved adversarial set (.npz): a "
                    "transfer attack.")
flags.DEFINE_bool("output_terms", False, "For linearized/centered models, save the two output terms "
                  "on clean and adversarial inputs to output_terms.npz.")
flags.adopt_module_key_flags(common_flags)

FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.checkpoint:
        raise ValueError("--checkpoint is required")
    meta = checkpoints.read_meta(FLAGS.checkpoint)
    config = common_flags.attack_config(FLAGS, default_steps=100)
    if FLAGS.save_adversarial and not FLAGS.save_adversarial.endswith(".npz"):
        raise ValueError(f"--save_adversarial must name a .npz file, got {FLAGS.save_adversarial}")
    if FLAGS.save_adversarial:
        common.check_new_output(FLAGS.save_adversarial, FLAGS.overwrite)
    transfer = evaluation.load_adversarial(FLAGS.transfer_from) if FLAGS.transfer_from else None
    opts = common_flags.data_options(FLAGS)
    recorded = (meta.get("config") or {}).get("data") or {}
    if not FLAGS["dataset"].present and recorded.get("dataset"):
        FLAGS.dataset = recorded["dataset"]  # evaluate on the data the checkpoint was trained on
        opts.update({k: recorded.get(k) for k in ("image_size", "channels") if k in recorded})
    info = data.info(FLAGS.dataset, image_size=opts["image_size"], channels=opts["channels"])
    common.check_input_shape(f"checkpoint {FLAGS.checkpoint}", meta["model"], info.image_shape,
                             FLAGS.dataset)
    dataset = data.load(FLAGS.dataset, FLAGS.split, batch_size=FLAGS.batch_size, **opts)
    if FLAGS.max_examples:
        dataset = dataset.unbatch().take(FLAGS.max_examples).batch(FLAGS.batch_size)
    model, _ = checkpoints.load_model(FLAGS.checkpoint, dynamics=FLAGS.eval_dynamics)
    dynamics = getattr(model, "centered", None)
    dynamics = "standard" if dynamics is None else ("centered" if dynamics else "linearized")
    if FLAGS.output_terms and dynamics == "standard":
        raise ValueError("--output_terms needs a linearized or centered model (--eval_dynamics)")
    workdir = FLAGS.workdir or common.default_workdir(FLAGS.checkpoint, "eval")
    results_path = os.path.join(workdir, "evaluation.json")
    common.check_new_output(results_path, FLAGS.overwrite)
    fn = evaluation.inference_fn(model)
    with common.run_directory(workdir):
        resolved = common.write_flags(workdir, __name__)
        print(f"{FLAGS.checkpoint} (epoch {meta.get('epoch')}, {dynamics} dynamics) on "
              f"{FLAGS.dataset}/{FLAGS.split}; attack {config.describe()}")
        results = {"checkpoint": os.path.abspath(FLAGS.checkpoint), "epoch": meta.get("epoch"),
                   "dynamics": dynamics, "attack": config.to_dict(), "flags": resolved}
        results["benign_accuracy"] = evaluation.accuracy(fn, dataset)
        batches = int(dataset.cardinality().numpy())
        x, x_adv, y = evaluation.adversarial_examples(
            fn, dataset, config, seed=FLAGS.seed,
            progress=common.progress(batches if batches > 0 else None, unit="batch"))
        results["robust_accuracy"] = evaluation.accuracy(
            fn, tf.data.Dataset.from_tensor_slices((x_adv, y)).batch(FLAGS.batch_size))
        if FLAGS.save_adversarial:
            evaluation.save_adversarial(FLAGS.save_adversarial, x, x_adv, y, config,
                                        checkpoint=results["checkpoint"], dynamics=dynamics)
            results["saved_adversarial"] = os.path.abspath(FLAGS.save_adversarial)
        if transfer is not None:
            results["transfer_accuracy"] = evaluation.transfer_accuracy(fn, transfer)
            results["transfer_from"] = os.path.abspath(FLAGS.transfer_from)
        if FLAGS.sanity_checks:
            report = evaluation.sanity_checks(fn, dataset, config, seed=FLAGS.seed)
            results["sanity_checks"] = report.to_dict()
            print(report)
        if FLAGS.output_terms:
            import numpy as np  # noqa: PLC0415

            terms = evaluation.output_terms(model, dataset, config, seed=FLAGS.seed)
            np.savez_compressed(os.path.join(workdir, "output_terms.npz"), **terms)
        writer = tf.summary.create_file_writer(workdir)
        with writer.as_default(step=summaries.epoch_step(meta.get("epoch") or 0)):
            for key in ("benign_accuracy", "robust_accuracy", "transfer_accuracy"):
                if key in results:
                    tf.summary.scalar(f"eval/{key}", results[key])
            summaries.write_config(resolved)
        writer.flush()
        checkpoints.write_json(results_path, results)
    print(f"benign accuracy {results['benign_accuracy']:.4f}")
    print(f"robust accuracy {results['robust_accuracy']:.4f}  ({config.describe()})")
    if "transfer_accuracy" in results:
        print(f"transfer accuracy {results['transfer_accuracy']:.4f}  (set {FLAGS.transfer_from})")
    if "sanity_checks" in results:
        print(f"sanity checks {'passed' if results['sanity_checks']['passed'] else 'FAILED'}")
    print(f"results: {results_path}")


if __name__ == "__main__":
    common.run(main)
