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
