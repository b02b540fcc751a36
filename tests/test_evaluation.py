"""Evaluation: benign/robust accuracy, saved adversarial sets and transfer, linearized output terms."""

import keras
import numpy as np
import pytest

import tf_ntk
from tf_ntk import data
from tf_ntk import models
from tf_ntk import rundir
from tf_ntk import training
from tf_ntk.robust import attacks
from tf_ntk.robust import evaluation


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
    hits = np.argmax(model(x, training=False).numpy(), -1) == y
    want = np.mean(hits)
    fn = evaluation.inference_fn(model)
    assert evaluation.accuracy(fn, test) == pytest.approx(want)
    assert want > 0.85
    # Per example, in data order: the vector whose mean is the accuracy.
    correct = evaluation.correct_per_example(fn, test)
    assert correct.dtype == bool
    np.testing.assert_array_equal(correct, hits)
    assert np.mean(correct) == evaluation.accuracy(fn, test)


def test_bits_round_trip_through_strings_of_0s_and_1s():
    assert evaluation.encode_bits(np.array([True, False, True, True])) == "1011"
    assert evaluation.encode_bits(np.array([0, 1, 1])) == "011"
    assert evaluation.encode_bits(np.zeros(0, bool)) == ""
    np.testing.assert_array_equal(evaluation.decode_bits("0110"), [False, True, True, False])
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 1000):
        bits = rng.random(n) < 0.3
        text = evaluation.encode_bits(bits)
        assert len(text) == n and set(text) <= {"0", "1"} and text.count("1") == bits.sum()
        decoded = evaluation.decode_bits(text)
        assert decoded.dtype == bool
        np.testing.assert_array_equal(decoded, bits)
        assert n == 0 or np.mean(decoded) == np.mean(bits)
    for bad in (np.ones((2, 2), bool), np.array([0, 2]), np.array([0.0, 1.0])):
        with pytest.raises(ValueError, match="encode_bits takes"):
            evaluation.encode_bits(bad)
    for bad in ("0120", "01 ", "1é", b"01"):
        with pytest.raises(ValueError, match="decode_bits takes a string of 0s and 1s"):
            evaluation.decode_bits(bad)


def test_robust_accuracy_is_seeded_and_saved_sets_replay_exactly(trained, tmp_path):
    model, test = trained
    fn = evaluation.inference_fn(model)
    config = attacks.PGDConfig(eps=0.1, steps=5)
    robust = evaluation.robust_accuracy(fn, test, config, seed=3)
    assert robust == evaluation.robust_accuracy(fn, test, config, seed=3)
    assert robust < evaluation.accuracy(fn, test)
    x, x_adv, y = evaluation.adversarial_examples(fn, test, config, seed=3)
    path = str(tmp_path / "adv.npz")
    evaluation.save_adversarial(path, x, x_adv, y, config, num_classes=10, indices=np.arange(len(y)),
                                data={"dataset": "digits", "split": "test"}, source="cnn")
    split = data.load_arrays("digits", "test")
    saved = evaluation.load_adversarial(path, num_classes=10, image_shape=(8, 8, 1), split=split)
    np.testing.assert_array_equal(saved["x_adv"], x_adv)
    assert saved["meta"]["attack"]["eps"] == 0.1 and saved["meta"]["source"] == "cnn"
    assert (saved["meta"]["norm"], saved["meta"]["eps"], saved["meta"]["num_classes"]) == ("linf", 0.1, 10)
    # Replaying the set against the model that made it gives its robust accuracy…
    assert evaluation.transfer_accuracy(fn, path) == pytest.approx(robust)
    # …and against another model, that model's accuracy on those inputs (a transfer attack).
    other = models.get("mlp", 10, (8, 8, 1), width=8)
    hits = np.argmax(other(x_adv).numpy(), -1) == y
    assert evaluation.transfer_accuracy(evaluation.inference_fn(other), path) == pytest.approx(np.mean(hits))
    np.testing.assert_array_equal(evaluation.transfer_correct(evaluation.inference_fn(other), path), hits)
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


