"""The empirical NTK against an independent oracle (`tf_ntk.ntk.oracle`): a float64 loop of
per-example, per-logit ``tape.gradient`` calls on an independently built float64 twin holding the
model's own weights, dot products taken in NumPy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tests import ntk_cases
import tf_ntk
from tf_ntk import functional
from tf_ntk import models
from tf_ntk.ntk import cost
from tf_ntk.ntk import keras_graph
from tf_ntk.ntk import oracle

NUM_CLASSES = ntk_cases.NUM_CLASSES
N1 = ntk_cases.N1
MODELS = ntk_cases.MODELS
_case = ntk_cases.case
IMPLEMENTATIONS = ("jacobian", "ntvp", "structured")
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def _expected(full, kind, logit):
    diag = np.einsum("ijaa->ija", full)
    if logit is not None:
        return diag[..., logit]
    return {"full": full, "diagonal": diag, "trace": diag.mean(-1)}[kind]


ALL_CONFIGS = [(kind, logit, symmetric) for kind, logit in
               [("full", None), ("diagonal", None), ("trace", None), ("trace", NUM_CLASSES - 1)]
               for symmetric in (True, False)]
# Every kind, logit and symmetry for every implementation and dtype on the models that trace fast
# (the fallback rule's float32 path: each kind once, its float64 path every configuration).
# Tracing the vectorized per-example gradients of the 20-conv ResNet takes ~10 s per configuration,
# so on ResNet-18 each code path (all logits' O x O blocks, the per-logit diagonal, a single logit;
# x2 given and None) is covered once per implementation.
CONFIGS = {
    ("mlp", "float64"): ALL_CONFIGS, ("mlp", "float32"): ALL_CONFIGS,
    ("unknown_layer", "float64"): ALL_CONFIGS,
    ("unknown_layer", "float32"): [("full", None, False), ("diagonal", None, True), ("trace", 1, False)],
    ("cnn", "float64"): ALL_CONFIGS,
    ("cnn", "float32"): [("full", None, True), ("trace", None, False), ("trace", 1, True)],
    ("resnet18", "float64"): [("full", None, False), ("diagonal", None, True)],
    ("resnet18", "float32"): [("trace", 0, False)],
}


# The unknown layer matters to the structured engine's per-layer rules; jacobian and ntvp differentiate
# it like any layer, so there each kind is checked once.
GENERIC_ON_UNKNOWN = [("full", None, True), ("diagonal", None, False), ("trace", NUM_CLASSES - 1, True)]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name,dtype", list(CONFIGS))
def test_kernels_match_the_oracle(name, dtype, implementation):
    model, x1, x2, k11, k12 = _case(name)
    configs = CONFIGS[(name, dtype)]
    if name == "unknown_layer" and implementation != "structured":
        configs = GENERIC_ON_UNKNOWN
    for n, (kind, logit, symmetric) in enumerate(configs):
        # Several block sizes: one block, blocks of 2 (a padded last block), blocks of 3.
        block_size = None if name == "resnet18" else (None, 2, 3)[n % 3]
        got = tf_ntk.empirical_ntk(
            model, x1, None if symmetric else x2, kind=kind, logit=logit,
            implementation=implementation, dtype=dtype, block_size=block_size)
        want = _expected(k11 if symmetric else k12, kind, logit)
        assert got.dtype == tf.as_dtype(dtype)
        assert got.shape == want.shape, (kind, logit, symmetric)
        err = helpers.relative_error(got.numpy(), want)
        assert err < TOLERANCE[dtype], (kind, logit, symmetric, block_size, err)


def test_unknown_layers_take_the_fallback_rule():
    model, *_ = _case("unknown_layer")
    rules = {layer.name: rule for layer, rule in keras_graph.weighted_layers(model)}
    assert rules["layer_norm"] == keras_graph.FALLBACK
    assert rules["dense_rank3"] == keras_graph.FALLBACK
    assert keras_graph.DENSE in rules.values()
    cnn, *_ = _case("cnn")
    assert {keras_graph.CONV, keras_graph.BATCHNORM, keras_graph.DENSE} == {
        r for _, r in keras_graph.weighted_layers(cnn)}


def test_identities_and_the_model_is_untouched():
    model, x1, x2, *_ = _case("cnn")
    before = [v.numpy().copy() for v in model.variables]
    full = tf_ntk.empirical_ntk(model, x1, kind="full", dtype="float64").numpy()
    diag = tf_ntk.empirical_ntk(model, x1, kind="diagonal", dtype="float64").numpy()
    trace = tf_ntk.empirical_ntk(model, x1, dtype="float64").numpy()
    np.testing.assert_allclose(diag, np.einsum("ijaa->ija", full), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(trace, diag.mean(-1), rtol=1e-12, atol=1e-14)
    for c in range(NUM_CLASSES):
        logit = tf_ntk.empirical_ntk(model, x1, logit=c, dtype="float64").numpy()
        np.testing.assert_allclose(logit, diag[..., c], rtol=1e-12, atol=1e-14)
    # Symmetric and positive semi-definite.
    np.testing.assert_array_equal(trace, trace.T)
    assert np.linalg.eigvalsh(trace).min() > -1e-10 * np.abs(trace).max()
    flat = full.transpose(0, 2, 1, 3).reshape(N1 * NUM_CLASSES, -1)
    np.testing.assert_allclose(flat, flat.T, rtol=1e-12, atol=1e-14)
    assert np.linalg.eigvalsh(flat).min() > -1e-10 * np.abs(flat).max()
    for a, b in zip(before, [v.numpy() for v in model.variables]):
        np.testing.assert_array_equal(a, b)


def test_params_equal_a_model_loaded_with_them():
    model, x1, x2, *_ = _case("cnn")
    rng = np.random.default_rng(11)
    theta = [v.numpy() + rng.normal(0, 0.2, v.shape).astype(np.float32) for v in model.trainable_variables]
    twin = MODELS["cnn"]()
    twin.set_weights(model.get_weights())
    functional.assign(twin, theta)
    for implementation in IMPLEMENTATIONS:
        at_theta = tf_ntk.empirical_ntk(model, x1, x2, params=theta, implementation=implementation,
                                        dtype="float64")
        loaded = tf_ntk.empirical_ntk(twin, x1, x2, implementation=implementation, dtype="float64")
        assert helpers.relative_error(at_theta, loaded) < 1e-12
    current = tf_ntk.empirical_ntk(model, x1, x2, dtype="float64")
    assert helpers.relative_error(current, loaded) > 1e-3  # the params really moved the kernel


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_inside_tf_function_and_under_xla(implementation):
    # The CNN (conv + BN) in one block, inside tf.function and under XLA.
    model, x1, x2, _, k12 = _case("cnn")
    for jit in (False, True):
        fn = tf.function(lambda a, b: tf_ntk.empirical_ntk(model, a, b, implementation=implementation),
                         jit_compile=jit)
        assert helpers.relative_error(fn(x1, x2).numpy(), _expected(k12, "trace", None)) < 1e-5
    # Several blocks, mirrored, under XLA (the block loop is unrolled at trace time).
    mlp, x1, _, k11, _ = _case("mlp")
    sym = tf.function(lambda a: tf_ntk.empirical_ntk(mlp, a, kind="full", block_size=3,
                                                     implementation=implementation),
                      jit_compile=True)
    assert helpers.relative_error(sym(x1).numpy(), k11) < 1e-5


def test_progress_reports_every_block_and_budget_bounds_the_block():
    model, x1, *_ = _case("mlp")
    calls = []
    tf_ntk.empirical_ntk(model, x1, block_size=2, progress=lambda d, t: calls.append((d, t)))
    # 5 examples in blocks of 2: 3 row blocks, 6 blocks on and above the diagonal.
    assert calls == [(k, 6) for k in range(1, 7)]
    small = tf_ntk.ntk.plan(model, 500, kind="full", implementation="jacobian",
                            memory_budget_bytes=2**20)
    large = tf_ntk.ntk.plan(model, 500, kind="full", implementation="jacobian",
                            memory_budget_bytes=2**30)
    assert small.block_size < large.block_size and small.peak_bytes <= 2**20
    with pytest.raises(MemoryError, match="more than the memory budget"):
        tf_ntk.empirical_ntk(model, x1, implementation="jacobian", memory_budget_bytes=10)


def test_bad_input_is_a_clear_error():
    model, x1, *_ = _case("mlp")
    with pytest.raises(ValueError, match="unknown kind 'all'"):
        tf_ntk.empirical_ntk(model, x1, kind="all")
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        tf_ntk.empirical_ntk(model, x1, implementation="fast")
    with pytest.raises(ValueError, match=r"logit must be an int in \[0, 3\), got 3"):
        tf_ntk.empirical_ntk(model, x1, logit=3)
    with pytest.raises(ValueError, match="do not fit model"):
        tf_ntk.empirical_ntk(model, np.zeros((2, 5, 4, 1), np.float32))
    with pytest.raises(functional.ParamsMismatchError, match="params has 1 tensors"):
        tf_ntk.empirical_ntk(model, x1, params=[np.zeros(3)])
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        tf_ntk.empirical_ntk(model, x1, dtype="int32")


def _nested_with_ops(dtype):
    """A functional model with a nested Sequential and plain Keras ops, built in ``dtype``."""
    inputs = keras.Input((4,), dtype=dtype)
    x = keras.layers.Dense(5, activation="tanh", dtype=dtype)(inputs)
    x = keras.ops.tanh(x) * 2.0
    inner = keras.Sequential([keras.Input((5,), dtype=dtype),
                              keras.layers.Dense(4, activation="relu", dtype=dtype),
                              keras.layers.Dense(4, dtype=dtype)])
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, dtype=dtype)(inner(x)))


def _own_gradients_kernel(model64, x1, x2):
    """Oracle built from a model constructed in float64 (not through tf_ntk's float64 copy)."""
    return oracle.kernel(oracle.jacobian(model64, x1), oracle.jacobian(model64, x2))


def test_float64_with_nested_models_plain_ops_and_float64_params():
    keras.utils.set_random_seed(1)
    model = _nested_with_ops("float32")
    model64 = _nested_with_ops("float64")
    rng = np.random.default_rng(0)
    theta = [v.numpy().astype(np.float64) + rng.normal(0, 0.1, v.shape) for v in model.trainable_variables]
    for v, t in zip(model64.trainable_variables, theta):
        v.assign(t)
    x1, x2 = rng.uniform(size=(4, 4)), rng.uniform(size=(3, 4))
    want = _own_gradients_kernel(model64, x1, x2)
    for implementation in IMPLEMENTATIONS:
        got = tf_ntk.empirical_ntk(model, x1, x2, params=theta, kind="full", dtype="float64",
                                   implementation=implementation)
        assert helpers.relative_error(got.numpy(), want) < 1e-12, implementation
    in_graph = tf.function(lambda a, b: tf_ntk.empirical_ntk(model, a, b, params=theta, kind="full",
                                                             dtype="float64"))
    assert helpers.relative_error(in_graph(x1, x2).numpy(), want) < 1e-12


def test_planned_blocks_never_exceed_the_budget():
    inputs = keras.Input((5, 5, 3))
    x = keras.layers.Flatten()(keras.layers.Conv2D(16, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    stats = cost.model_stats(model)
    for n in range(2, 40, 3):
        for b in (2, 5, 8, 13):
            budget = int(cost.block_cost(stats, "structured", b, b, 10, "diagonal", True, 4).bytes)
            plan = tf_ntk.ntk.plan(model, n, implementation="structured", memory_budget_bytes=budget)
            assert plan.peak_bytes <= budget, (n, b, plan)


def test_auto_takes_the_cheapest_estimate_and_ties_go_to_structured(monkeypatch):
    model = models.get("mlp", 3, (2, 2, 1), width=4)
    costs = {}

    def fake_plan(stats, implementation, *args, **kwargs):
        return cost.Plan(implementation, 4, 1, costs[implementation], 0.0, 1.0)

    monkeypatch.setattr(cost, "plan", fake_plan)
    costs.update(jacobian=100.0, ntvp=300.0, structured=104.0)  # within 5%: a tie
    assert tf_ntk.ntk.plan(model, 4).implementation == "structured"
    costs.update(structured=110.0)
    assert tf_ntk.ntk.plan(model, 4).implementation == "jacobian"
    costs.update(ntvp=50.0)
    assert tf_ntk.ntk.plan(model, 4).implementation == "ntvp"


@pytest.mark.parametrize("kind", ["full", "trace"])
def test_blocks_spread_over_mirrored_replicas(kind):
    """MirroredStrategy over the two logical CPUs (tests/conftest.py): the same kernel as one device
    and as the float64 oracle, symmetric (diagonal and mirrored blocks) and not; rounds with fewer
    blocks than replicas included (5 examples in blocks of 2: 3 diagonal, 3 off-diagonal blocks)."""
    model, x1, x2, k11, k12 = ntk_cases.case("cnn")
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    assert strategy.num_replicas_in_sync == 2
    done = []
    for xb, oracle_kernel in ((None, k11), (x2, k12)):
        kw = dict(kind=kind, dtype="float64", block_size=2, implementation="structured")
        spread = tf_ntk.empirical_ntk(model, x1, xb, strategy=strategy,
                                      progress=lambda d, t: done.append((d, t)), **kw).numpy()
        alone = tf_ntk.empirical_ntk(model, x1, xb, **kw).numpy()
        np.testing.assert_array_equal(spread, alone)  # the same block functions, the same numbers
        want = oracle_kernel if kind == "full" else np.trace(oracle_kernel, axis1=2, axis2=3) / 3
        assert helpers.relative_error(spread, want) < 1e-10
    assert done[:6] == [(d, 6) for d in range(1, 7)] and done[6:] == [(d, 6) for d in range(1, 7)]
    with pytest.raises(ValueError, match="eager calls only"):
        tf.function(lambda x: tf_ntk.empirical_ntk(model, x, strategy=strategy))(x1)
