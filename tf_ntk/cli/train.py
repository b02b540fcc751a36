r"""Trains a network: phase 1 from scratch, or phase 2 from a spawn checkpoint under any dynamics.

    # phase 1, adversarial, spawn checkpoints in runs/adv/spawn/
    tf-ntk-train --workdir=runs/adv --data_mode=adv --eps=0.2 --epochs=10
    # phase 2: centered dynamics on clean data from the adversarial spawn at epoch 0.5
    tf-ntk-train --workdir=runs/adv-cen --spawn=runs/adv/spawn/epoch_0.5 \
        --dynamics=centered --data_mode=clean --epochs=10

The run directory holds flags.json, TensorBoard events (loss, accuracy, learning rate, benign test
accuracy and a quick robust-accuracy estimate (PGD-20, one start: tf-ntk-evaluate measures robust
accuracy with the strong attack), online kernel metrics and heat maps against the epoch, in milli-epochs),
spawn checkpoints, resume state, history.json, online_kernels.npz (with --kernel_every or
--kernel_at_spawns: the kernels the online metrics are measured against) and results.json. A run
directory with an unfinished run resumes; a finished one is refused unless --overwrite.

Seeds: --seed draws the initial weights (phase 1; phase 2 starts from the spawn checkpoint's) and,
unless --data_seed is given, also the data order (shuffled by (seed, epoch)), every PGD random start
of adversarial training (keyed by (seed, step)) and the quick evaluation's attack. --data_seed takes
those over, so two runs with the same --seed and different --data_seed start from the same weights
and differ only in data order and attack starts (a matched noise floor):

    tf-ntk-train --workdir=runs/adv-d1 --data_mode=adv --seed=0 --data_seed=1
"""

import math
import os
import zipfile

from absl import flags
import keras
import numpy as np
import tensorflow as tf

from tf_ntk import checkpoints
from tf_ntk import data
from tf_ntk import distribute
from tf_ntk import dynamics
from tf_ntk import models
from tf_ntk import ntk
from tf_ntk import rundir
from tf_ntk import summaries
from tf_ntk import training
from tf_ntk.cli import common
from tf_ntk.cli import common_flags
from tf_ntk.ntk import metrics
from tf_ntk.robust import evaluation

common_flags.define_data_flags()
common_flags.define_image_flags()
common_flags.define_batch_flag()
common_flags.define_model_flags()
common_flags.define_attack_flags()
common_flags.define_seed_flag()
common_flags.define_run_flags()
common_flags.define_strategy_flags()
common_flags.define_jit_flag()
common_flags.define_kernel_flags()
flags.DEFINE_string("spawn", None, "Phase 2: start from this spawn checkpoint (RUN/spawn/epoch_E).")
flags.DEFINE_enum("dynamics", "standard", list(training.DYNAMICS),
                  "Phase-2 dynamics: the network, its linearization, or the centered linearization.")
flags.DEFINE_enum("batchnorm", "frozen", ["frozen", "batch"],
                  "Phase-2 BN: frozen running statistics (inference mode) or batch statistics.")
flags.DEFINE_enum("data_mode", "clean", list(training.DATA_MODES),
                  "clean, adv (PGD examples) or flip (clean before --flip_epoch, adversarial after).")
flags.DEFINE_enum("adv_mode", "clean_then_adv", list(training.ADV_MODES),
                  "clean_then_adv (the authors': clean step, then PGD step) or madry (PGD step only).")
flags.DEFINE_integer("data_seed", None, "Seed of the data order, of every PGD random start of "
                     "training and of the quick evaluation's attack (default: --seed, which then keys "
                     "the initial weights only).")
flags.DEFINE_integer("flip_epoch", 50, "First adversarial epoch of --data_mode=flip.", lower_bound=0)
flags.DEFINE_integer("epochs", None, "Epochs (default: 101 in phase 1, 100 in phase 2).", lower_bound=1)
common_flags.define_fraction("lr", None, "Learning rate (default: 0.1 in phase 1, 0.01 in phase 2).",
                             lower=0.0)
