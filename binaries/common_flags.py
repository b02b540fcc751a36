"""Flags shared by the tf_ntk binaries, defined once. Method-specific flags stay in their binary."""

import fractions

from absl import flags

from tf_ntk import data
from tf_ntk import models


class FractionParser(flags.FloatParser):
    """Parses a float written as a decimal or a fraction ("4/255"), within [lower, upper]."""

    def convert(self, argument):
        if isinstance(argument, str) and "/" in argument:
            try:
                return float(fractions.Fraction(argument.strip()))
            except (ValueError, ZeroDivisionError) as e:
                raise ValueError(f"{argument!r} is not a number or a fraction like 4/255") from e
        return super().convert(argument)


def define_fraction(name, default, help_text, lower=None, upper=None):
    flags.DEFINE(FractionParser(lower_bound=lower, upper_bound=upper), name, default, help_text,
                 serializer=flags.ArgumentSerializer())


def define_data_flags():
    flags.DEFINE_enum("dataset", "digits", data.names(),
                      "Data set. digits ships with scikit-learn and works offline; the others come "
                      "from tensorflow-datasets and must be prepared (or --download).")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory (a gs:// bucket on Cloud TPU).")
    flags.DEFINE_bool("download", False, "Let tensorflow-datasets download and prepare the data set.")
    flags.DEFINE_integer("image_size", None, "Resize images to this square side.", lower_bound=1)
    flags.DEFINE_enum("channels", None, ["1", "3"], "Tile grey images to 3 channels.")
    flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)


def define_model_flags():
    flags.DEFINE_enum("model", "cnn", models.names(), "Model architecture.")
    flags.DEFINE_integer("width", None, "Model width (model default when unset).", lower_bound=1)


def define_attack_flags(prefix="", eps=4 / 255, steps=20):
    define_fraction(f"{prefix}eps", eps, "PGD radius in [0, 1] pixel units; accepts fractions (4/255).",
                    lower=0.0, upper=1.0)
    flags.DEFINE_integer(f"{prefix}attack_steps", steps, "PGD steps.", lower_bound=1)
    define_fraction(f"{prefix}attack_step_size", None,
                    "PGD step size in pixel units (default 2*eps/attack_steps).", lower=0.0)
    flags.DEFINE_enum(f"{prefix}attack_norm", "linf", ["linf", "l2"], "PGD norm.")


def define_seed_flag():
    flags.DEFINE_integer("seed", 0, "Random seed (same seed, same numbers on CPU).")


def data_options(FLAGS):  # noqa: N803  (absl's FLAGS object)
    """Keyword arguments for `tf_ntk.data.load` from the data flags."""
    return dict(data_dir=FLAGS.data_dir, download=FLAGS.download, image_size=FLAGS.image_size,
                channels=None if FLAGS.channels is None else int(FLAGS.channels))


def model_options(FLAGS):  # noqa: N803
    """Keyword arguments for `tf_ntk.models.get` from the model flags."""
    return {} if FLAGS.width is None else {"width": FLAGS.width}
