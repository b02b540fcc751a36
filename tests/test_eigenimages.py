"""Eigen-images: the tangent direction and the cosine objective against per-example gradient loops,
its input gradient against finite differences, and the image search raising the cosine."""

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tf_ntk import models
from tf_ntk.ntk import eigenimages


def _model():
    return models.get("mlp", 3, (3, 3, 1), width=5)


def _grad(model, x, logit):
    with tf.GradientTape() as tape:
        out = model(x[None], training=False)[0, logit]
    return np.concatenate([g.numpy().ravel() for g in tape.gradient(out, model.trainable_variables)])


def test_tangent_direction_is_the_weighted_sum_of_gradients():
    model = _model()
    x = np.random.default_rng(0).uniform(size=(4, 3, 3, 1)).astype(np.float32)
    u = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    got = np.concatenate([g.numpy().ravel() for g in eigenimages.tangent_direction(model, x, u, 2)])
    want = sum(w * _grad(model, xi, 2) for w, xi in zip(u, x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cosine_and_its_input_gradient():
    model = _model()
    rng = np.random.default_rng(1)
    probe = rng.uniform(size=(3, 3, 3, 1)).astype(np.float32)
    direction = eigenimages.tangent_direction(model, probe, np.array([1.0, -0.5, 0.3], np.float32), 1)
    v = np.concatenate([d.numpy().ravel() for d in direction])
    fn = eigenimages.cosine_fn(model, direction, 1)
    x = rng.uniform(0.2, 0.8, size=(1, 3, 3, 1)).astype(np.float32)
    cos, grad = fn(tf.constant(x))

    def oracle(xv):
        g = _grad(model, xv[0].astype(np.float32), 1).astype(np.float64)
        return float(g @ v / (np.linalg.norm(g) * np.linalg.norm(v)))

    assert abs(float(cos) - oracle(x)) < 1e-5
    h = 1e-3
    fd = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        up, down = x.astype(np.float64).copy(), x.astype(np.float64).copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (oracle(up) - oracle(down)) / (2 * h)
    assert np.abs(fd).max() > 1e-3
    assert helpers.relative_error(grad.numpy(), fd) < 2e-2


def test_eigen_images_raise_and_lower_the_cosine():
    model = _model()
    probe = np.random.default_rng(2).uniform(size=(6, 3, 3, 1)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    feats = np.stack([_grad(model, p, 0) for p in probe]).astype(np.float64)
    kernel = feats @ feats.T
    images = eigenimages.eigen_images(model, probe, kernel, 0, labels=labels, num_eigen=1, steps=50,
                                      step_size=0.01)
    assert [i["name"] for i in images] == ["eig0+", "eig0-", "w"]
    np.testing.assert_allclose(images[0]["eigenvalue"], np.linalg.eigvalsh(kernel).max(), rtol=1e-6)
    grey = np.full((1, 3, 3, 1), 0.5, np.float32)
    direction = eigenimages.tangent_direction(
        model, probe, np.linalg.eigh(kernel)[1][:, -1].astype(np.float32), 0)
    start = float(eigenimages.cosine_fn(model, direction, 0)(tf.constant(grey))[0])
    assert images[0]["cosine"] > start and images[1]["cosine"] < start
    for item in images:
        assert item["image"].shape == (3, 3, 1)
        assert item["image"].min() >= 0 and item["image"].max() <= 1


def test_the_search_keeps_the_better_start_and_says_whether_the_sign_was_reached():
    model = _model()
    probe = np.random.default_rng(3).uniform(size=(5, 3, 3, 1)).astype(np.float32)
    u = np.abs(np.random.default_rng(4).normal(size=5)).astype(np.float32)  # one sign: Perron-like
    direction = eigenimages.tangent_direction(model, probe, u, 1)
    fn = eigenimages.cosine_fn(model, direction, 1)
    for sign in (1.0, -1.0):
        found = eigenimages.search(model, direction, 1, probe, sign=sign, steps=20, step_size=0.01)
        start_cos = [float(fn(tf.constant(p[None]))[0]) for p in probe]
        j = int(np.argmax(sign * np.asarray(start_cos)))
        ends = {name: eigenimages.optimise_image(model, direction, 1, input_shape=(3, 3, 1), sign=sign,
                                                 steps=20, step_size=0.01, start=start)[1]
                for name, start in (("grey", 0.5), (f"probe {j}", probe[j]))}
        assert found["start"] == max(ends, key=lambda k: sign * ends[k])
        assert found["cosine"] == ends[found["start"]]
        assert found["reached"] == (sign * found["cosine"] > 0)


def test_cosine_parts_split_the_cosine_by_layer_and_a_one_signed_vector_keeps_its_readout_sign():
    """readout + other = the cosine (checked against flattened per-example gradients); for a ReLU
    MLP the output layer reads features h ≥ 0, so with u ≥ 0 the readout share,
    (⟨h(x), Σ u_j h(x_j)⟩ + Σ u_j) / norms, is ≥ 0 for every image: the reason a negative search
    can fail, which the diagnosis names."""
    model = _model()
    rng = np.random.default_rng(5)
    probe = rng.uniform(size=(4, 3, 3, 1)).astype(np.float32)
    u = np.abs(rng.normal(size=4)).astype(np.float32)
    direction = eigenimages.tangent_direction(model, probe, u, 2)
    v = np.concatenate([d.numpy().ravel() for d in direction]).astype(np.float64)
    last = sum(int(np.prod(w.shape)) for w in model.layers[-1].trainable_variables)
    for x in rng.uniform(size=(6, 3, 3, 1)).astype(np.float32):
        g = _grad(model, x, 2).astype(np.float64)
        scale = np.linalg.norm(g) * np.linalg.norm(v)
        readout, other = eigenimages.cosine_parts(model, direction, 2, x)
        assert readout == pytest.approx(g[-last:] @ v[-last:] / scale, abs=1e-5)
        assert other == pytest.approx(g[:-last] @ v[:-last] / scale, abs=1e-5)
        assert readout >= 0
    found = {"reached": False, "readout": 0.4, "other": -0.1}
    assert "one-signed" in eigenimages.diagnosis(found, one_signed=True)
    assert "+0.400" in eigenimages.diagnosis(found, one_signed=False)
    assert eigenimages.diagnosis({**found, "reached": True}, one_signed=True) == ""
