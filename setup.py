"""tf_ntk: empirical neural tangent kernels under benign and adversarial training."""

import setuptools

# Direct dependencies, pinned. constraints.txt pins the whole resolved environment.
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "tensorflow-datasets==4.9.10",
    "cleverhans==4.0.0",
    "tensorboard==2.21.0",
    "numpy==2.4.6",
    "absl-py==2.5.1",
    # Student-t intervals of the seed statistics (tf_ntk.stats).
    "scipy==1.17.1",
    # The bundled offline data set (8x8 digits) ships inside scikit-learn.
    "scikit-learn==1.9.1",
    # tensorflow-datasets imports it without declaring it.
    "importlib_resources==7.1.0",
    # Free host memory for the kernel engine's default memory budget.
    "psutil==7.2.2",
    # AutoAttack and the black-box Square attack of the robust evaluation (tf_ntk.autoattack);
    # ART's AutoAttack imports multiprocess without declaring it.
    "adversarial-robustness-toolbox==1.20.1",
    "multiprocess==0.70.19",
    # The reproduction report's figures (tf_ntk.figures).
    "matplotlib==3.11.2",
]

EXTRAS_REQUIRE = {
    "gpu": ["tensorflow[and-cuda]==2.21.0"],
    "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "ruff==0.17.6"],
}

setuptools.setup(
    name="tf_ntk",
    version="0.1.0",
    description=(
        "Empirical NTKs of Keras models under standard, linearized and centered dynamics, "
        "with PGD adversarial training."
    ),
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["tf_ntk", "tf_ntk.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
