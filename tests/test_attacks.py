"""PGD: feasibility, the closed-form optimum on a linear model, restarts and the loss functions."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ntk import attacks


def _linear_model(weights):
    """logits = x.flatten() @ weights, no bias: a model whose PGD optimum is known in closed form."""
    d, o = weights.shape
    model = keras.Sequential([keras.Input((d, 1, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(o, use_bias=False)])
    model.layers[-1].kernel.assign(weights)
    return model


def test_linf_pgd_reaches_the_closed_form_optimum_of_a_linear_model():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 2)).astype(np.float32)
    model = _linear_model(w)
    x = rng.uniform(0.3, 0.7, size=(8, 16, 1, 1)).astype(np.float32)
    y = rng.integers(0, 2, size=8).astype(np.int32)
    eps = 0.1
    adv = attacks.pgd(lambda t: model(t, training=False), x, y, eps=eps, steps=10)
    # The cross-entropy of the true class grows with the margin (w_other − w_y)·x, so the L∞
    # maximiser is x + eps·sign(w_other − w_y), which stays inside [0, 1] here.
    direction = np.sign(w[:, 1 - y] - w[:, y]).T.reshape(8, 16, 1, 1)
    np.testing.assert_allclose(adv.numpy(), x + eps * direction, atol=1e-6)


@pytest.mark.parametrize("norm,loss,restarts", [("linf", "ce", 1), ("linf", "margin", 3), ("l2", "ce", 2)])
def test_adversarial_inputs_stay_in_the_ball_and_the_box(norm, loss, restarts):
    rng = np.random.default_rng(1)
    model = _linear_model(rng.normal(size=(16, 3)).astype(np.float32))
    x = rng.uniform(0.0, 1.0, size=(32, 16, 1, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=32).astype(np.int32)
    eps = 0.05 if norm == "linf" else 0.5
    fn = lambda t: model(t, training=False)  # noqa: E731
    adv = attacks.pgd(fn, x, y, eps=eps, steps=5, norm=norm, loss=loss, restarts=restarts).numpy()
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    delta = (adv - x).reshape(32, -1)
    if norm == "linf":
        assert np.abs(delta).max() <= eps + 1e-6
    else:
        assert np.linalg.norm(delta, axis=1).max() <= eps + 1e-5
    loss_fn = attacks.cross_entropy_loss if loss == "ce" else attacks.margin_loss
    assert np.all(loss_fn(y, fn(adv)).numpy() >= loss_fn(y, fn(x)).numpy() - 1e-5)


def test_eps_zero_returns_the_input_and_bad_configs_fail():
    x = np.full((2, 4, 1, 1), 0.5, np.float32)
    model = _linear_model(np.eye(4, 2, dtype=np.float32))
    out = attacks.pgd(lambda t: model(t), x, np.array([0, 1]), eps=0.0, steps=3)
    np.testing.assert_array_equal(out.numpy(), x)
    with pytest.raises(ValueError, match=r"eps must be in \[0, 1\]"):
        attacks.PGDConfig(eps=1.5)
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        attacks.PGDConfig(norm="l1")
    with pytest.raises(ValueError, match="unknown attack loss"):
        attacks.PGDConfig(loss="hinge")


def test_margin_loss_closed_form():
    logits = tf.constant([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0]])
    np.testing.assert_allclose(attacks.margin_loss(tf.constant([0, 0]), logits).numpy(), [2.0, -5.0])
    np.testing.assert_allclose(attacks.margin_loss(tf.constant([1, 2]), logits).numpy(), [-1.0, 6.0])


def test_protocol_step_size_default():
    assert attacks.check_config(eps=4 / 255, steps=20) == pytest.approx(2 * (4 / 255) / 20)
