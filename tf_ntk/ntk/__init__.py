"""The empirical neural tangent kernel k(x, x') = ∇θf(x)·∇θf(x') of a Keras model.

    K = tf_ntk.empirical_ntk(model, x1)                        # (N1, N1) trace kernel
    K = tf_ntk.empirical_ntk(model, x1, x2, kind="full")       # (N1, N2, O, O)
    K = tf_ntk.empirical_ntk(model, x1, logit=3, params=spawn) # (N1, N1), logit 3 at the spawn weights
    p = tf_ntk.ntk.plan(model, 500)                            # the plan, without computing

Modules (public: the kernel and what is computed from kernels; internal: how a kernel is computed,
their names may change without notice):
  kernel             `empirical_ntk` and `plan`: validation, the choice of implementation, blocking
  metrics            kernel distance and velocity, alignment, CKA, spectrum, effective rank
  eigenimages        NTK eigen-images: signed-gradient image search along tangent directions
  kernel_regression  the kernel machine: kernel ridge regression with the spawn's NTK
  kernel_shards      a kernel as tiles computed by independent processes, assembled when complete
  jacobian           internal: blocks from per-example Jacobians (`column_gradients`, the one
                     per-example gradient of the package)
  structured         internal: blocks from per-layer structured rules
  ntvp               internal: blocks from NTK-vector products (a forward-mode pass batched over tangents)
  cost               internal: cost and memory estimates, the planner
  keras_graph        internal: the model's functional graph (the only user of Keras' private graph API)
                     and the classification of layers by rule
  oracle             internal: the tests' float64 per-example-gradient kernel on an independent twin

Constants:
  KINDS                    the ``kind`` of kernel: "full" (N1, N2, O, O) over all logit pairs,
                           "diagonal" (N1, N2, O) logit by logit, "trace" (N1, N2) their sum
  IMPLEMENTATIONS          "jacobian", "ntvp", "structured", or "auto" (the cheapest by the cost model)
  DEFAULT_BUDGET_FRACTION  the default memory budget: 0.25 of the host memory available at the call
"""

from tf_ntk.ntk.keras_graph import UnsupportedModelError
from tf_ntk.ntk.kernel import DEFAULT_BUDGET_FRACTION
from tf_ntk.ntk.kernel import IMPLEMENTATIONS
from tf_ntk.ntk.kernel import KINDS
from tf_ntk.ntk.kernel import default_memory_budget
from tf_ntk.ntk.kernel import empirical_ntk
from tf_ntk.ntk.kernel import plan

__all__ = [
    "DEFAULT_BUDGET_FRACTION",
    "IMPLEMENTATIONS",
    "KINDS",
    "UnsupportedModelError",
    "default_memory_budget",
    "empirical_ntk",
    "plan",
]