common_flags.define_float_list("lr_boundaries", None, "Epochs at which the learning rate is "
                               "multiplied by --lr_factor (default: 100,150 in phase 1, none in phase 2).")
common_flags.define_fraction("lr_factor", 0.1, "Learning-rate decay factor at each boundary.",
                             lower=0.0)
common_flags.define_fraction("momentum", 0.9, "SGD momentum.", lower=0.0)
common_flags.define_float_list("save_epochs", None, "Spawn checkpoint epochs (fractions allowed); "
                               "default: every whole epoch and 0.125,0.25,0.375,0.5,0.75,1.5,2.5; empty for none.")
flags.DEFINE_integer("kernel_every", 0, "Compute the NTK on the probe set every K epochs and log its "
                     "metrics and heat map (0: never).", lower_bound=0)
flags.DEFINE_bool("kernel_at_spawns", False, "Also compute the kernel at every spawn checkpoint.")
flags.DEFINE_integer("eval_every", 1, "Benign and robust test accuracy every K epochs (0: only at the "
                     "end).", lower_bound=0)
flags.DEFINE_integer("eval_attack_steps", 20, "PGD steps of the quick robust-accuracy estimate logged "
                     "during training; an estimate only: tf-ntk-evaluate measures robust accuracy "
                     "with the protocol and strong attacks.", lower_bound=1)

FLAGS = flags.FLAGS
REQUIRED_FLAGS = ("workdir",)  # marked required when the binary runs (tf_ntk.cli.common.run)


def _resolve():
    """The TrainConfig, model spec and phase-2 spawn the flags ask for (validated, nothing written)."""
    phase2 = FLAGS.spawn is not None
    if FLAGS.dynamics != "standard" and not phase2:
        raise ValueError(f"--dynamics={FLAGS.dynamics} needs --spawn (phase 2 starts from a checkpoint)")
    opts = common_flags.data_options(FLAGS)
    info = data.info(FLAGS.dataset, image_size=opts["image_size"], channels=opts["channels"])
    spec = models.spec(FLAGS.model, info.num_classes, info.image_shape,
                       **common_flags.model_options(FLAGS))
    if phase2:
        meta = checkpoints.read_spawn_meta(FLAGS.spawn)
        if not (FLAGS["model"].present or FLAGS["width"].present):
            spec = meta.get("model") or spec  # the spawn decides the architecture
        common.check_input_shape(f"checkpoint {FLAGS.spawn}", spec, info.image_shape, FLAGS.dataset)
    preset = training.TrainConfig.phase2 if phase2 else training.TrainConfig.phase1
    overrides = {}
    if FLAGS.epochs is not None:
        overrides["epochs"] = FLAGS.epochs
    if FLAGS.lr is not None:
        overrides["lr"] = FLAGS.lr
    if FLAGS.lr_boundaries is not None:
        overrides["lr_boundaries"] = tuple(FLAGS.lr_boundaries)
    if FLAGS.save_epochs is not None:
        overrides["save_epochs"] = tuple(FLAGS.save_epochs)
    config = preset(
        batch_size=FLAGS.batch_size, lr_factor=FLAGS.lr_factor, momentum=FLAGS.momentum,
        data_mode=FLAGS.data_mode, flip_epoch=FLAGS.flip_epoch, adv_mode=FLAGS.adv_mode,
        attack=common_flags.attack_config(FLAGS, default_steps=20), seed=FLAGS.seed,
        data_seed=FLAGS.data_seed,
        dynamics=FLAGS.dynamics, batchnorm=FLAGS.batchnorm,
        spawn=rundir.abspath(FLAGS.spawn) if phase2 else None, jit_compile=FLAGS.jit_compile,
        model=spec, data={"dataset": FLAGS.dataset, **opts}, **overrides)
    return config, info, opts


