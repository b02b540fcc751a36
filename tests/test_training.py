"""Training: the loss falls on digits; the same seed gives the same weights."""

import numpy as np

from tf_ntk import data
from tf_ntk import models
from tf_ntk import training


def _train(seed, epochs=3):
    training.set_seed(seed)
    model = models.get("cnn", 10, (8, 8, 1), width=8)
    step = training.make_train_step(model, training.sgd(0.1))
    losses = []
    for epoch in range(epochs):
        ds = data.load("digits", "train", batch_size=128, shuffle=True, seed=seed, epoch=epoch)
        losses.append(training.train_epoch(step, ds)[0])
    return model, losses


def test_loss_falls_and_seed_determines_the_weights():
    model_a, losses = _train(seed=1)
    assert losses[0] > losses[1] > losses[2] and losses[-1] < 0.5 * losses[0]
    assert losses[0] < np.log(10) + 0.1  # starts near chance, not diverging
    model_b, _ = _train(seed=1)
    for a, b in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_piecewise_constant_schedule_matches_the_protocol():
    schedule = training.piecewise_constant_lr(0.1, steps_per_epoch=10)
    got = [float(schedule(s)) for s in (0, 999, 1000, 1001, 1499, 1500, 1501, 5000)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
