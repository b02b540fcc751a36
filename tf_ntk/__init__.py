"""tf_ntk: empirical neural tangent kernels of Keras models under benign and adversarial training.

Architecture, in dependency order:
  data        tf.data pipelines (digits offline by default; TFDS data sets on request)
  models      Keras classifiers by name (resnet18, mlp, cnn)
  functional  the functional view f(θ, x) of a model, BN in inference mode
  ntk         the empirical NTK, a package (implementations in ntk.jacobian, ntk.ntvp,
              ntk.structured; costs in ntk.cost; the Keras graph in ntk.keras_graph)
  dynamics    linearized and centered models around spawn weights
  kernel_regression  the kernel machine: kernel ridge regression with the spawn's NTK, the limit
              of centered training on the squared loss, as a centered model (`kernel_machine`)
  attacks     PGD on top of cleverhans
  training    SGD train steps (clean or PGD-adversarial)
  evaluation  benign and robust accuracy
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "FunctionalModel",
    "empirical_ntk",
    "ntk",
    "attacks",
    "data",
    "dynamics",
    "evaluation",
    "functional",
    "kernel_machine",
    "kernel_regression",
    "linearize",
    "models",
    "training",
]

# The exports are imported on first use (PEP 562), not with the package: `import tf_ntk` and its
# version cost no TensorFlow import, and the commands (`tf_ntk.cli`) can mute TensorFlow's C++
# start-up logs before its first import. The imports below are what the exports resolve to (for
# linters, IDEs and BUILD's dependency check); they do not run.
_MODULES = ("attacks", "data", "dynamics", "evaluation", "functional", "kernel_regression", "models", "ntk",
            "training")
_NAMES = {"FunctionalModel": "functional", "empirical_ntk": "ntk", "kernel_machine": "kernel_regression",
          "linearize": "dynamics"}

if TYPE_CHECKING:
    from tf_ntk import attacks
    from tf_ntk import data
    from tf_ntk import dynamics
    from tf_ntk import evaluation
    from tf_ntk import functional
    from tf_ntk import kernel_regression
    from tf_ntk import models
    from tf_ntk import ntk
    from tf_ntk import training
    from tf_ntk.dynamics import linearize
    from tf_ntk.functional import FunctionalModel
    from tf_ntk.kernel_regression import kernel_machine
    from tf_ntk.ntk import empirical_ntk


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"tf_ntk.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(f"tf_ntk.{_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tf_ntk' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