def test_output_term_accuracies_of_hand_made_terms():
    """Five examples of three classes; each term's argmax is chosen: spawn [0, 0, 2, 2, 0] (3 of 5
    right), kernel [1, 1, 1, 1, 2] (2 of 5), sum [0, 1, 2, 1, 2] (4 of 5)."""
    y = np.array([0, 1, 2, 1, 0])
    spawn = np.array([[4, 0, 0], [4, 0, 0], [0, 0, 4], [0, 0, 4], [4, 0, 0]], np.float32)
    kernel = np.array([[0, 1, 0], [0, 5, 0], [0, 1, 0], [0, 5, 0], [0, 0, 5]], np.float32)
    np.testing.assert_array_equal(np.argmax(spawn + kernel, -1), [0, 1, 2, 1, 2])
    clean = {"spawn_term": 0.6, "kernel_term": 0.4, "sum": 0.8}
    got = evaluation.output_term_accuracies({"spawn_clean": spawn, "kernel_clean": kernel, "y": y})
    assert got == {"clean": clean}
    # The adversarial inputs' terms, here the clean ones swapped.
    got = evaluation.output_term_accuracies({"spawn_clean": spawn, "kernel_clean": kernel, "y": y,
                                             "spawn_adv": kernel, "kernel_adv": spawn})
    assert got == {"clean": clean, "adversarial": {"spawn_term": 0.4, "kernel_term": 0.6, "sum": 0.8}}
    with pytest.raises(ValueError, match="inconsistent shapes"):
        evaluation.output_term_accuracies({"spawn_clean": spawn, "kernel_clean": kernel, "y": y[:4]})
    with pytest.raises(ValueError, match="on an empty dataset"):
        evaluation.output_term_accuracies({"spawn_clean": spawn[:0], "kernel_clean": kernel[:0],
                                           "y": y[:0]})


def test_output_term_accuracies_of_real_models_are_their_own_accuracies(trained):
    """A linearized model's output is the sum of the terms, a centered model's the kernel term, and
    the spawn term is the network they were linearized around: each accuracy is the model's own, on
    the clean images and on the PGD images `output_terms` crafts (those of `robust_accuracy`)."""
    model, test = trained
    small = test.take(2)
    config = attacks.PGDConfig(eps=0.1, steps=3)
    spawn_fn = evaluation.inference_fn(model)
    for centered in (False, True):
        lin = tf_ntk.linearize(model, centered=centered)
        rng = np.random.default_rng(0)
        for v in lin.theta:
            v.assign(v.numpy() + rng.normal(0, 0.02, v.shape).astype(np.float32))
        fn = evaluation.inference_fn(lin)
        got = evaluation.output_term_accuracies(evaluation.output_terms(lin, small, config, seed=4))
        own = "kernel_term" if centered else "sum"
        assert got["clean"][own] == evaluation.accuracy(fn, small)
        assert got["clean"]["spawn_term"] == evaluation.accuracy(spawn_fn, small)
        assert got["adversarial"][own] == evaluation.robust_accuracy(fn, small, config, seed=4)
        # The terms disagree somewhere: the accuracies are of different classifiers.
        assert got["clean"]["kernel_term"] != got["clean"]["spawn_term"]
        assert got["adversarial"][own] < got["clean"][own]


def _sound_set(n=6):
    """A sound L∞ ε = 0.1 set of ``n`` 4×4 images of 3 classes, perturbing images 2..n+1 of a split
    of n + 4 images, and that split."""
    rng = np.random.default_rng(0)
    x_split = rng.uniform(0.2, 0.8, (n + 4, 4, 4, 1)).astype(np.float32)
    y_split = (np.arange(n + 4) % 3).astype(np.int32)
    x = x_split[2:n + 2]
    x_adv = (x + np.float32(0.1) * rng.choice([-1, 1], x.shape)).astype(np.float32)
    meta = {"format": 2, "attack": {"eps": 0.1, "norm": "linf"}, "norm": "linf", "eps": 0.1,
            "num_classes": 3}
    adv = {"x": x, "x_adv": x_adv, "y": y_split[2:n + 2].copy(), "indices": np.arange(2, n + 2),
           "meta": meta}
    return adv, (x_split, y_split)


def _set(adv, **arrays):
    return dict(adv, **arrays)


def _no_ball(adv):
    meta = {k: v for k, v in adv["meta"].items() if k not in ("eps", "norm")}
    return dict(adv, meta=dict(meta, attack={}))


def _legacy(adv):
    """The previous format: no indices, data, classes or ε-ball of its own (its attack's)."""
    out = {k: v for k, v in adv.items() if k != "indices"}
    return dict(out, meta={"attack": adv["meta"]["attack"]})


def _with(array, index, value):
    array = array.copy()
    array[index] = value
    return array


