"""tf_ntk: empirical neural tangent kernels under benign and adversarial training."""

import pathlib
import re

import setuptools

ROOT = pathlib.Path(__file__).parent
# One source for the version: tf_ntk/__init__.py (read, not imported: that would import TensorFlow).
VERSION = re.search(r'^__version__ = "([^"]+)"', (ROOT / "tf_ntk" / "__init__.py").read_text(),
                    re.M).group(1)

# Direct dependencies as compatible ranges: the lower bound is the version this project has run
# (constraints.txt pins the whole tested environment, which `make` installs); the upper bound is the
# next major version, where an API the code uses may break (0.x releases: the next minor). Keras' graph
# internals used by tf_ntk/ntk/keras_graph.py may change within 3.x: tests/test_golden_kernels.py is
# the check to run after an upgrade.
INSTALL_REQUIRES = [
    "tensorflow>=2.21.0,<3",
    "keras>=3.15.1,<4",
    "tensorflow-datasets>=4.9.10,<5",
    "cleverhans>=4.0.0,<5",
    "tensorboard>=2.21.0,<3",
    "numpy>=2.4.6,<3",
    "absl-py>=2.5.1,<3",
    # Student-t intervals of the seed statistics (tf_ntk.study.stats).
    "scipy>=1.17.1,<2",
    # The bundled offline data set (8x8 digits) ships inside scikit-learn.
    "scikit-learn>=1.9.1,<2",
    # tensorflow-datasets imports it without declaring it.
    "importlib_resources>=7.1.0,<8",
    # Free host memory for the kernel engine's default memory budget.
    "psutil>=7.2.2,<8",
    # AutoAttack and the black-box Square attack of the robust evaluation (tf_ntk.robust.autoattack);
    # ART's AutoAttack imports multiprocess without declaring it.
    "adversarial-robustness-toolbox>=1.20.1,<2",
    "multiprocess>=0.70.19,<0.71",
    # The reproduction report's figures (tf_ntk.study.figures) and heat-map colour maps.
    "matplotlib>=3.11.2,<4",
]

EXTRAS_REQUIRE = {
    "gpu": ["tensorflow[and-cuda]>=2.21.0,<3"],
    # `make docs`: the API reference generated from the docstrings.
    "docs": ["pdoc>=16.0.0,<17"],
    # The linter and the type checker are pinned exactly: their rules change between releases.
    "test": ["pytest>=9.2.0,<10", "pytest-xdist>=3.8.0,<4", "packaging>=26.4", "ruff==0.17.6", "mypy==2.4.1"],
    # `tf-ntk-reproduce --executor=ray`: the study's job graph on a Ray cluster.
    "ray": ["ray>=2.60.0,<3"],
}

# The absl programs as console commands: tf-ntk-train runs tf_ntk.cli.train.run (in a checkout,
# python -m binaries.train runs the same).
PROGRAMS = ("train", "evaluate", "compute_kernel", "kernel_dynamics", "kernel_machine", "visualize_features", "results",
            "reproduce")
CONSOLE_SCRIPTS = [f"tf-ntk-{name.replace('_', '-')} = tf_ntk.cli.{name}:run" for name in PROGRAMS]

setuptools.setup(
    name="tf_ntk",
    version=VERSION,
    description=(
        "Empirical NTKs of Keras models under standard, linearized and centered dynamics, "
        "with PGD adversarial training."
    ),
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["tf_ntk", "tf_ntk.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
