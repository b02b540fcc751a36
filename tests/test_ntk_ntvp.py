"""ntvp's building blocks against independent oracles: the batched forward-mode pass against central
finite differences in float64, per-example gradients against the tape.gradient loop of
`tf_ntk.ntk.oracle`, and the chunked, grouped kernel columns against the float64 per-example oracle
of tests/ntk_cases.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tests import ntk_cases
from tf_ntk import functional
from tf_ntk.ntk import keras_graph
from tf_ntk.ntk import ntvp
from tf_ntk.ntk import oracle
from tf_ntk.ntk import structured

NUM_CLASSES = ntk_cases.NUM_CLASSES


def _every_path():
    """Ops the walker treats differently, in one model.

    A conv with bias whose output feeds BN (no scale) and an Add (so it is not folded); a folded
    conv -> BN (no center); LeakyReLU, GELU and softmax activations (element-wise and generic); max
    pooling and Concatenate (tiled); a layer with weights and no rule (LayerNormalization).
    """
    inputs = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(3, 3, padding="same", name="conv_shared")(inputs)
    b = keras.layers.BatchNormalization(scale=False, name="bn_no_scale")(a)
    x = keras.layers.Add()([a, b])
    x = keras.layers.LeakyReLU(negative_slope=0.2)(x)
    y = keras.layers.Conv2D(3, 3, strides=2, padding="valid", use_bias=False, name="conv_folded")(x)
    y = keras.layers.BatchNormalization(center=False, name="bn_no_center")(y)
    y = keras.layers.Activation("gelu")(y)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(3, 2, padding="valid", activation="relu")(x)
    x = keras.layers.Concatenate()([x, y])
    x = keras.layers.LayerNormalization()(keras.layers.Flatten()(x))
    x = keras.layers.Dense(5, activation="softmax")(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x), name="every_path")


def _frozen():
    """Frozen layers: a BN folded into a trainable conv, and a frozen conv before a trainable BN."""
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(3, 3, use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(trainable=False)(x))
    x = keras.layers.Conv2D(4, 3, trainable=False)(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x), name="frozen")


def _builder(name):
    return {"every_path": _every_path, "frozen": _frozen}.get(name) or ntk_cases.MODELS[name]


def _model(name):
    keras.utils.set_random_seed(11)
    model = _builder(name)()
    helpers.randomize_bn_statistics(model, seed=4)
    rng = np.random.default_rng(2)
    frozen = [v for v in model.non_trainable_variables if v.path.endswith(("gamma", "beta", "kernel"))]
    for v in model.trainable_variables + frozen:
        v.assign(v.numpy() + rng.normal(0, 0.1, v.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("name", ["cnn", "resnet18", "unknown_layer", "every_path", "frozen"])
def test_batched_jvp_matches_central_differences(name):
    model = _model(name)
    f = functional.FunctionalModel(model, dtype="float64")
    rng = np.random.default_rng(0)
    theta = [tf.constant(p.numpy().astype(np.float64)) for p in f.params]
    x = tf.constant(rng.uniform(size=(3, *model.input_shape[1:])))
    tangents = [tf.constant(rng.normal(size=(4, *t.shape))) for t in theta]
    got = ntvp.batched_jvp(f, theta, x, tangents).numpy()  # (T, B, O)
    assert got.shape == (4, 3, NUM_CLASSES)
    eps = 1e-6
    for t in range(4):
        plus = f([p + eps * v[t] for p, v in zip(theta, tangents)], x)
        minus = f([p - eps * v[t] for p, v in zip(theta, tangents)], x)
        want = ((plus - minus) / (2 * eps)).numpy()
        assert helpers.relative_error(got[t], want) < 1e-7, (name, t)


def test_conv_batchnorm_pairs_are_folded_only_when_bn_is_the_sole_consumer():
    cnn = _model("cnn")
    pairs = ntvp.conv_then_batchnorm(cnn)
    assert sorted(bn.name for bn in pairs.values()) == ["bn1", "bn2", "bn3"]
    every = _model("every_path")
    pairs = ntvp.conv_then_batchnorm(every)
    assert [bn.name for bn in pairs.values()] == ["bn_no_center"]


@pytest.mark.parametrize("name", ["cnn", "unknown_layer"])
def test_per_example_gradients_match_a_gradient_loop(name):
    model = _model(name)
    f = functional.FunctionalModel(model, dtype="float64")
    theta = [tf.cast(p, tf.float64) for p in f.params]
    x = np.random.default_rng(1).uniform(size=(3, *model.input_shape[1:]))
    logits = [2, 0]
    got = structured.per_example_gradients(f, theta, tf.constant(x), logits)  # (L, B, *shape)
    want = oracle.per_example_gradients(oracle.float64_twin(model, _builder(name)), x, logits)
    for i in range(3):
        for a in range(len(logits)):
            for g, w in zip(got, want):
                assert helpers.relative_error(g[a, i], w[i, a]) < 1e-12


@pytest.mark.parametrize("chunk", [1, 4, 7, None])
def test_chunked_and_grouped_columns_match_the_oracle(chunk):
    # With L = 3 logits: chunk 1 takes single columns, 4 one whole example, 7 two examples (the last
    # chunk of x2's three padded), None every column at once. x2 = None runs the symmetric groups.
    model, x1, x2, k11, k12 = ntk_cases.case("cnn")
    f = functional.FunctionalModel(model, dtype="float64")
    theta = [tf.cast(p, tf.float64) for p in f.params]
    a, b = tf.constant(x1, tf.float64), tf.constant(x2, tf.float64)
    # Single columns (chunk 1) are the slowest to run and share the kinds' code with chunk 4: "full"
    # only there.
    for kind in ("full",) if chunk == 1 else ("full", "diagonal", "trace"):
        for symmetric in (True, False):
            got = ntvp.ntvp_block(f, theta, a, None if symmetric else b, range(NUM_CLASSES),
                                  kind, chunk).numpy()
            full = k11 if symmetric else k12
            diag = np.einsum("ijaa->ija", full)
            want = {"full": full, "diagonal": diag, "trace": diag.sum(-1)}[kind]
            assert helpers.relative_error(got, want) < 1e-12, (kind, symmetric)


def test_models_the_walkers_cannot_enter_take_the_generic_paths(monkeypatch):
    # A model without a functional graph gets a ForwardAccumulator vectorized over the tangents and
    # per-column gradients for the tangents: forced here on the CNN, checked against the oracle.
    def cannot_walk(*args, **kwargs):
        raise keras_graph.UnsupportedModelError("no graph")

    monkeypatch.setattr(keras_graph, "is_walkable", lambda network: False)
    monkeypatch.setattr(structured, "per_example_gradients", cannot_walk)
    model, x1, x2, _, k12 = ntk_cases.case("cnn")
    f = functional.FunctionalModel(model, dtype="float64")
    theta = [tf.cast(p, tf.float64) for p in f.params]
    got = ntvp.ntvp_block(f, theta, tf.constant(x1, tf.float64), tf.constant(x2, tf.float64),
                          range(NUM_CLASSES), "full", 6)
    assert helpers.relative_error(got, k12) < 1e-12


def test_chunk_loop_and_symmetric_groups_under_xla():
    model, x1, x2, k11, k12 = ntk_cases.case("cnn")
    f = functional.FunctionalModel(model)
    # x2's three examples in three chunks (a map_fn loop); x1 with itself in five groups.
    block = tf.function(lambda a, b: ntvp.ntvp_block(f, f.params, a, b, range(NUM_CLASSES),
                                                     "full", 4), jit_compile=True)
    assert helpers.relative_error(block(tf.constant(x1), tf.constant(x2)), k12) < 1e-5
    assert helpers.relative_error(block(tf.constant(x1), None), k11) < 1e-5
