"""Flags shared by the tf_ntk binaries, defined once. Method-specific flags stay in their binary.

Every ``define_*`` is idempotent, so several binaries can be imported into one process (the tests
do): a shared flag has one definition, one default and one help text for all binaries. Flags whose
sensible default differs per binary default to None and are resolved by the binary. Each call makes
its flags key flags of the calling binary (and of no other): its ``--help`` and its recorded
``flags.json`` hold exactly the flags it defined, whatever other binaries the process imported.
"""

import fractions
import functools
import inspect
import math
import sys

from absl import flags

from tf_ntk import data
from tf_ntk import distribute
from tf_ntk import models
from tf_ntk import ntk
from tf_ntk.robust import attacks
from tf_ntk.robust import ensembles


class FractionParser(flags.FloatParser):
    """Parses a finite float written as a decimal or a fraction ("4/255"), within [lower, upper]
    (NaN and ±inf are rejected at parse time)."""

    def convert(self, argument):
        if isinstance(argument, str) and "/" in argument:
            try:
                return float(fractions.Fraction(argument.strip()))
            except (ValueError, ZeroDivisionError) as e:
                raise ValueError(f"{argument!r} is not a number or a fraction like 4/255") from e
        value = super().convert(argument)
        if not math.isfinite(value):
            raise ValueError(f"{argument!r} is not a finite number")
        return value


_GROUPS: dict[str, list[str]] = {}  # define_* function name -> the names of the flags it declares
_RECORDING: list[set[str]] = []  # the names declared while a define_* function runs for the first time


def _declare(names):
    """Registers ``names`` as key flags of the module that called into this one (the binary). A binary
    run as ``python -m`` is ``__main__``, which absl files under ``sys.argv[0]`` (its own flags too)."""
    for recording in _RECORDING:
        recording.update(names)
    frame = inspect.currentframe()
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    if frame is None:
        return
    module = frame.f_globals["__name__"]
    module = sys.argv[0] if module == "__main__" else module
    for name in names:
        flags.FLAGS.register_key_flag_for_module(module, flags.FLAGS[name])


def define_fraction(name, default, help_text, lower=None, upper=None):
    """Defines a finite float flag (decimals or fractions); every float flag of the binaries is one."""
    if name not in flags.FLAGS:
        flags.DEFINE(FractionParser(lower_bound=lower, upper_bound=upper), name, default, help_text,
                     serializer=flags.ArgumentSerializer())
    _declare([name])


class FloatListParser(flags.ListParser):
    """Parses comma-separated finite floats (decimals or fractions; empty items skipped) into a list."""

    def parse(self, argument):
        items = argument if isinstance(argument, (list, tuple)) else super().parse(argument)
        try:
            return [FractionParser().convert(v.strip() if isinstance(v, str) else v)
                    for v in items if str(v).strip()]
        except ValueError as e:
            raise ValueError(f"{argument!r} is not numbers separated by commas") from e

    def flag_type(self):
        return "comma separated list of floats"


def define_float_list(name, default, help_text):
    """Defines a flag of comma-separated floats (`FloatListParser`); its value is a list of floats."""
    if name not in flags.FLAGS:
        flags.DEFINE(FloatListParser(), name, default, help_text, serializer=flags.CsvListSerializer(","))
    _declare([name])


def _once(first_flag):
    """Decorator: run a define_* function only if its first flag is not defined yet; either way, its
    flags become key flags of the calling binary."""

    def wrap(fn):
        @functools.wraps(fn)
        def define(*args, **kwargs):
            if first_flag not in flags.FLAGS:
                # The group: the flags it defines and those it declares through other define_* calls
                # (define_attack_flags declares --eps even where define_eps_flag ran first).
                before = set(flags.FLAGS)
                _RECORDING.append(set())
                try:
                    fn(*args, **kwargs)
                finally:
                    declared = _RECORDING.pop()
                _GROUPS[fn.__name__] = sorted((set(flags.FLAGS) - before) | declared)
            _declare(_GROUPS.get(fn.__name__, ()))

        return define

    return wrap


