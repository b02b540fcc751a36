"""Benign and robust accuracy, saved adversarial sets, transfer attacks, linearized output terms.

All functions take ``model_fn``: one stable callable images (N, H, W, C) in [0, 1] -> logits (N, O)
(`inference_fn(model)`: BN in inference mode; a linearized model is attacked under its own
dynamics), and ``dataset``: batches of (images, int labels). ε is in [0, 1] pixel units (L∞).
PGD random starts are keyed by (seed, batch index), so the same seed gives the same numbers.
The named attacks (protocol, strong, AutoAttack) are in `tf_ntk.robustness`; the checks against weak
attacks and gradient masking in `tf_ntk.sanity`.
"""

import json
import os
import zipfile

import numpy as np
import tensorflow as tf

from tf_ntk import attacks
from tf_ntk import robustness
from tf_ntk import rundir

# The protocol's evaluation attacks.
PROTOCOL_LINF = attacks.PGDConfig(eps=4 / 255, steps=100)  # step 2ε/100, one random start
"""The protocol's L∞ evaluation attack: PGD-100, eps = 4/255 pixel units, step 2·eps/100, one start."""
PROTOCOL_L2 = attacks.PGDConfig(eps=0.25, steps=100, step_size=0.01, norm="l2")
"""The protocol's L2 evaluation attack: PGD-100, eps = 0.25, step 0.01 (pixel units, image norm)."""


def inference_fn(model):
    """A stable callable images (B, H, W, C) float32 in [0, 1] -> logits (B, O), BN in inference mode,
    for attacks and evaluation."""
    return lambda x: model(x, training=False)


def _correct(model_fn, x, y):
    return tf.equal(tf.argmax(model_fn(x), axis=-1, output_type=tf.int32), tf.cast(y, tf.int32))


def _check_nonempty(total, what):
    if total == 0:
        raise ValueError(f"cannot compute {what} on an empty dataset")


def accuracy(model_fn, dataset):
    """Fraction in [0, 1] of the examples of ``dataset`` that ``model_fn`` classifies right.

    Args:
      model_fn: images (B, H, W, C) -> logits (B, O), e.g. `inference_fn`; the argmax is the class.
      dataset: batches of (images (B, H, W, C), int labels (B,)), e.g. `tf_ntk.data.load`.

    Raises:
      ValueError: the dataset is empty.
    """
    step = tf.function(lambda x, y: tf.reduce_sum(tf.cast(_correct(model_fn, x, y), tf.int64)),
                       reduce_retracing=True)
    correct = total = 0
    for x, y in dataset:
        correct += int(step(x, y))
        total += int(tf.shape(y)[0])
    _check_nonempty(total, "accuracy")
    return correct / total


def _attack_fn(model_fn, config, jit_compile=False):
    return tf.function(lambda x, y, seed: config.attack(model_fn, x, y, seed=seed),
                       jit_compile=jit_compile, reduce_retracing=True)


def adversarial_examples(model_fn, dataset, config=PROTOCOL_LINF, *, seed=0, jit_compile=False,
                         progress=None):
    """PGD examples for a whole dataset; ``progress(batches_done)`` after each batch.

    Returns:
      (x (N, H, W, C), x_adv (N, H, W, C), y (N,)) NumPy arrays; x_adv is crafted with the true
      labels against ``model_fn``, batch b with seed (seed, b).
    """
    attack = _attack_fn(model_fn, config, jit_compile)
    xs, advs, ys = [], [], []
    for b, (x, y) in enumerate(dataset):
        advs.append(attack(x, y, tf.constant([seed, b], tf.int64)).numpy())
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
        if progress is not None:
            progress(b + 1)
    _check_nonempty(len(ys), "adversarial examples")
    return np.concatenate(xs), np.concatenate(advs), np.concatenate(ys)