class _Logger(training.Callback):
    """Progress bar, TensorBoard scalars, periodic test accuracy and online kernel metrics."""

    def __init__(self, writer, model, config, test, probe_labels, ledger, workdir, kernels):
        self.writer = writer
        self.ledger = ledger  # what a killed earlier process of the run already logged
        self.workdir = workdir
        self.model = model
        self.config = config
        self.test = test
        self.probe_labels = probe_labels
        self.bar = None
        self.epoch_start = 0
        self.kernels = kernels  # [(epoch, kernel)]: the first, and the recent ones
        self.last_eval = None
        eval_attack = dict(config.attack.to_dict(), steps=FLAGS.eval_attack_steps, step_size=None)
        self.eval_attack = type(config.attack)(**eval_attack)

    def on_epoch_begin(self, epoch, steps_per_epoch):
        print(f"epoch {epoch + 1}/{self.config.epochs}"
              f"{' (adversarial)' if self.config.adversarial_at(epoch) else ''}")

        self.bar = keras.utils.Progbar(steps_per_epoch)  # running means over the epoch
        self.epoch_start = epoch * steps_per_epoch

    def on_batch_end(self, step, logs):
        self.bar.update(step - self.epoch_start, values=[("loss", logs["loss"]),
                                                          ("accuracy", logs["accuracy"])])

    def evaluate(self, epoch):
        fn = evaluation.inference_fn(self.model)
        benign = evaluation.accuracy(fn, self.test)
        robust = evaluation.robust_accuracy(fn, self.test, self.eval_attack,
                                            seed=self.config.effective_data_seed)
        self.last_eval = {"epoch": epoch, "benign_accuracy": benign, "robust_accuracy_quick": robust}
        with self.writer.as_default(step=summaries.epoch_step(epoch)):
            step = summaries.epoch_step(epoch)
            self.ledger.scalar("test/benign_accuracy", benign, step)
            self.ledger.scalar("test/robust_accuracy_quick", robust, step, description=(
                f"Quick estimate ({self.eval_attack.describe()}, one start); an upper bound on robust "
                "accuracy: tf-ntk-evaluate measures it with the strong attack."))
        print(f"  test: benign {benign:.4f}  robust {robust:.4f} (quick estimate: "
              f"{self.eval_attack.describe()})")
        return self.last_eval

    def on_epoch_end(self, epoch, logs):
        with self.writer.as_default(step=summaries.epoch_step(epoch)):
            step = summaries.epoch_step(epoch)
            for name in ("loss", "accuracy", "lr"):
                self.ledger.scalar(f"train/{name}", logs[name], step)
        if FLAGS.eval_every and epoch % FLAGS.eval_every == 0:
            self.evaluate(epoch)
        self.writer.flush()

    def on_kernel(self, epoch, kernel):
        k = np.asarray(kernel)
        init = self.kernels[0][1] if self.kernels else k  # the first kernel is its own reference
        prev_epoch, prev = self.kernels[-1] if self.kernels else (None, None)
        values = metrics.kernel_summary(k, labels=self.probe_labels, init=init, previous=prev,
                                        dt=None if prev_epoch is None else epoch - prev_epoch)
        self.kernels = [*self.kernels[:1], *((e, kk) for e, kk in self.kernels[1:]
                                             if e >= math.floor(epoch) - 1), (epoch, k)]
        with self.writer.as_default(step=summaries.epoch_step(epoch)):
            step = summaries.epoch_step(epoch)
            for name, value in values.items():  # online: not the kernel/* of tf-ntk-kernel-dynamics
                self.ledger.scalar(f"online_kernel/{name}", value, step)
            summaries.write_kernel("online_kernel", k, epoch, labels=self.probe_labels,
                                   ledger=self.ledger)
        self.writer.flush()
        # A resumed run measures its kernels against the same init and previous kernel.
        rundir.write_npz(rundir.join(self.workdir, ONLINE_KERNELS),
                         epochs=np.array([e for e, _ in self.kernels], np.float64),
                         kernels=np.stack([kk for _, kk in self.kernels]))


ONLINE_KERNELS = "online_kernels.npz"
"""The probe kernels the online metrics are measured against (the first and the recent ones)."""


