"""Regression against testdata/golden_kernels.npz: float64 kernels of the bundled models (MLP, CNN,
ResNet-18 with inference-mode BN) computed once by an independent per-example-Jacobian loop
(testdata/make_golden_kernels.py). Every implementation must still give them, so a TensorFlow or
Keras upgrade that changes a kernel, or a change in the engine, fails here."""

import os

import numpy as np
import pytest

from tests import helpers
from tf_ntk import models
from tf_ntk import ntk

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "testdata",
                      "golden_kernels.npz")
CASES = {
    "mlp": models.spec("mlp", 10, (8, 8, 1), width=8),
    "cnn": models.spec("cnn", 10, (8, 8, 1), width=4, zero_head=False),
    "resnet18": models.spec("resnet18", 10, (8, 8, 3), width=2, zero_head=False),
}


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as f:
        return {k: f[k] for k in f.files}


def _model(name, golden):
    model = models.build(CASES[name])
    for i, v in enumerate(model.trainable_variables):
        v.assign(golden[f"{name}/trainable_{i}"])
    for i, v in enumerate(model.non_trainable_variables):
        v.assign(golden[f"{name}/state_{i}"])
    return model


# Every engine on every model, except ntvp on ResNet-18 (~45 s of tracing here): the ResNet's kernel
# values regress through jacobian and structured, and ntvp on ResNet-18 is checked against the
# float64 per-example loop in tests/test_ntk.py.
PAIRS = [(name, implementation) for name in sorted(CASES) for implementation in ("jacobian", "ntvp", "structured")
         if (name, implementation) != ("resnet18", "ntvp")]


@pytest.mark.parametrize("name,implementation", PAIRS)
def test_float64_kernels_equal_the_golden_ones(name, implementation, golden):
    model = _model(name, golden)
    x = golden[f"{name}/x"]
    want = golden[f"{name}/kernel"]
    full = ntk.empirical_ntk(model, x, kind="full", implementation=implementation, dtype="float64").numpy()
    assert helpers.relative_error(full, want) < 1e-10
    trace = ntk.empirical_ntk(model, x, implementation=implementation, dtype="float64").numpy()
    np.testing.assert_allclose(trace, np.einsum("ijaa->ij", want) / want.shape[-1], rtol=1e-9, atol=0)


def test_the_fixture_holds_every_case_and_is_not_trivial(golden):
    for name in CASES:
        k = golden[f"{name}/kernel"]
        assert k.shape == (6, 6, 10, 10) and np.isfinite(k).all()
        flat = k.transpose(0, 2, 1, 3).reshape(60, 60)
        assert np.linalg.eigvalsh(flat).min() > -1e-9 * np.abs(flat).max()  # PSD
        assert np.abs(k).max() > 1e-3
