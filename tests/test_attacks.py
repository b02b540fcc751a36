"""PGD: feasibility, the closed-form optimum on a linear model, restarts and the loss functions."""

from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_ntk
from tf_ntk import models
from tf_ntk.robust import attacks


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


def _small_cnn():
    keras.utils.set_random_seed(0)
    return models.get("cnn", 3, (6, 6, 1), width=3, zero_head=False)


def test_without_random_start_equals_cleverhans_projected_gradient_descent():
    model = _small_cnn()
    fn = lambda t: model(t, training=False)  # noqa: E731
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(5, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=5).astype(np.int32)
    for norm, order, eps in (("linf", np.inf, 0.1), ("l2", 2, 0.5)):
        ours = attacks.pgd(fn, x, y, eps=eps, steps=7, step_size=eps / 4, norm=norm, random_start=False)
        ref = projected_gradient_descent(fn, x, eps, eps / 4, 7, order, clip_min=0.0, clip_max=1.0,
                                         y=y, rand_init=False)
        np.testing.assert_array_equal(ours.numpy(), ref.numpy())


def test_seed_fixes_the_random_start_and_restarts_keep_the_best_loss():
    model = _small_cnn()
    fn = lambda t: model(t, training=False)  # noqa: E731
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(16, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=16).astype(np.int32)
    kw = dict(eps=0.3, steps=2, step_size=0.02)
    a = attacks.pgd(fn, x, y, seed=[7, 1], **kw).numpy()
    np.testing.assert_array_equal(a, attacks.pgd(fn, x, y, seed=[7, 1], **kw).numpy())
    assert np.abs(a - attacks.pgd(fn, x, y, seed=[7, 2], **kw).numpy()).max() > 1e-3
    # restarts = 3 includes restart 0 (the seed's single-start attack): its per-example loss is
    # never below that one's, and equals the max over the three single restarts.
    single = [a] + [attacks.pgd(fn, x, y, seed=tf.random.experimental.stateless_fold_in(
        tf.constant([7, 1], tf.int64), r), **kw) for r in (1, 2)]
    best = attacks.pgd(fn, x, y, seed=[7, 1], restarts=3, **kw)
    loss = lambda t: attacks.cross_entropy_loss(y, fn(t)).numpy()  # noqa: E731
    assert np.all(loss(best) >= loss(a) - 1e-6)
    np.testing.assert_allclose(loss(best), np.max([loss(s) for s in single], axis=0), rtol=1e-6)


def test_l2_random_start_is_uniform_in_the_ball():
    x = np.full((2000, 4, 1, 1), 0.5, np.float32)
    start = attacks.sample_start(tf.constant(x), 0.2, "l2", tf.constant([1, 2], tf.int64)).numpy()
    radius = np.linalg.norm((start - x).reshape(2000, -1), axis=1)
    assert radius.max() <= 0.2 + 1e-6
    # Uniform in a 4-ball: P(r <= t·eps) = t^4.
    np.testing.assert_allclose(np.mean(radius <= 0.1), 0.5**4, atol=0.02)


@pytest.mark.parametrize("centered", [False, True])
def test_attack_on_linearized_models_under_xla_raises_the_loss(centered):
    model = _small_cnn()
    lin = tf_ntk.linearize(model, centered=centered)
    rng = np.random.default_rng(5)
    for v in lin.theta:
        v.assign(v.numpy() + rng.normal(0, 0.3, v.shape).astype(np.float32))
    fn = lambda t: lin(t, training=False)  # noqa: E731
    x = tf.constant(rng.uniform(size=(8, 6, 6, 1)).astype(np.float32))
    y = tf.constant(rng.integers(0, 3, size=8).astype(np.int32))
    config = attacks.PGDConfig(eps=0.1, steps=5)
    attack = tf.function(lambda a, b, s: config.attack(fn, a, b, seed=s), jit_compile=True)
    adv = attack(x, y, tf.constant([0, 1], tf.int64))
    adv2 = attack(x, y, tf.constant([0, 2], tf.int64))
    assert attack.experimental_get_tracing_count() == 1
    np.testing.assert_array_equal(adv.numpy(), attack(x, y, tf.constant([0, 1], tf.int64)).numpy())
    assert np.abs(adv.numpy() - adv2.numpy()).max() > 0
    assert np.abs(adv.numpy() - x.numpy()).max() <= 0.1 + 1e-6
    ce = lambda t: float(tf.reduce_mean(attacks.cross_entropy_loss(y, fn(t))))  # noqa: E731
    assert ce(adv) > ce(x) + 1e-3  # the kernel term's input gradient reaches the attack


def test_restarts_keep_the_input_shape_for_any_rank():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(16, 3)).astype(np.float32)
    fn = lambda t: tf.matmul(t, w)  # noqa: E731  inputs (N, 16)
    x = rng.uniform(size=(5, 16)).astype(np.float32)
    y = rng.integers(0, 3, size=5).astype(np.int32)
    adv = attacks.pgd(fn, x, y, eps=0.1, steps=2, restarts=2, seed=0)
    assert adv.shape == (5, 16)
    assert np.abs(adv.numpy() - x).max() <= 0.1 + 1e-6