VALIDATOR_CASES = [
    ("nan", lambda a: _set(a, x_adv=_with(a["x_adv"], (3, 0, 0, 0), np.nan)), {},
     "set: 1 adversarial image is not finite (first: image 3)"),
    ("clean-inf", lambda a: _set(a, x=_with(a["x"], 1, np.inf)), {},
     "set: 1 clean image is not finite (first: image 1)"),
    ("range", lambda a: _set(a, x_adv=a["x_adv"] * np.float32(1e6)), {},
     "set: 6 adversarial images lie outside [0, 1] (first: image 0, values in ["),
    ("labels", lambda a: _set(a, y=_with(a["y"], 1, 99)), {"num_classes": 3},
     "set: labels 99 outside the model's 3 classes"),
    ("labels-recorded", lambda a: _set(a, y=_with(a["y"], 1, 3)), {},
     "set: labels 3 outside its recorded 3 classes"),
    ("negative-labels", lambda a: _set(a, y=_with(a["y"], 0, -1)), {"num_classes": 3},
     "set: labels -1 outside the model's 3 classes"),
    ("float-labels", lambda a: _set(a, y=a["y"].astype(np.float32)), {}, "its labels are float32"),
    ("other-classes", lambda a: a, {"num_classes": 5}, "set was crafted for 3 classes, the model has 5"),
    ("ball", lambda a: _set(a, x_adv=_with(a["x_adv"], 4, 1 - a["x"][4])), {},
     "set: image 4 lies 0."),
    ("l2-ball", lambda a: dict(a, meta=dict(a["meta"], norm="l2")), {},
     "set: image 0 lies 0.4 from its clean image in L2, outside its ε-ball of 0.1 (tolerance 2e-06); "
     "6 images lie outside it"),
    ("empty", lambda a: _set(a, x=a["x"][:0], x_adv=a["x_adv"][:0], y=a["y"][:0], indices=a["indices"][:0]),
     {}, "set holds 0 examples"),
    ("shape", lambda a: a, {"image_shape": (8, 8, 1)},
     "set holds images of shape (4, 4, 1), the model takes (8, 8, 1)"),
    ("inconsistent", lambda a: _set(a, y=a["y"][:-1]), {}, "set: inconsistent shapes"),
    ("no-ball", _no_ball, {}, "set records no ε-ball (norm and eps)"),
    ("not-a-dict", lambda a: dict(a, meta=[1]), {}, "set: its record is not a JSON object"),
    ("foreign", lambda a: _set(a, indices=a["indices"] + 1), {"split": True},
     "set: its clean image 0 is not image 3 of digits/test"),
    ("foreign-labels", lambda a: _set(a, y=(a["y"] + 1) % 3), {"split": True, "num_classes": 3},
     "set: its label 0 (0) is not the label of image 2 of digits/test (2)"),
    ("count", lambda a: _set(a, indices=a["indices"][:-1]), {"split": True},
     "set records (5,) int64 indices for 6 examples"),
    ("indices-range", lambda a: _set(a, indices=a["indices"] + 100), {"split": True},
     "set records indices outside the 10 images of digits/test"),
    ("legacy-not-first", _legacy, {"split": True},
     "set: its 6 clean images and labels are not the first 6 of digits/test (and it records no indices)"),
]


@pytest.mark.parametrize("case", VALIDATOR_CASES, ids=[c[0] for c in VALIDATOR_CASES])
def test_check_adversarial_set_names_the_first_problem_in_one_line(case):
    _, change, expected, message = case
    adv, split = _sound_set()
    evaluation.check_adversarial_set(adv, name="set", num_classes=3, image_shape=(4, 4, 1), split=split)
    if expected.pop("split", False):
        expected.update(split=split, split_name="digits/test")
    with pytest.raises(ValueError) as error:
        evaluation.check_adversarial_set(change(adv), name="set", **expected)
    assert message in str(error.value) and len(str(error.value).splitlines()) == 1, str(error.value)


def test_a_previous_format_set_of_the_first_examples_passes_and_unsound_sets_are_not_saved(tmp_path):
    adv, (x_split, y_split) = _sound_set()
    legacy = _legacy(adv)
    evaluation.check_adversarial_set(legacy, name="set", num_classes=3,
                                     split=(x_split[2:], y_split[2:]), split_name="digits/test")
    path = tmp_path / "adv.npz"
    config = attacks.PGDConfig(eps=0.1, steps=1)
    bad = _with(adv["x_adv"], 0, np.nan)
    with pytest.raises(ValueError, match=f"adversarial set {path}: 1 adversarial image is not finite"):
        evaluation.save_adversarial(path, adv["x"], bad, adv["y"], config, num_classes=3)
    with pytest.raises(ValueError, match="outside its ε-ball of 0.05"):
        evaluation.save_adversarial(path, adv["x"], adv["x_adv"], adv["y"], config, num_classes=3, eps=0.05)
    assert not path.exists()
    evaluation.save_adversarial(path, adv["x"], adv["x_adv"], adv["y"], config, num_classes=3)
    assert evaluation.load_adversarial(path)["meta"]["eps"] == 0.1


def test_an_evaluation_record_is_read_back_checked(tmp_path):
    record = evaluation.evaluation_record("/ckpt", 2.0, "centered", 3, {"eps": 0.2})
    record.update(benign_accuracy=1.0, robust_accuracy=2 / 3)
    rundir.write_json(str(tmp_path / "evaluation.json"), record)
    assert evaluation.read_evaluation(str(tmp_path / "evaluation.json")) == record
    del record["robust_accuracy"]
    rundir.write_json(str(tmp_path / "old.json"), record)
    with pytest.raises(rundir.RecordError, match=r"corrupt evaluation file .*old.json: no robust_accuracy$"):
        evaluation.read_evaluation(str(tmp_path / "old.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(rundir.RecordError, match="corrupt evaluation file"):
        evaluation.read_evaluation(str(tmp_path / "bad.json"))
