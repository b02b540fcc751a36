"""The absl programs over the library, installed as console commands: tf-ntk-train (`train`),
tf-ntk-evaluate, tf-ntk-compute-kernel, tf-ntk-kernel-dynamics, tf-ntk-kernel-machine,
tf-ntk-visualize-features, tf-ntk-results and tf-ntk-reproduce; `python -m tf_ntk.cli.<name>` runs
them too, and in a checkout so does `python -m binaries.<name>` (thin entry modules). Each program's
`run()` is its command.

Importing this package first mutes TensorFlow's C++ start-up noise (`quiet`): Python imports a
package before any of its modules, and `tf_ntk/__init__.py` imports TensorFlow only on first use of
its exports, so TensorFlow is first imported here, muted. Before that, `startup` makes an interrupt
during those seconds one line.
"""

# isort: off
from tf_ntk.cli import startup  # noqa: F401  (first: one line for an interrupt from here on)
from tf_ntk.cli import quiet  # noqa: F401  (silences at import)
# isort: on