@_once("dataset")
def define_data_flags():
    """--dataset, --data_dir, --download."""
    flags.DEFINE_enum("dataset", "digits", data.names(),
                      "Data set. digits ships with scikit-learn and works offline; the others come "
                      "from tensorflow-datasets and must be prepared (or --download). Commands on a "
                      "checkpoint default to the data set it was trained on.")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory (a gs:// bucket on Cloud TPU).")
    flags.DEFINE_bool("download", False, "Let tensorflow-datasets download and prepare the data set.")


@_once("image_size")
def define_image_flags():
    """--image_size, --channels (the data set's images as a model takes them)."""
    flags.DEFINE_integer("image_size", None, "Resize images to this square side.", lower_bound=1)
    flags.DEFINE_enum("channels", None, ["1", "3"], "Tile grey images to 3 channels.")


@_once("batch_size")
def define_batch_flag():
    """--batch_size."""
    flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)


@_once("model")
def define_model_flags():
    """--model, --width."""
    flags.DEFINE_enum("model", "cnn", models.names(), "Model architecture.")
    flags.DEFINE_integer("width", None, "Model width (model default when unset).", lower_bound=1)


def define_eps_flag():
    """--eps."""
    define_fraction("eps", 4 / 255, "PGD radius in [0, 1] pixel units (L∞) or L2 units; accepts "
                    "fractions (4/255).", lower=0.0, upper=1.0)


@_once("attack_steps")
def define_attack_flags():
    """--eps, --attack_steps, --attack_step_size, --attack_norm, --attack_loss, --restarts."""
    define_eps_flag()
    flags.DEFINE_integer("attack_steps", None, "PGD steps (default: 20 to train, 100 to evaluate).",
                         lower_bound=1)
    define_fraction("attack_step_size", None,
                    "PGD step size in pixel units (default 2*eps/attack_steps).", lower=0.0)
    flags.DEFINE_enum("attack_norm", "linf", ["linf", "l2"], "PGD norm.")
    flags.DEFINE_enum("attack_loss", "ce", ["ce", "margin"], "PGD loss: cross-entropy or CW margin.")
    flags.DEFINE_integer("restarts", 1, "PGD random restarts (the highest loss per example wins).",
                         lower_bound=1)


@_once("strong_restarts")
def define_strong_flags():
    """--strong_restarts, --square_queries, --strong_implementation (the strong evaluation ensemble)."""
    flags.DEFINE_integer("strong_restarts", 10, "Random restarts of the strong ensemble's PGD and APGD "
                         "members (its steps: --attack_steps, default 100).", lower_bound=1)
    flags.DEFINE_integer("square_queries", 5000, "Queries of the Square attack in the strong "
                         "ensemble and in AutoAttack (ART's default 5000; 0: no Square in the strong "
                         "ensemble).", lower_bound=0)
    flags.DEFINE_enum("strong_implementation", "tf", ["tf", "art"], "APGD-CE/-DLR and Square of the "
                      "strong ensemble: compiled TensorFlow loops (tf_ntk.robust.apgd, tf_ntk.robust.square; L2 "
                      "Square is ART's) or ART's (NumPy, one TensorFlow call per step; "
                      "bench/results/evaluation_profile.txt has the speed-up).")


@_once("seed")
def define_seed_flag():
    """--seed."""
    flags.DEFINE_integer("seed", 0, "Random seed (same seed, same numbers on CPU).")


@_once("workdir")
def define_run_flags():
    """--workdir, --overwrite."""
    flags.DEFINE_string("workdir", None, "Run directory: resolved flags, checkpoints, events, results.")
    flags.DEFINE_bool("overwrite", False, "Replace a finished run in --workdir instead of refusing.")


@_once("strategy")
def define_strategy_flags():
    """--strategy, --tpu, --cluster_timeout."""
    flags.DEFINE_enum("strategy", "default", list(distribute.STRATEGIES),
                      "tf.distribute strategy: one device, local GPUs (or logical devices), workers from "
                      "TF_CONFIG (train only), TPU.")
    flags.DEFINE_string("tpu", None, "TPU name or grpc:// address for --strategy=tpu ('local' on a TPU VM).")
    define_fraction("cluster_timeout", 300.0, "--strategy=multi_worker: seconds to wait at start-up for "
                    "every worker of TF_CONFIG's cluster to start and connect; past them the command "
                    "stops with one line naming the workers that did not answer (0: wait for ever).",
                    lower=0.0)


