"""tf_ntk: empirical neural tangent kernels of Keras models under benign and adversarial training.

The tree, in dependency order (each folder one area; `__all__` is the public API):
  data, models, functional   tf.data pipelines (digits offline by default; TFDS data sets on request);
                             Keras classifiers by name (resnet18, mlp, cnn); the functional view
                             f(θ, x) of a model, BN in inference mode
  rundir, summaries          run directories (atomic writes through tf.io.gfile, records, locks);
                             TensorBoard summaries
  ntk/                       the kernel: `empirical_ntk` and its implementations, kernel metrics
                             (`ntk.metrics`), eigen-images, the kernel machine (`ntk.kernel_regression`),
                             kernels as tiles of independent processes (`ntk.kernel_shards`)
  training, dynamics,        training: SGD phase 1 / phase 2 on clean or PGD data (`training`), the
  checkpoints, distribute    linearized and centered models (`dynamics`), spawn checkpoints,
                             tf.distribute strategies by name
  robust/                    robust evaluation: PGD, APGD, Square, the named ensembles and their worst
                             case, the sanity report, benign / robust / transfer accuracy
  study/                     the reproduction study: presets, the job graph, the sweep (local pool,
                             Ray), statistics, claims, figures, TensorBoard, the report
  cli/                       the absl programs (`tf-ntk-train`, `tf-ntk-reproduce`, …)
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "FunctionalModel",
    "checkpoints",
    "data",
    "dynamics",
    "empirical_ntk",
    "functional",
    "kernel_machine",
    "linearize",
    "models",
    "ntk",
    "robust",
    "study",
    "training",
]

# The exports are imported on first use (PEP 562), not with the package: `import tf_ntk` and its
# version cost no TensorFlow import, and the commands (`tf_ntk.cli`) can mute TensorFlow's C++
# start-up logs before its first import. The imports below are what the exports resolve to (for
# linters, type checkers, IDEs and BUILD's dependency check); they do not run.
_MODULES = ("checkpoints", "data", "dynamics", "functional", "models", "ntk", "robust", "study", "training")
_NAMES = {"FunctionalModel": "functional", "empirical_ntk": "ntk", "kernel_machine": "ntk.kernel_regression",
          "linearize": "dynamics"}
# Modules that lived at the top level before the robust/, study/ and ntk/ folders: `from tf_ntk import
# attacks` keeps working (not in __all__; new code imports them from their folder).
_MOVED = {
    "attacks": "robust.attacks", "apgd": "robust.apgd", "square": "robust.square",
    "autoattack": "robust.autoattack", "robustness": "robust.ensembles", "sanity": "robust.sanity",
    "evaluation": "robust.evaluation", "sweep": "study.sweep", "ray_sweep": "study.ray_sweep",
    "report": "study.report", "figures": "study.figures", "stats": "study.stats", "claims": "study.claims",
    "board": "study.board", "kernel_shards": "ntk.kernel_shards", "kernel_regression": "ntk.kernel_regression",
    "metrics": "ntk.metrics", "eigenimages": "ntk.eigenimages",
}

if TYPE_CHECKING:
    from tf_ntk import checkpoints
    from tf_ntk import data
    from tf_ntk import dynamics
    from tf_ntk import functional
    from tf_ntk import models
    from tf_ntk import ntk
    from tf_ntk import robust
    from tf_ntk import study
    from tf_ntk import training
    from tf_ntk.dynamics import linearize
    from tf_ntk.functional import FunctionalModel
    from tf_ntk.ntk import empirical_ntk
    from tf_ntk.ntk.kernel_regression import kernel_machine


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"tf_ntk.{name}")
    if name in _MOVED:
        return importlib.import_module(f"tf_ntk.{_MOVED[name]}")
    if name in _NAMES:
        value = getattr(importlib.import_module(f"tf_ntk.{_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tf_ntk' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
