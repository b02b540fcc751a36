"""Named attacks and the worst case per example: the strong ensemble reaches the closed-form optimum
of a linear model, is never weaker per example than any of its members, and AutoAttack (ART) runs on
standard and centered models."""

import numpy as np
import pytest

from tests import helpers
import tf_ntk
from tf_ntk import data
from tf_ntk.robust import autoattack
from tf_ntk.robust import ensembles
from tf_ntk.robust import evaluation


def test_strong_attack_reaches_the_closed_form_optimum_of_a_linear_model():
    model, w, b = helpers.linear_digits_model()
    x, _ = data.load_arrays("digits", "test")
    x = x[:120]
    fn = evaluation.inference_fn(model)
    y = np.argmax(fn(x).numpy(), -1).astype(np.int32)  # clean accuracy 1 by construction
    for eps in (0.02, 0.05):
        want = helpers.closed_form_linf_robust(w, b, x, y, eps)
        assert 0.05 < want.mean() < 0.95  # the test must be able to fail either way
        got = ensembles.evaluate(fn, x, y, ensembles.strong(eps, steps=20, restarts=1, square_queries=100),
                                 seed=0)
        np.testing.assert_array_equal(got.correct, want)
        # The protocol's single CE attack is weaker (it cannot beat the optimum either).
        protocol = ensembles.evaluate(fn, x, y, ensembles.protocol(eps, steps=20), seed=0)
        assert np.all(protocol.correct >= want)


@pytest.fixture(scope="module")
def trained_mlp():
    """An MLP trained 4 clean epochs on digits, and 160 test images."""
    return helpers.trained_digits_mlp(160)


def test_ensemble_worst_case_is_never_above_any_member(trained_mlp):
    model, x, y = trained_mlp
    fn = evaluation.inference_fn(model)
    # PGD members only: their random starts are seeded per example, so membership cannot change them.
    ensemble = ensembles.strong(0.1, steps=10, restarts=2, targets=2, apgd=False, square_queries=0)
    together = ensembles.evaluate(fn, x, y, ensemble, seed=1, batch_size=64)
    assert 0.0 < together.accuracy < 0.9
    for member in ensemble.members:
        alone = ensembles.evaluate(fn, x, y, ensembles.Ensemble((member,)), seed=1, batch_size=64)
        assert np.all(together.correct <= alone.correct), member.describe()
    # Every example the ensemble calls broken has an adversarial image that the model misclassifies,
    # inside the ball.
    broken = ~together.correct
    assert np.all(np.argmax(fn(together.x_adv).numpy(), -1)[broken] != y[broken])
    assert np.abs(together.x_adv - x).max() <= 0.1 + 1e-6
    assert sum(together.breaks().values()) + np.sum(together.broken_by == ensembles.CLEAN_WRONG) \
        == np.sum(broken)
    # Continuing from a result gives the worst case of both attacks.
    protocol = ensembles.evaluate(fn, x, y, ensembles.protocol(0.1, steps=10), seed=1)
    both = ensembles.evaluate(fn, x, y, ensemble, seed=1, start=protocol)
    assert np.all(both.correct <= protocol.correct)
    assert ensembles.evaluate(fn, x, y, ensemble, seed=1).accuracy == together.accuracy  # seeded


def test_robust_accuracy_takes_attack_names(trained_mlp):
    model, x, y = trained_mlp
    fn = evaluation.inference_fn(model)
    dataset = evaluation.as_dataset(x[:64], y[:64], 32)
    strong = evaluation.robust_accuracy(fn, dataset, "strong", eps=0.1, steps=20, restarts=1,
                                        square_queries=50)
    protocol = evaluation.robust_accuracy(fn, dataset, "protocol", eps=0.1)
    assert strong <= protocol
    with pytest.raises(ValueError, match="unknown attack 'weak'"):
        ensembles.named("weak", 0.1)
    with pytest.raises(ValueError, match="needs eps"):
        evaluation.robust_accuracy(fn, dataset, "strong")


@pytest.mark.parametrize("dynamics", ["standard", "centered"])
def test_autoattack_runs_on_standard_and_centered_models(trained_mlp, dynamics):
    model, x, y = trained_mlp
    if dynamics == "centered":
        model = tf_ntk.linearize(model, centered=True)
        rng = np.random.default_rng(0)
        for v in model.theta:  # move θ off θ_s so that the centered model predicts something
            v.assign(v.numpy() + rng.normal(0, 0.05, v.shape).astype(np.float32))
    fn = evaluation.inference_fn(model)
    x, y = x[:24], y[:24]
    tiny = autoattack.AutoAttackConfig(eps=0.1, apgd_steps=5, apgd_restarts=1, square_queries=20,
                                       square_restarts=1, batch_size=24)
    result = ensembles.evaluate(fn, x, y, tiny, seed=0)
    clean = np.argmax(fn(x).numpy(), -1) == y
    assert np.all(result.correct <= clean) and result.accuracy < clean.mean()
    assert result.rejected == 0
    broken = ~result.correct & clean
    assert np.all(np.argmax(fn(result.x_adv).numpy(), -1)[broken] != y[broken])
    assert np.abs(result.x_adv - x).max() <= 0.1 * (1 + 1e-4)
    assert "AutoAttack" in tiny.describe() and tiny.to_dict()["name"] == "autoattack"


