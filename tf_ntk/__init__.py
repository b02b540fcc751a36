"""tf_ntk: empirical neural tangent kernels of Keras models under benign and adversarial training.

Architecture, in dependency order:
  data        tf.data pipelines (digits offline by default; TFDS data sets on request)
  models      Keras classifiers by name (resnet18, mlp, cnn)
  functional  the functional view f(θ, x) of a model, BN in inference mode
  attacks     PGD on top of cleverhans
  training    SGD train steps (clean or PGD-adversarial)
  evaluation  benign and robust accuracy
"""

from tf_ntk import attacks
from tf_ntk import data
from tf_ntk import evaluation
from tf_ntk import functional
from tf_ntk import models
from tf_ntk import training
from tf_ntk.functional import FunctionalModel

__version__ = "0.1.0"

__all__ = [
    "FunctionalModel",
    "attacks",
    "data",
    "evaluation",
    "functional",
    "models",
    "training",
]