def test_a_sharded_random_start_is_the_global_start_at_its_rows():
    x = tf.constant(np.random.default_rng(7).uniform(size=(10, 3, 3, 1)).astype(np.float32))
    key = tf.constant([3, 4], tf.int64)
    for norm in ("linf", "l2"):
        whole = attacks.sample_start(x, 0.1, norm, key).numpy()
        part = attacks.sample_start(x[4:7], 0.1, norm, key, batch_slice=(4, 10)).numpy()
        np.testing.assert_allclose(part, whole[4:7], rtol=1e-6, atol=1e-7)


def test_dlr_and_targeted_margin_match_their_formulas():
    logits = tf.constant([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 4.0, 1.0]])
    y = tf.constant([0, 1])
    # DLR: (max_{j≠y} z_j − z_y) / (z_π1 − z_π3).
    np.testing.assert_allclose(attacks.dlr_loss(y, logits).numpy(),
                               [(1.0 - 3.0) / (3.0 - 0.5), (4.0 - 2.0) / (4.0 - 1.0)], rtol=1e-6)
    # Invariant to shifting and scaling the logits.
    np.testing.assert_allclose(attacks.dlr_loss(y, 7.0 * logits + 3.0).numpy(),
                               attacks.dlr_loss(y, logits).numpy(), rtol=1e-5)
    np.testing.assert_array_equal(attacks.ranked_targets(y, logits, 1).numpy(), [1, 2])
    np.testing.assert_array_equal(attacks.ranked_targets(y, logits, 2).numpy(), [2, 3])
    np.testing.assert_allclose(attacks.targeted_margin_loss(y, tf.constant([3, 0]), logits).numpy(),
                               [-4.0, -2.0])


def test_best_iterate_never_loses_a_misclassification_the_last_iterate_would_keep():
    rng = np.random.default_rng(4)
    model = _linear_model(rng.normal(size=(16, 3)).astype(np.float32))
    fn = lambda t: model(t, training=False)  # noqa: E731
    x = rng.uniform(0.2, 0.8, size=(64, 16, 1, 1)).astype(np.float32)
    y = np.argmax(fn(x).numpy(), -1).astype(np.int32)  # all clean-correct
    for loss in ("ce", "margin", "dlr"):
        common = dict(eps=0.08, steps=10, loss=loss, seed=3)
        last = np.argmax(fn(attacks.pgd(fn, x, y, **common)).numpy(), -1) != y
        best = attacks.pgd(fn, x, y, keep="best", **common)
        best_wrong = np.argmax(fn(best).numpy(), -1) != y
        assert np.all(best_wrong >= last) and last.any(), loss
        assert np.abs(best.numpy() - x).max() <= 0.08 + 1e-6


def test_cosine_schedule_decays_to_zero_and_targeted_attacks_need_the_margin_loss():
    x = np.full((1, 4, 1, 1), 0.5, np.float32)
    model = _linear_model(np.eye(4, 2, dtype=np.float32))
    fn = lambda t: model(t)  # noqa: E731
    # One step of a cosine schedule is the full first step; with steps=2 the second is step·(1+cos(π/2))/2.
    one = attacks.pgd(fn, x, np.array([0]), eps=0.3, steps=1, step_size=0.1, schedule="cosine",
                      random_start=False).numpy()
    np.testing.assert_allclose(np.abs(one - x).max(), 0.1, rtol=1e-6)
    two = attacks.pgd(fn, x, np.array([0]), eps=0.3, steps=2, step_size=0.1, schedule="cosine",
                      random_start=False).numpy()
    np.testing.assert_allclose(np.abs(two - x).max(), 0.15, rtol=1e-6)
    with pytest.raises(ValueError, match="targeted attacks .* use the margin loss"):
        attacks.PGDConfig(eps=0.1, loss="ce", target_rank=1)
    with pytest.raises(ValueError, match="step_size must be finite"):
        attacks.PGDConfig(eps=0.1, step_size=float("inf"))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_example_rows_give_each_example_its_own_start_in_any_subset(norm):
    rng = np.random.default_rng(5)
    x = rng.uniform(0.0, 1.0, size=(10, 4, 4, 1)).astype(np.float32)
    key = tf.constant([3, 7], tf.int64)
    everyone = attacks.sample_start(tf.constant(x), 0.1, norm, key,
                                    example_rows=(np.arange(10), 10)).numpy()
    rows = np.array([7, 2, 5])
    subset = attacks.sample_start(tf.constant(x[rows]), 0.1, norm, key, example_rows=(rows, 10)).numpy()
    np.testing.assert_array_equal(subset, everyone[rows])
    assert not np.allclose(everyone[0] - x[0], everyone[1] - x[1])
