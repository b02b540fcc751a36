"""The sanity report passes on an honest model under a converged attack, and fails, naming the check
and by how much, on a model that masks its gradients and on attacks that have not converged."""

import pytest
import tensorflow as tf

from tests import helpers
from tf_ntk.robust import attacks
from tf_ntk.robust import ensembles
from tf_ntk.robust import evaluation
from tf_ntk.robust import sanity

EPS = 0.1


@pytest.fixture(scope="module")
def trained():
    """An MLP trained 4 clean epochs on digits, and 200 test images."""
    return helpers.trained_digits_mlp(200)


def _failed(report):
    return {c.name: c for c in report.failures}


def test_sanity_report_passes_on_an_honest_model_under_the_strong_attack(trained):
    model, x, y = trained
    fn = evaluation.inference_fn(model)
    attack = ensembles.strong(EPS, steps=20, restarts=2, square_queries=200)
    report = sanity.sanity_checks(fn, x, y, attack, blackbox_queries=200)
    assert report.passed, str(report)
    assert report.eps_curve[0] == (0.0, report.benign)
    eps = [e for e, _ in report.eps_curve]
    assert eps == sorted(eps) and len(eps) == 5
    assert report.to_dict()["passed"] is True and 0 < report.robust < report.benign
    assert all(c.shortfall == 0.0 for c in report.checks)


def test_sanity_report_fails_on_masked_gradients_and_the_black_box_check_catches_it(trained):
    model, x, y = trained
    # A stop-gradient input layer: zero input gradients, so PGD cannot move beyond its random start.
    masked = lambda t: model(tf.stop_gradient(t) + 0.0 * t, training=False)  # noqa: E731
    attack = ensembles.strong(EPS, steps=10, restarts=1, square_queries=200)
    report = sanity.sanity_checks(masked, x, y, attack, blackbox_queries=200)
    failed = _failed(report)
    blackbox = "black-box Square attack not stronger than the white-box attack"
    assert blackbox in failed, str(report)
    assert failed[blackbox].shortfall > 0.1
    # The strong ensemble's own Square search is not fooled either: its number is far below the
    # white-box one.
    assert report.robust < 0.7
    assert "near 0 at a large eps" in failed  # the gradient-based members cannot get there
    assert "FAIL  black-box" in str(report) and "(by " in str(report)


def test_an_attack_that_has_not_converged_fails_the_steps_and_loss_checks(trained):
    model, x, y = trained
    fn = evaluation.inference_fn(model)
    # Two tiny steps from a random start: far from converged.
    weak = attacks.PGDConfig(eps=EPS, steps=2, step_size=EPS / 50, keep="best")
    report = sanity.sanity_checks(fn, x, y, weak, blackbox_queries=0)
    failed = _failed(report)
    assert "other losses break no more examples" in failed, str(report)
    assert failed["other losses break no more examples"].shortfall > 0.05
    assert len(report.checks) == 7  # no black-box check with 0 queries
    # One sign step (FGSM from a random start): two steps of half the size break more examples.
    one_step = attacks.PGDConfig(eps=EPS, steps=1, keep="best")
    report = sanity.sanity_checks(fn, x, y, one_step, blackbox_queries=0)
    failed = _failed(report)
    assert "2x steps break no more examples" in failed
    assert failed["2x steps break no more examples"].shortfall > 0
    # What the stronger attacks broke is counted: the report's worst case per example is at most the
    # attack's own outcome and at most the 2x-steps attack's, rerun here with the report's seeds.
    base = ensembles.evaluate(fn, x, y, one_step, seed=0)
    more = ensembles.evaluate(fn, x, y, one_step.replace(steps=2), seed=1, start=base)
    assert not (report.correct & ~base.correct).any() and not (report.correct & ~more.correct).any()
    assert report.worst_case <= more.accuracy < base.accuracy == report.robust


def test_random_noise_fails_the_restarts_check(trained):
    model, x, y = trained
    fn = evaluation.inference_fn(model)
    # No step at all: the "attack" is its uniform random start, so more restarts break more examples.
    noise = attacks.PGDConfig(eps=0.3, steps=1, step_size=0.0, keep="best")
    report = sanity.sanity_checks(fn, x, y, noise, blackbox_queries=0, tolerance=0.005)
    failed = _failed(report)
    assert "3x restarts break no more examples" in failed, str(report)
    assert failed["3x restarts break no more examples"].shortfall > 0
    assert "breaks" in failed["3x restarts break no more examples"].detail


def test_a_base_result_from_the_caller_gives_the_same_report_without_rerunning_the_attack(trained, monkeypatch):
    model, x, y = trained
    x, y = x[:60], y[:60]
    fn = evaluation.inference_fn(model)
    attack = ensembles.strong(EPS, steps=5, restarts=2, square_queries=0, apgd=False, targets=0)
    fresh = sanity.sanity_checks(fn, x, y, attack, seed=3, batch_size=32, blackbox_queries=0)
    base = ensembles.evaluate(fn, x, y, attack, seed=3, batch_size=32)
    ran = []
    real = ensembles.evaluate

    def counting(model_fn, images, labels, a, **kw):
        ran.append(a)
        return real(model_fn, images, labels, a, **kw)

    monkeypatch.setattr(ensembles, "evaluate", counting)
    reused = sanity.sanity_checks(fn, x, y, attack, seed=3, batch_size=32, blackbox_queries=0, base=base)
    assert attack not in ran  # the attack itself ran once, by the caller
    assert reused.to_dict() == fresh.to_dict()
    assert (reused.correct == fresh.correct).all() and reused.robust == base.accuracy
    # The ε = 0 check runs one start per member: every image runs every start to its last step there.
    at_zero = [a for a in ran if a.eps == 0.0]
    assert len(at_zero) == 1 and all(m.restarts == 1 for m in ensembles.members(at_zero[0]))
    with pytest.raises(ValueError, match="base holds 60 examples"):
        sanity.sanity_checks(fn, x[:50], y[:50], attack, blackbox_queries=0, base=base)