def test_the_pgd_members_run_under_xla_with_static_shapes(trained_mlp):
    model, x, y = trained_mlp
    fn = evaluation.inference_fn(model)
    ensemble = ensembles.strong(0.1, steps=5, restarts=1, targets=1, apgd=False, square_queries=0)
    eager = ensembles.evaluate(fn, x[:100], y[:100], ensemble, seed=2, batch_size=32)
    xla = ensembles.evaluate(fn, x[:100], y[:100], ensemble, seed=2, batch_size=32, jit_compile=True)
    # Same starts, same steps; XLA may round differently, so allow a few examples to differ.
    assert abs(xla.accuracy - eager.accuracy) <= 0.03
    assert np.abs(xla.x_adv - x[:100]).max() <= 0.1 + 1e-6


def test_worst_case_takes_the_first_breaking_attacks_image():
    x = np.zeros((4, 1, 1, 1), np.float32)

    def result(correct, value):
        correct = np.array(correct)
        return ensembles.AttackResult(x_adv=x + value, correct=correct,
                                      broken_by=np.where(correct, ensembles.ROBUST, 0), members=["a"])

    a, b, c = (result(np.array(v, bool), k) for v, k in (([1, 0, 1, 1], 1.0), ([0, 0, 1, 1], 2.0),
                                                          ([1, 1, 1, 0], 3.0)))
    correct, x_adv = ensembles.worst_case([a, b, c])
    np.testing.assert_array_equal(correct, [False, False, True, False])
    np.testing.assert_array_equal(x_adv.ravel(), [2.0, 1.0, 3.0, 3.0])  # first breaker; else the last
    with pytest.raises(ValueError, match="at least one"):
        ensembles.worst_case([])


def test_an_interrupted_ensemble_resumes_after_its_last_saved_member_with_the_same_result(trained_mlp, tmp_path,
                                                                                       monkeypatch):
    model, x, y = trained_mlp
    fn = evaluation.inference_fn(model)
    ensemble = ensembles.strong(0.1, steps=5, restarts=2, targets=1, apgd=False, square_queries=0)
    protocol = ensembles.evaluate(fn, x, y, ensembles.protocol(0.1, steps=5), seed=2)
    whole = ensembles.evaluate(fn, x, y, ensemble, seed=2, batch_size=64, start=protocol)
    helpers.record_crafts(monkeypatch, stop_after=3)  # killed as the fourth member starts
    resume = {"resume_dir": str(tmp_path / "partial"), "resume_tag": "model-a"}
    with pytest.raises(KeyboardInterrupt):
        ensembles.evaluate(fn, x, y, ensemble, seed=2, batch_size=64, start=protocol, **resume)
    assert len(list((tmp_path / "partial").iterdir())) == 1
    monkeypatch.undo()
    counted = helpers.record_crafts(monkeypatch)
    resumed = ensembles.evaluate(fn, x, y, ensemble, seed=2, batch_size=64, start=protocol, **resume)
    # Only the members after the third ran again, and the result is the uninterrupted one.
    assert [a.describe() for a in counted] == [m.describe() for m in ensemble.members[3:]]
    assert np.array_equal(resumed.broken_by, whole.broken_by) and np.array_equal(resumed.x_adv, whole.x_adv)
    assert resumed.members == whole.members and resumed.rejected == whole.rejected
    # A finished call returns at once; another tag (another model) or seed starts afresh.
    counted.clear()
    again = ensembles.evaluate(fn, x, y, ensemble, seed=2, batch_size=64, start=protocol, **resume)
    assert counted == [] and np.array_equal(again.broken_by, whole.broken_by)
    ensembles.evaluate(fn, x, y, ensemble, seed=2, batch_size=64, start=protocol,
                       resume_dir=resume["resume_dir"], resume_tag="model-b")
    assert len(counted) == len(ensemble.members)
    # Without a start, and where every example falls to the first member (the others are skipped):
    # the saved progress after that member gives the same result again, crafting nothing.
    counted.clear()
    large = ensembles.strong(0.6, steps=5, restarts=1, targets=1, apgd=False, square_queries=0)
    first = ensembles.evaluate(fn, x, y, large, seed=2, **resume)
    assert first.accuracy == 0.0 and len(counted) == 1 and first.members == [m.describe() for m in large.members]
    assert np.array_equal(ensembles.evaluate(fn, x, y, large, seed=2, **resume).broken_by, first.broken_by)
    assert len(counted) == 1