def robust_accuracy(model_fn, dataset, attack=PROTOCOL_LINF, *, seed=0, jit_compile=False,
                    eps=None, norm="linf", **options):
    """Accuracy under an attack crafted against ``model_fn`` (default: the protocol's L∞ 4/255 PGD-100).

    ``attack``: a `tf_ntk.attacks.PGDConfig` (the adversarial images' accuracy, batch b attacked with
    seed (seed, b)); a `tf_ntk.robustness.Ensemble` or ART attack, or one of the names
    `tf_ntk.robustness.NAMES` with ``eps``, ``norm`` and the builder's ``options`` (RobustBench's
    count: clean and every adversarial image right, the worst case per example over the members).

    Args:
      model_fn: images (B, H, W, C) float32 in [0, 1] -> logits (B, O), e.g. `inference_fn`.
      dataset: batches of (images (B, H, W, C) in [0, 1], int labels (B,)).
      eps: the attack's radius in [0, 1] pixel units (e.g. 4/255 = 0.0157 for L∞), with a name.
      norm: ``"linf"`` or ``"l2"``, with a name.
      seed: the random starts' seed; jit_compile: compile the attack with XLA.

    Returns:
      The robust accuracy, a fraction in [0, 1] of the examples.
    """
    if isinstance(attack, str):
        if eps is None:
            raise ValueError(f"the {attack!r} attack needs eps")
        attack = robustness.named(attack, eps, norm, **options)
    if not isinstance(attack, attacks.PGDConfig):
        x, y = robustness.arrays(dataset)
        return robustness.evaluate(model_fn, x, y, attack, seed=seed, jit_compile=jit_compile).accuracy
    config = attack
    attack = _attack_fn(model_fn, config, jit_compile)
    count = tf.function(lambda x, y: tf.reduce_sum(tf.cast(_correct(model_fn, x, y), tf.int64)),
                        reduce_retracing=True)
    correct = total = 0
    for b, (x, y) in enumerate(dataset):
        correct += int(count(attack(x, y, tf.constant([seed, b], tf.int64)), y))
        total += int(tf.shape(y)[0])
    _check_nonempty(total, "robust accuracy")
    return correct / total


def as_dataset(x, y, batch_size):
    """Arrays x (N, ...), y (N,) as a tf.data.Dataset of (x (B, ...), y (B,)) batches, B = ``batch_size``
    (the last batch smaller), in order."""
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def save_adversarial(path, x, x_adv, y, config, **record):
    """Writes an adversarial set to ``path`` (.npz) atomically.

    Stores ``x``, ``x_adv`` (N, H, W, C) float32, ``y`` (N,) and a JSON record (the attack config and
    ``record``, e.g. the source checkpoint), so it can be replayed against other models.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"adversarial sets are .npz files, got {path!r}")
    meta = json.dumps({"attack": config.to_dict(), **record}, sort_keys=True)
    rundir.write_npz(path, compressed=True, x=np.asarray(x, np.float32),
                          x_adv=np.asarray(x_adv, np.float32), y=np.asarray(y, np.int32),
                          meta=np.array(meta))


def load_adversarial(path):
    """{"x", "x_adv", "y", "meta"} of a set written by `save_adversarial`; ValueError if unreadable."""
    try:
        arrays = rundir.read_npz(path)
        out = {k: arrays[k] for k in ("x", "x_adv", "y")}
        out["meta"] = json.loads(str(arrays["meta"]))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, tf.errors.OpError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "empty or truncated file"
        raise ValueError(f"{path} is not a tf_ntk adversarial set: {reason}") from e
    if out["x"].shape != out["x_adv"].shape or out["x"].shape[0] != out["y"].shape[0]:
        raise ValueError(f"{path}: inconsistent shapes {out['x'].shape}, {out['x_adv'].shape}, "
                         f"{out['y'].shape}")
    return out


def transfer_accuracy(model_fn, adversarial_set, batch_size=256):
    """Accuracy of ``model_fn`` on a saved adversarial set (a path or `load_adversarial`'s dict):
    a transfer attack when the set was crafted against another model. Returns a fraction in [0, 1] of
    its x_adv images classified as their label y, evaluated ``batch_size`` at a time."""
    if isinstance(adversarial_set, (str, os.PathLike)):
        adversarial_set = load_adversarial(adversarial_set)
    return accuracy(model_fn, as_dataset(adversarial_set["x_adv"], adversarial_set["y"], batch_size))


def output_terms(model, dataset, config=None, *, seed=0):
    """The two output terms of a linearized or centered model, per example, on clean inputs and
    (when ``config`` is given) on PGD inputs crafted against the model under its own dynamics.

    Returns:
      {"spawn_clean", "kernel_clean"[, "spawn_adv", "kernel_adv"]}: (N, O) arrays of f_{θ_s}(x) and
      J_{θ_s}(x)(θ − θ_s), and "y" (N,).
    """
    if not hasattr(model, "kernel_term"):
        raise ValueError("output terms exist only for tf_ntk.linearize models")
    terms = tf.function(lambda x: (model.spawn_output(x), model.kernel_term(x)),
                        reduce_retracing=True)
    attack = _attack_fn(inference_fn(model), config) if config is not None else None
    out = {"spawn_clean": [], "kernel_clean": [], "y": []}
    if attack is not None:
        out.update(spawn_adv=[], kernel_adv=[])
    for b, (x, y) in enumerate(dataset):
        s, k = terms(x)
        out["spawn_clean"].append(s.numpy())
        out["kernel_clean"].append(k.numpy())
        out["y"].append(np.asarray(y))
        if attack is not None:
            s, k = terms(attack(x, y, tf.constant([seed, b], tf.int64)))
            out["spawn_adv"].append(s.numpy())
            out["kernel_adv"].append(k.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}
