r"""Trains a classifier and reports benign and robust accuracy.

    python -m binaries.train --dataset=digits --model=cnn --epochs=5
"""

from binaries import quiet  # noqa: F401  (must precede TensorFlow)

# pylint: disable=g-import-not-at-top,g-bad-import-order
import tempfile

from absl import flags

from binaries import common
from binaries import common_flags
from tf_ntk import attacks
from tf_ntk import data
from tf_ntk import evaluation
from tf_ntk import models
from tf_ntk import training

common_flags.define_data_flags()
common_flags.define_model_flags()
common_flags.define_seed_flag()
common_flags.define_attack_flags(eps=0.1, steps=10)
flags.DEFINE_integer("epochs", 5, "Training epochs.", lower_bound=0)
flags.DEFINE_float("lr", 0.1, "Learning rate.", lower_bound=0.0)
flags.DEFINE_float("momentum", 0.9, "SGD momentum.", lower_bound=0.0)
flags.DEFINE_bool("adversarial", False, "Train on PGD examples (Madry) instead of clean data.")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    training.set_seed(FLAGS.seed)
    opts = common_flags.data_options(FLAGS)
    info = data.info(FLAGS.dataset, image_size=opts["image_size"], channels=opts["channels"])
    test = data.load(FLAGS.dataset, "test", batch_size=FLAGS.batch_size, **opts)
    spec = models.spec(FLAGS.model, info.num_classes, info.image_shape,
                       **common_flags.model_options(FLAGS))
    model = models.build(spec)
    attack = attacks.PGDConfig(eps=FLAGS.eps, steps=FLAGS.attack_steps,
                               step_size=FLAGS.attack_step_size, norm=FLAGS.attack_norm)
    config = training.TrainConfig.phase1(
        epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, lr=FLAGS.lr, momentum=FLAGS.momentum,
        data_mode="adv" if FLAGS.adversarial else "clean", adv_mode="madry", attack=attack,
        seed=FLAGS.seed, jit_compile=FLAGS.jit_compile, model=spec, save_epochs=(),
        data={"dataset": FLAGS.dataset, **opts})
    print(f"{FLAGS.model} ({models.num_params(model):,} parameters) on {FLAGS.dataset} "
          f"{info.image_shape}, {'PGD-adversarial' if FLAGS.adversarial else 'clean'} training")

    class Progress(training.Callback):
        def on_epoch_end(self, epoch, logs):
            print(f"epoch {epoch:3d}/{FLAGS.epochs}  loss {logs['loss']:.4f}  "
                  f"train accuracy {logs['accuracy']:.4f}")

    with tempfile.TemporaryDirectory() as workdir:
        training.train(model, lambda epoch: data.load(
            FLAGS.dataset, "train", batch_size=FLAGS.batch_size, shuffle=True, seed=FLAGS.seed,
            epoch=epoch, **opts), config, workdir, callbacks=[Progress()])
    model_fn = evaluation.inference_fn(model)
    benign = evaluation.accuracy(model_fn, test)
    robust = evaluation.robust_accuracy(model_fn, test, attack, seed=FLAGS.seed)
    print(f"benign accuracy {benign:.4f}")
    print(f"robust accuracy {robust:.4f}  ({FLAGS.attack_norm} PGD-{FLAGS.attack_steps}, "
          f"eps={FLAGS.eps:.4g})")


if __name__ == "__main__":
    common.run(main)