def _resumed_kernels(workdir):
    """[(epoch, kernel)] of ONLINE_KERNELS up to the resume state's position (later ones were
    computed after it, by a process killed before it committed them: they are computed again)."""
    path = rundir.join(workdir, ONLINE_KERNELS)
    resume_dir = os.path.join(workdir, checkpoints.RESUME_DIR)
    if not (rundir.exists(path) and checkpoints.exists(resume_dir)):
        return []
    meta = checkpoints.read_meta(resume_dir)
    position = float(len(meta.get("history", [])))
    if meta.get("partial"):
        partial = meta["partial"]
        position = partial["epoch"] + partial["batches"] / meta["steps_per_epoch"]
    try:
        saved = rundir.read_npz(path)
        pairs = list(zip(saved["epochs"], saved["kernels"], strict=True))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, tf.errors.OpError) as e:
        raise ValueError(f"corrupt {path} ({rundir.one_line(e)}): delete it to resume without the "
                         "earlier online kernels") from None
    return [(float(e), k) for e, k in pairs if e <= position + 1e-9]


def _has_resume_state(path):
    return checkpoints.exists(os.path.join(path, checkpoints.RESUME_DIR))


def _has_checkpoints(path):
    """Whether a run directory holds something a failed command must keep: its resume state or a
    spawn checkpoint (a run that diverged keeps the spawns written before it)."""
    return _has_resume_state(path) or bool(checkpoints.list_spawns(path))


def _train_as_worker(strategy, model, train_data, config, workdir):
    """A non-chief worker of a multi-worker job: the same training steps, no writes (the chief
    writes the run directory, evaluates and records the results)."""
    training.check_run(workdir, config)
    with common.deferred_interrupts():
        training.train(model, train_data, config, workdir, strategy=strategy,
                       stop_requested=common.stop_requested)
    print(f"{distribute.worker_name(strategy)}: trained {config.epochs} epochs; the chief writes {workdir}")


