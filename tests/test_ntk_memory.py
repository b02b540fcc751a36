"""The memory budget against the real peak: a kernel call in a fresh process, its resident-set high-water
mark (VmHWM) against ``memory_budget_bytes``.

The planner's estimates are not checked against themselves: each case runs the call in a subprocess
(``python -m tests.test_ntk_memory``), resets the peak after TensorFlow and the model are loaded and
after one tiny warm-up kernel (TensorFlow's kernels and thread pools), and reports how far the call
raised the peak above the resident set it started from. That growth must stay within

    budget + 2 x kernel bytes + TF_BASELINE_BYTES

where the kernel itself is the result, not working set (it is assembled in host memory and handed
over as a tensor, a copy), and TF_BASELINE_BYTES covers what a call adds besides the working set the
planner budgets: tracing the block functions for the new shapes (measured 1-5 MiB for the jacobian and
structured blocks and up to 30 MiB for ntvp's graph walker, 2-core CPU, TF 2.21) and allocator
slack. Every case is one where ignoring the budget would need far more (checked first).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench import measure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF_BASELINE_BYTES = 48 * 2**20
MIB = 2**20
# (implementation, model, N, budget): the jacobian contraction in blocks of 16 examples (1.2 GiB
# estimated in one block), the structured rules on a CNN in blocks of 16, ntvp in chunks of 8
# tangents. The three subprocesses run concurrently (~15 s in all on 2 cores).
CASES = [
    ("jacobian", "mlp", 192, 256 * MIB),
    ("structured", "cnn", 256, 64 * MIB),
    ("ntvp", "mlp", 256, 32 * MIB),
]


def _model(name):
    from tf_ntk import models  # noqa: PLC0415  (TensorFlow only where a model is built)

    if name == "mlp":
        return models.get("mlp", 10, (8, 8, 1), width=256)
    return models.get("cnn", 10, (16, 16, 3), width=8)


def _child(implementation, model_name, n, budget):
    """Runs one kernel call and prints its peak growth as JSON (the subprocess side)."""
    import keras  # noqa: PLC0415

    import tf_ntk  # noqa: PLC0415
    from tf_ntk.cli import quiet  # noqa: F401, PLC0415  (must precede TensorFlow)

    keras.utils.set_random_seed(0)
    model = _model(model_name)
    x = np.random.default_rng(0).uniform(size=(n, *model.input_shape[1:])).astype(np.float32)
    tf_ntk.empirical_ntk(model, x[:3], implementation=implementation, block_size=2).numpy()
    measure.reset_peak()  # VmHWM back to the current resident set
    base = measure.vm_kib("VmRSS") * 1024
    kernel = tf_ntk.empirical_ntk(model, x, implementation=implementation,
                                  memory_budget_bytes=budget).numpy()
    print(json.dumps({"growth": measure.vm_kib("VmHWM") * 1024 - base, "kernel_bytes": kernel.nbytes}))


def _can_reset_peak():
    return measure.reset_peak()


@pytest.mark.skipif(not os.path.exists("/proc/self/status") or not _can_reset_peak(),
                    reason="needs Linux /proc peak-RSS accounting")
def test_real_peak_memory_stays_within_the_budget():
    import tf_ntk  # noqa: PLC0415

    for implementation, model_name, n, budget in CASES:
        # The budget binds: without it, the estimate alone would exceed what the test allows.
        unconstrained = tf_ntk.ntk.plan(_model(model_name), n, implementation=implementation,
                                        memory_budget_bytes=2**40).peak_bytes
        allowed = budget + 2 * 4 * n * n + TF_BASELINE_BYTES
        assert unconstrained >= 1.2 * allowed, (implementation, unconstrained / MIB)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.test_ntk_memory", impl, name, str(n), str(budget)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for impl, name, n, budget in CASES]
    for (implementation, _, _, budget), proc in zip(CASES, procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        result = json.loads(out.strip().splitlines()[-1])
        allowed = budget + 2 * result["kernel_bytes"] + TF_BASELINE_BYTES
        assert result["growth"] <= allowed, (
            f"{implementation}: the call raised the peak by {result['growth'] / MIB:.0f} MiB, "
            f"more than the {budget / MIB:.0f} MiB budget allows ({allowed / MIB:.0f} MiB)")


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
