"""absl-flag programs over the tf_ntk library. Run from the repository root: python -m binaries.NAME.

Importing this package first mutes TensorFlow's C++ start-up noise (`binaries.quiet`): Python
imports a package before any of its modules, so every binary, and every benchmark (bench/__init__.py
imports this package), gets it without an import-order rule in each file.
"""

from binaries import quiet  # noqa: F401  (silences at import)