def main(argv):
    del argv
    # First: a multi-worker strategy must exist before any other TensorFlow operation runs.
    strategy = distribute.get_strategy(FLAGS.strategy, tpu=FLAGS.tpu, cluster_timeout=FLAGS.cluster_timeout)
    common.catch_interrupts()  # TensorFlow's multi-worker runtime took SIGTERM over
    config, info, opts = _resolve()
    training.set_seed(FLAGS.seed)  # the initialisation (phase 2: the spawn's weights instead)
    test = data.load(FLAGS.dataset, "test", batch_size=FLAGS.batch_size, **opts)
    train_data = lambda epoch: data.load(  # noqa: E731
        FLAGS.dataset, "train", batch_size=FLAGS.batch_size, shuffle=True,
        seed=config.effective_data_seed, epoch=epoch, drop_remainder=FLAGS.strategy == "tpu", **opts)
    probe = common.probe_set(FLAGS) if FLAGS.kernel_every or FLAGS.kernel_at_spawns else None
    # In a sweep worker (`tf_ntk.dynamics.reuse_models`), one device: a model kept from an earlier job
    # serves again, and its traced train steps with it.
    reuse = FLAGS.strategy == "default"
    with strategy.scope():
        if config.spawn:
            model, _ = dynamics.load_model(config.spawn, dynamics=config.dynamics, batchnorm=config.batchnorm,
                                           expected_model=config.model, reuse=reuse)
        else:
            model = dynamics.build_model(config.model, reuse=reuse)
    workdir = FLAGS.workdir
    if not distribute.is_chief(strategy):
        _train_as_worker(strategy, model, train_data, config, workdir)
        return
    # Finished means results.json is written (last): a run killed after its last epoch but before
    # that resumes and only evaluates.
    with rundir.open_run(workdir, overwrite=FLAGS.overwrite, finished=rundir.is_finished,
                         keep_if=_has_checkpoints):
        training.check_run(workdir, config)  # before anything is written: a refused run changes nothing
        resuming = _has_resume_state(workdir)
        kernels = _resumed_kernels(workdir)
        resolved = common.write_flags(workdir, __name__, resolved_config=config.to_dict())
        ledger = summaries.Ledger(workdir)  # read before this process' writer adds a file
        writer = tf.summary.create_file_writer(workdir)
        with writer.as_default(step=0):  # once: a killed earlier start may have logged them
            if ledger.new("config", 0):
                summaries.write_config(resolved)
            if ledger.new("_hparams_/session_start_info", 0):
                # phase 2: its spawn's epoch and the phase-1 run it comes from (RUN/spawn/<name>);
                # phase 1 starts from the initialisation, "spawn epoch" 0.
                spawn = ({"spawn_epoch": float(checkpoints.read_meta(config.spawn).get("epoch", -1)),
                          "spawn_source": os.path.basename(os.path.dirname(os.path.dirname(
                              rundir.abspath(config.spawn).rstrip("/"))))}
                         if config.spawn else {"spawn_epoch": 0.0, "spawn_source": "init"})
                summaries.write_hparams(
                    {**config.to_dict(), "phase": 2 if config.spawn else 1, **spawn,
                     "data_seed": config.effective_data_seed,
                     "eps": config.attack.eps, "attack_steps": config.attack.steps,
                     "model_name": config.model["name"],
                     "width": config.model["options"].get("width", 0)},
                    trial_id=os.path.basename(rundir.abspath(workdir).rstrip("/")),
                    online_kernel=probe is not None)
        phase = f"phase 2 ({config.dynamics} from {config.spawn})" if config.spawn else "phase 1"
        print(f"{config.model['name']} ({models.num_params(model):,} parameters) on {FLAGS.dataset} "
              f"{info.image_shape}, {phase}, {config.data_mode} data"
              f"{'' if config.data_mode == 'clean' else ', ' + config.adv_mode + ', ' + config.attack.describe()}"
              f"{'; resuming' if resuming else ''} → {workdir}")
        logger = _Logger(writer, model, config, test, None if probe is None else probe[1], ledger,
                         workdir, kernels)
        tracker = None
        if probe is not None:
            tracker = training.KernelTracker(
                probe[0], every=FLAGS.kernel_every, at_spawns=FLAGS.kernel_at_spawns,
                kernel_fn=lambda m, x: ntk.empirical_ntk(m, x, logit=FLAGS.logit,
                                                         implementation=FLAGS.implementation,
                                                         dtype=common_flags.kernel_dtype(FLAGS)))
        with common.deferred_interrupts():  # SIGTERM: finish the step, checkpoint there, exit
            history = training.train(model, train_data, config, workdir, strategy=strategy,
                                     callbacks=[logger], kernel_tracker=tracker,
                                     stop_requested=common.stop_requested)
        final = logger.last_eval if (logger.last_eval and logger.last_eval["epoch"] == config.epochs) \
            else logger.evaluate(config.epochs)
        results = {**final, "final_train_loss": history[-1]["loss"] if history else None,
                   "quick_attack": logger.eval_attack.to_dict(), "dynamics": config.dynamics,
                   "data_mode": config.data_mode, "adv_mode": config.adv_mode,
                   "seed": config.seed, "data_seed": config.effective_data_seed,
                   "spawn": config.spawn, "flags": resolved}
        writer.flush()  # the final evaluation's events before results.json, which finishes the run
        rundir.write_json(rundir.join(workdir, rundir.RESULTS), results)
    print(f"benign accuracy {final['benign_accuracy']:.4f}")
    print(f"robust accuracy {final['robust_accuracy_quick']:.4f}  (quick estimate: "
          f"{logger.eval_attack.describe()}; tf-ntk-evaluate for the strong attack)")
    print(f"results: {os.path.join(workdir, 'results.json')}   "
          f"{summaries.tensorboard_command(workdir)}")


def run():
    """The `tf-ntk-train` console command (`python -m binaries.train` in a checkout)."""
    common.command(main)


if __name__ == "__main__":
    run()
