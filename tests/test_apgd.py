"""The TensorFlow APGD (tf_ntk.robust.apgd) against closed forms and against ART's APGD."""

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tf_ntk import data
from tf_ntk.robust import apgd
from tf_ntk.robust import autoattack
from tf_ntk.robust import ensembles
from tf_ntk.robust import evaluation


def test_the_checkpoint_schedule_is_croce_and_hein_s():
    assert apgd.checkpoint_schedule(100) == (22, 3, 6)
    assert apgd.checkpoint_schedule(10) == (2, 1, 1)


@pytest.fixture(scope="module")
def trained_mlp():
    return helpers.trained_digits_mlp(160)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_iterates_stay_in_the_ball_and_the_same_key_gives_the_same_images(trained_mlp, norm, eps):
    model, x, y = trained_mlp
    fn = evaluation.inference_fn(model)
    a = apgd.apgd(fn, x, y, eps=eps, norm=norm, steps=15, restarts=2, seed=3).numpy()
    b = apgd.apgd(fn, x, y, eps=eps, norm=norm, steps=15, restarts=2, seed=3).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    size = ensembles.perturbation_size(a, x, norm)
    assert np.all(size <= ensembles.ball_limit(eps)) and size.max() > 0.5 * eps
    wrong = np.argmax(fn(a).numpy(), -1) != y
    assert 0.1 < wrong.mean() < 1.0


def test_it_never_beats_the_closed_form_optimum_of_a_linear_model():
    model, w, b = helpers.linear_digits_model()
    x, _ = data.load_arrays("digits", "test")
    x = x[:120]
    fn = evaluation.inference_fn(model)
    y = np.argmax(fn(x).numpy(), -1).astype(np.int32)
    eps = 0.05
    want = helpers.closed_form_linf_robust(w, b, x, y, eps)
    broken = np.zeros(len(y), bool)
    for loss in apgd.LOSSES:
        adv = apgd.apgd(fn, x, y, eps=eps, loss=loss, steps=30, restarts=2, seed=0).numpy()
        broken |= np.argmax(fn(adv).numpy(), -1) != y
    assert not np.any(broken & want), "broke an example the closed form proves robust"
    assert broken.sum() >= 0.9 * (~want).sum()  # and it finds nearly all that can be broken


def test_it_breaks_at_least_what_art_s_apgd_breaks_on_the_same_model(trained_mlp):
    """Per example, over APGD-CE and APGD-DLR (20 steps, 2 starts, ε = 0.1): the TensorFlow
    implementation breaks every example ART's breaks, but at most one."""
    model, x, y = trained_mlp
    fn = evaluation.inference_fn(model)
    art, ours = [], []
    for loss in ("ce", "dlr"):
        for implementation, out in (("art", art), ("tf", ours)):
            member = autoattack.APGDConfig(eps=0.1, loss=loss, steps=20, restarts=2,
                                           implementation=implementation)
            out.append(ensembles.evaluate(fn, x, y, ensembles.Ensemble((member,)), seed=0).correct)
    art, ours = np.logical_and(*art), np.logical_and(*ours)
    assert 0.05 < ours.mean() < 0.9
    assert np.sum(~art & ours) <= 1, f"ART broke {np.sum(~art & ours)} examples ours did not"


def test_it_compiles_with_xla_and_keys_starts_per_example(trained_mlp):
    model, x, y = trained_mlp
    fn = evaluation.inference_fn(model)
    rows = np.arange(len(y))
    compiled = tf.function(lambda x, y, rows: apgd.apgd(fn, x, y, eps=0.1, steps=10, restarts=2,
                                                        seed=[1, 2], example_rows=(rows, 160)),
                           jit_compile=True)
    whole = compiled(x, y, rows).numpy()
    assert np.all(ensembles.perturbation_size(whole, x, "linf") <= ensembles.ball_limit(0.1))
    part = compiled(x[40:80], y[40:80], rows[40:80]).numpy()
    np.testing.assert_allclose(part, whole[40:80], atol=1e-5)
    eager = apgd.apgd(fn, x, y, eps=0.1, steps=10, restarts=2, seed=[1, 2],
                      example_rows=(rows, 160)).numpy()
    # Sign steps amplify float rounding, so XLA's trajectories are not eager's bit for bit; what
    # they break is the same up to a few examples.
    broken = [(np.argmax(fn(a).numpy(), -1) != y).sum() for a in (eager, whole)]
    assert broken[0] > 10 and abs(broken[0] - broken[1]) <= 3, broken


def test_bad_configurations_are_one_line_errors():
    x, y = np.zeros((1, 8, 8, 1), np.float32), np.zeros(1, np.int32)
    for kwargs, message in (({"norm": "l1"}, "unknown norm"), ({"loss": "margin"}, "unknown APGD loss"),
                            ({"steps": 0}, "steps and restarts >= 1")):
        with pytest.raises(ValueError, match=message):
            apgd.apgd(lambda t: t, x, y, eps=0.1, **kwargs)
    with pytest.raises(ValueError, match="unknown APGD implementation"):
        autoattack.APGDConfig(eps=0.1, implementation="torch")


def test_the_strong_ensemble_runs_it_compiled_in_place_of_art_s(trained_mlp):
    model, x, y = trained_mlp
    fn = evaluation.inference_fn(model)
    ensemble = ensembles.strong(0.1, steps=10, restarts=1, targets=1, square_queries=0,
                                 implementation="tf")
    assert [m.short() for m in ensemble.members[-2:]] == ["APGD-CE (TF) x1", "APGD-DLR (TF) x1"]
    result = ensembles.evaluate(fn, x, y, ensemble, seed=0, jit_compile=True, batch_size=64)
    assert result.rejected == 0 and 0.0 < result.accuracy < 0.9
    pgd_only = ensembles.evaluate(fn, x, y, ensembles.Ensemble(ensemble.members[:-2]), seed=0,
                                   jit_compile=True, batch_size=64)
    assert np.all(result.correct <= pgd_only.correct)