@_once("jit_compile")
def define_jit_flag():
    """--jit_compile."""
    flags.DEFINE_bool("jit_compile", False, "Compile the train and attack steps with XLA (TPUs; slower "
                      "than TensorFlow's kernels for convolutions on CPUs).")


def kernel_strategy(values):
    """The strategy whose local replicas share a kernel's blocks (compute_kernel, kernel_dynamics);
    None for one device. A kernel is split across hosts with --num_shards, not a multi-worker job."""
    if values.strategy == "multi_worker":
        raise ValueError("--strategy=multi_worker is for train; spread a kernel over hosts with "
                         "--num_shards=K --shard=i (one process per host, each with its local devices)")
    if values.strategy == "default":
        if values.tpu is not None:
            raise ValueError("--tpu is only for --strategy=tpu")
        return None
    return distribute.get_strategy(values.strategy, tpu=values.tpu)


@_once("checkpoint")
def define_checkpoint_flag():
    """--checkpoint."""
    flags.DEFINE_string("checkpoint", None, "A checkpoint directory, e.g. RUN/spawn/epoch_10.")


@_once("num_shards")
def define_shard_flags():
    """--num_shards, --shard: one share of a kernel computation, as an independent process."""
    flags.DEFINE_integer("num_shards", 1, "Split the kernel work over this many independent, "
                         "preemptible processes (one command each, --shard=0 … K-1, same flags "
                         "otherwise); the last to finish assembles the result.", lower_bound=1)
    flags.DEFINE_integer("shard", 0, "This process's share of the work (with --num_shards).",
                         lower_bound=0)


@_once("per_class")
def define_kernel_flags():
    """--per_class, --logit, --probe_split, --probe_seed, --implementation, --kernel_dtype."""
    flags.DEFINE_integer("per_class", 50, "Probe examples per class (protocol: 50 → 500 on 10 classes).",
                         lower_bound=1)
    flags.DEFINE_integer("logit", None, "Kernel of this logit (class index); default: the trace kernel "
                         "(mean over logits).", lower_bound=0)
    flags.DEFINE_enum("probe_split", "train", list(data.SPLITS), "Split the probe set is drawn from.")
    flags.DEFINE_integer("probe_seed", 0, "Seed of the class-balanced probe sample.")
    flags.DEFINE_enum("implementation", "auto", list(ntk.IMPLEMENTATIONS), "NTK implementation.")
    flags.DEFINE_enum("kernel_dtype", None, ["float32", "float64"], "Kernel precision (default: "
                      "float32; float64 for eigen-images, whose image search needs it).")


def kernel_dtype(FLAGS, default="float32"):  # noqa: N803
    """--kernel_dtype, or this binary's default when unset."""
    return FLAGS.kernel_dtype or default


def data_options(FLAGS):  # noqa: N803  (absl's FLAGS object)
    """Keyword arguments for `tf_ntk.data.load` from the data flags."""
    return dict(data_dir=FLAGS.data_dir, download=FLAGS.download, image_size=FLAGS.image_size,
                channels=None if FLAGS.channels is None else int(FLAGS.channels))


def model_options(FLAGS):  # noqa: N803
    """Keyword arguments for `tf_ntk.models.get` from the model flags."""
    return {} if FLAGS.width is None else {"width": FLAGS.width}


def strong_ensemble(FLAGS):  # noqa: N803
    """The strong ensemble (`tf_ntk.robust.ensembles.strong`) from the attack and strong flags:
    --eps, --attack_norm, --attack_steps (default 100), --strong_restarts, --square_queries,
    --strong_implementation."""
    return ensembles.strong(FLAGS.eps, FLAGS.attack_norm, steps=FLAGS.attack_steps or 100,
                            restarts=FLAGS.strong_restarts, square_queries=FLAGS.square_queries,
                            implementation=FLAGS.strong_implementation)


def attack_config(FLAGS, default_steps):  # noqa: N803
    """A `tf_ntk.robust.attacks.PGDConfig` from the attack flags."""

    return attacks.PGDConfig(eps=FLAGS.eps, steps=FLAGS.attack_steps or default_steps,
                             step_size=FLAGS.attack_step_size, norm=FLAGS.attack_norm,
                             loss=FLAGS.attack_loss, restarts=FLAGS.restarts)
