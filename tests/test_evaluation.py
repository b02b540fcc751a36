"""Evaluation: benign/robust accuracy, saved adversarial sets and transfer, linearized output terms."""

import keras
import numpy as np
import pytest

import tf_ntk
from tf_ntk import attacks
from tf_ntk import data
from tf_ntk import evaluation
from tf_ntk import models
from tf_ntk import training


@pytest.fixture(scope="module")
def trained():
    """A CNN trained 3 clean epochs on digits (benign ≈ 0.95) and the test set."""
    training.set_seed(0)
    model = models.get("cnn", 10, (8, 8, 1), width=8)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data.load_arrays("digits", "train")
    model.fit(x, y, batch_size=64, epochs=3, verbose=0, shuffle=False)
    return model, data.load("digits", "test", batch_size=128)


def test_accuracy_is_the_fraction_of_correct_argmax(trained):
    model, test = trained
    x, y = data.load_arrays("digits", "test")
    want = np.mean(np.argmax(model(x, training=False).numpy(), -1) == y)
    assert evaluation.accuracy(evaluation.inference_fn(model), test) == pytest.approx(want)
    assert want > 0.85


def test_robust_accuracy_is_seeded_and_saved_sets_replay_exactly(trained, tmp_path):
    model, test = trained
    fn = evaluation.inference_fn(model)
    config = attacks.PGDConfig(eps=0.1, steps=5)
    robust = evaluation.robust_accuracy(fn, test, config, seed=3)
    assert robust == evaluation.robust_accuracy(fn, test, config, seed=3)
    assert robust < evaluation.accuracy(fn, test)
    x, x_adv, y = evaluation.adversarial_examples(fn, test, config, seed=3)
    path = str(tmp_path / "adv.npz")
    evaluation.save_adversarial(path, x, x_adv, y, config, source="cnn")
    saved = evaluation.load_adversarial(path)
    np.testing.assert_array_equal(saved["x_adv"], x_adv)
    assert saved["meta"]["attack"]["eps"] == 0.1 and saved["meta"]["source"] == "cnn"
    # Replaying the set against the model that made it gives its robust accuracy…
    assert evaluation.transfer_accuracy(fn, path) == pytest.approx(robust)
    # …and against another model, that model's accuracy on those inputs (a transfer attack).
    other = models.get("mlp", 10, (8, 8, 1), width=8)
    want = np.mean(np.argmax(other(x_adv).numpy(), -1) == y)
    assert evaluation.transfer_accuracy(evaluation.inference_fn(other), path) == pytest.approx(want)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a tf_ntk adversarial set"):
        evaluation.load_adversarial(str(tmp_path / "bad.npz"))


def test_protocol_attacks():
    assert evaluation.PROTOCOL_LINF.eps == pytest.approx(4 / 255)
    assert evaluation.PROTOCOL_LINF.steps == 100 and evaluation.PROTOCOL_LINF.restarts == 1
    assert evaluation.PROTOCOL_LINF.resolved_step_size == pytest.approx(2 * (4 / 255) / 100)
    assert (evaluation.PROTOCOL_L2.norm, evaluation.PROTOCOL_L2.eps,
            evaluation.PROTOCOL_L2.resolved_step_size) == ("l2", 0.25, 0.01)


def test_output_terms_of_a_linearized_model_add_up(trained):
    model, test = trained
    lin = tf_ntk.linearize(model)
    rng = np.random.default_rng(0)
    for v in lin.theta:
        v.assign(v.numpy() + rng.normal(0, 0.02, v.shape).astype(np.float32))
    small = test.take(2)
    terms = evaluation.output_terms(lin, small, attacks.PGDConfig(eps=0.1, steps=3))
    x = np.concatenate([np.asarray(b[0]) for b in small])
    np.testing.assert_allclose(terms["spawn_clean"], model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(terms["spawn_clean"] + terms["kernel_clean"], lin(x).numpy(),
                               rtol=1e-5, atol=1e-5)
    assert np.abs(terms["kernel_clean"]).max() > 1e-3
    assert terms["spawn_adv"].shape == terms["kernel_adv"].shape == (256, 10)
    with pytest.raises(ValueError, match="only for tf_ntk.linearize models"):
        evaluation.output_terms(model, small)
