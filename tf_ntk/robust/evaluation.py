"""Benign and robust accuracy, saved adversarial sets, transfer attacks, linearized output terms.

Per-example outcomes (`correct_per_example`, `transfer_correct`) travel in JSON as strings of '0'/'1'
characters, one per example in data order (`encode_bits`, `decode_bits`).

All functions take ``model_fn``: one stable callable images (N, H, W, C) in [0, 1] -> logits (N, O)
(`inference_fn(model)`: BN in inference mode; a linearized model is attacked under its own
dynamics), and ``dataset``: batches of (images, int labels). ε is in [0, 1] pixel units (L∞).
PGD random starts are keyed by (seed, batch index), so the same seed gives the same numbers.
The named attacks (protocol, strong, AutoAttack) are in `tf_ntk.robust.ensembles`; the checks against weak
attacks and gradient masking in `tf_ntk.robust.sanity`.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
import json
import os
from typing import Any
import zipfile

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from tf_ntk import rundir
from tf_ntk.robust import attacks
from tf_ntk.robust import ensembles

# The protocol's evaluation attacks.
PROTOCOL_LINF = attacks.PGDConfig(eps=4 / 255, steps=100)  # step 2ε/100, one random start
"""The protocol's L∞ evaluation attack: PGD-100, eps = 4/255 pixel units, step 2·eps/100, one start."""
PROTOCOL_L2 = attacks.PGDConfig(eps=0.25, steps=100, step_size=0.01, norm="l2")
"""The protocol's L2 evaluation attack: PGD-100, eps = 0.25, step 0.01 (pixel units, image norm)."""


def inference_fn(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """A stable callable images (B, H, W, C) float32 in [0, 1] -> logits (B, O), BN in inference mode,
    for attacks and evaluation: the same callable for the same model, so that the attack functions
    traced on it (`tf_ntk.robust.ensembles`) serve every later evaluation of the model, whatever weights
    it then holds."""
    fn = vars(model).get(_INFERENCE)
    if fn is None:
        fn = lambda x: model(x, training=False)  # noqa: E731
        vars(model)[_INFERENCE] = fn  # (past Keras' attribute tracking: a plain cache)
    return fn


_INFERENCE = "_tf_ntk_inference_fn"

# The record tf-ntk-evaluate writes (`tf_ntk.rundir.EVALUATION`, evaluation.json) and the study, tf-ntk-results
# and the benchmarks read: `evaluation_record` starts it, `read_evaluation` reads it back, checked.
EVALUATION_FIELDS = ("checkpoint", "epoch", "dynamics", "examples", "flags", "robust", "benign_accuracy",
                     "robust_accuracy")


def evaluation_record(checkpoint: str, epoch: float | None, dynamics: str, examples: int,
                      flags: dict[str, Any]) -> dict[str, Any]:
    """The start of an evaluation.json record: the checkpoint (absolute path), its epoch, the dynamics it
    was evaluated under, the number of test examples and the command's flags; ``robust`` {attack name:
    {"accuracy", "attack", "description", "breaks", "rejected"}} to fill. tf-ntk-evaluate then adds
    ``benign_accuracy`` and ``robust_accuracy`` (the worst case per example over the attacks), ``per_example``
    (`encode_bits` strings: "benign", "robust", one per attack), ``attack`` ({name, eps, norm}) and, when
    asked, ``sanity_checks``, ``transfer``, ``saved_adversarial`` and ``output_terms``."""
    return {"checkpoint": checkpoint, "epoch": epoch, "dynamics": dynamics, "examples": examples,
            "flags": flags, "robust": {}}


def read_evaluation(path: str) -> dict[str, Any]:
    """An evaluation.json record (see `evaluation_record`); `tf_ntk.rundir.RecordError` naming the file when
    it is unreadable or lacks one of `EVALUATION_FIELDS`."""
    record = rundir.read_json(path, what="evaluation file")
    missing = [k for k in EVALUATION_FIELDS if k not in record]
    if missing:
        raise rundir.RecordError(f"corrupt evaluation file {path}: no {', '.join(missing)}")
    return record


def _correct(model_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.argmax(model_fn(x), axis=-1, output_type=tf.int32), tf.cast(y, tf.int32))


def _check_nonempty(total: int, what: str) -> None:
    if total == 0:
        raise ValueError(f"cannot compute {what} on an empty dataset")


def encode_bits(bits: npt.ArrayLike) -> str:
    """The string of '0'/'1' characters of a (N,) bool array (or of 0/1 integers), one per element
    in order, '1' for True: per-example outcomes in JSON. `decode_bits` inverts it.

    Raises:
      ValueError: not one-dimensional, or values other than 0/1.
    """
    bits = np.asarray(bits)
    if bits.ndim != 1:
        raise ValueError(f"encode_bits takes a (N,) array, got shape {bits.shape}")
    if bits.dtype != bool:
        if bits.size and (not np.issubdtype(bits.dtype, np.integer) or not np.isin(bits, (0, 1)).all()):
            raise ValueError(f"encode_bits takes bools or 0/1 integers, got {bits.dtype} values")
        bits = bits.astype(bool)
    return (bits.astype(np.uint8) + ord("0")).tobytes().decode("ascii")


def decode_bits(text: str) -> np.ndarray:
    """(N,) bool array of a string of N '0'/'1' characters (`encode_bits`).

    Raises:
      ValueError: not a string, or characters other than '0' and '1'.
    """
    if not isinstance(text, str):
        raise ValueError(f"decode_bits takes a string of 0s and 1s, got {type(text).__name__}")
    codes = np.frombuffer(text.encode("utf-8"), np.uint8)
    bad = (codes != ord("0")) & (codes != ord("1"))
    if bad.any():
        raise ValueError(f"decode_bits takes a string of 0s and 1s; byte {int(np.flatnonzero(bad)[0])} "
                         "is neither")
    return codes == ord("1")


def correct_per_example(model_fn: Callable[[tf.Tensor], tf.Tensor], dataset: Iterable[tuple[Any, Any]]) -> np.ndarray:
    """(N,) bool, in data order: each example of ``dataset`` classified right by ``model_fn``
    (argmax of the logits, ties to the lowest class).

    Args:
      model_fn: images (B, H, W, C) -> logits (B, O), e.g. `inference_fn`; the argmax is the class.
      dataset: batches of (images (B, H, W, C), int labels (B,)), e.g. `tf_ntk.data.load`.

    Raises:
      ValueError: the dataset is empty.
    """
    step = tf.function(lambda x, y: _correct(model_fn, x, y), reduce_retracing=True)
    out = [step(x, y).numpy() for x, y in dataset]
    _check_nonempty(sum(len(c) for c in out), "accuracy")
    return np.concatenate(out)


def accuracy(model_fn: Callable[[tf.Tensor], tf.Tensor], dataset: Iterable[tuple[Any, Any]]) -> float:
    """Fraction in [0, 1] of the examples of ``dataset`` that ``model_fn`` classifies right: the mean
    of `correct_per_example` (same arguments).

    Raises:
      ValueError: the dataset is empty.
    """
    correct = correct_per_example(model_fn, dataset)
    return int(np.sum(correct)) / len(correct)


def _attack_fn(model_fn: Callable[[tf.Tensor], tf.Tensor], config: attacks.PGDConfig,
               jit_compile: bool = False) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    return tf.function(lambda x, y, seed: config.attack(model_fn, x, y, seed=seed),
                       jit_compile=jit_compile, reduce_retracing=True)


def adversarial_examples(model_fn: Callable[[tf.Tensor], tf.Tensor], dataset: Iterable[tuple[Any, Any]],
                         config: attacks.PGDConfig = PROTOCOL_LINF, *, seed: int = 0, jit_compile: bool = False,
                         progress: Callable[[int], Any] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def robust_accuracy(model_fn: Callable[[tf.Tensor], tf.Tensor], dataset: Iterable[tuple[Any, Any]],
                    attack: Any = PROTOCOL_LINF, *, seed: int = 0, jit_compile: bool = False, eps: float | None = None,
                    norm: str = "linf", **options: Any) -> float:
    """Accuracy under an attack crafted against ``model_fn`` (default: the protocol's L∞ 4/255 PGD-100).

    Two engines, on purpose. A `PGDConfig` streams: each batch of the ``dataset`` pipeline is attacked
    as it comes (random starts keyed by (seed, batch index)), nothing is kept, no array of the whole
    set exists; that serves the training loop's quick estimate on any pipeline, inside a strategy.
    Every other attack goes through `tf_ntk.robust.ensembles.evaluate` on the whole set in memory
    (starts keyed by (seed, attack, example), per-example bookkeeping: which member broke which
    example, the adversarial images kept): the reported robust accuracies, and the worst case over
    attacks, come only from there.

    ``attack``: a `tf_ntk.robust.attacks.PGDConfig` (the adversarial images' accuracy, batch b attacked with
    seed (seed, b)); a `tf_ntk.robust.ensembles.Ensemble` or ART attack, or one of the names
    `tf_ntk.robust.ensembles.NAMES` with ``eps``, ``norm`` and the builder's ``options`` (RobustBench's
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
        attack = ensembles.named(attack, eps, norm, **options)
    if not isinstance(attack, attacks.PGDConfig):
        x, y = ensembles.arrays(dataset)
        return ensembles.evaluate(model_fn, x, y, attack, seed=seed, jit_compile=jit_compile).accuracy
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


def as_dataset(x: npt.ArrayLike, y: npt.ArrayLike, batch_size: int) -> tf.data.Dataset:
    """Arrays x (N, ...), y (N,) as a tf.data.Dataset of (x (B, ...), y (B,)) batches, B = ``batch_size``
    (the last batch smaller), in order."""
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


FORMAT = 2
"""The adversarial-set format `save_adversarial` writes (1: sets without the ε-ball, data and
indices records, written before; still loadable where they can be checked)."""


def recorded_ball(meta: Mapping[str, Any]) -> tuple[str, float] | None:
    """(norm, eps) of the ε-ball a set's record states: its own "norm" and "eps", or (sets of format
    1) its attack's. None where it records neither."""
    attack: Any = meta.get("attack") if isinstance(meta.get("attack"), dict) else {}
    norm, eps = meta.get("norm", attack.get("norm")), meta.get("eps", attack.get("eps"))
    if norm not in attacks.NORMS or isinstance(eps, bool) or not isinstance(eps, (int, float)):
        return None
    if not np.isfinite(eps) or eps < 0:
        return None
    return norm, float(eps)


def _count(mask: np.ndarray, what: tuple[str, str], detail: str) -> str:
    """"3 adversarial images are not finite (first: image 4)"-style text of a (N,) bool mask."""
    n = int(np.sum(mask))
    return f"{n} {what[0] if n == 1 else what[1]} (first: image {int(np.flatnonzero(mask)[0])}{detail})"


def _check_arrays(adv_set: Mapping[str, Any], image_shape: Sequence[int] | None) -> str | None:
    """The first problem with the arrays of a set (shapes, emptiness, dtypes, finiteness, range) or None."""
    x, x_adv, y = adv_set["x"], adv_set["x_adv"], adv_set["y"]
    if x.ndim != 4 or x.shape != x_adv.shape or y.shape != x.shape[:1]:
        return f"inconsistent shapes x {x.shape}, x_adv {x_adv.shape}, y {y.shape}"
    if len(y) == 0:
        return "holds 0 examples"
    if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
        return f"holds images of shape {tuple(x.shape[1:])}, the model takes {tuple(image_shape)}"
    if not np.issubdtype(y.dtype, np.integer):
        return f"its labels are {y.dtype}, not integers"
    for name, images in (("adversarial", x_adv), ("clean", x)):
        if not np.issubdtype(images.dtype, np.floating):
            return f"its {name} images are {images.dtype}, not floats"
        flat = images.reshape(len(images), -1)
        finite = np.isfinite(flat).all(axis=1)
        if not finite.all():
            return _count(~finite, (f"{name} image is not finite", f"{name} images are not finite"), "")
        outside = (flat.min(axis=1) < 0) | (flat.max(axis=1) > 1)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            return _count(outside, (f"{name} image lies outside [0, 1]",
                                    f"{name} images lie outside [0, 1]"),
                          f", values in [{flat[i].min():.3g}, {flat[i].max():.3g}]")
    return None


def _check_classes(meta: Mapping[str, Any], y: np.ndarray, num_classes: int | None) -> str | None:
    """The first problem with the labels (N,) against the model's ``num_classes`` (None: the
    recorded number) or None."""
    recorded = meta.get("num_classes")
    recorded = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) else None
    limit, whose = (num_classes, "the model's") if num_classes is not None else (recorded, "its recorded")
    if limit is None:
        bad = np.unique(y[y < 0])
        return f"labels {', '.join(map(str, bad[:3]))} are negative" if len(bad) else None
    bad = np.unique(y[(y < 0) | (y >= limit)])
    if len(bad):
        return f"labels {', '.join(map(str, bad[:3]))} outside {whose} {limit} classes"
    if num_classes is not None and recorded is not None and recorded != num_classes:
        return f"was crafted for {recorded} classes, the model has {num_classes}"
    return None


def _check_ball(meta: Mapping[str, Any], x: np.ndarray, x_adv: np.ndarray) -> str | None:
    """The first image outside the recorded ε-ball (up to float32 rounding) or None."""
    recorded = recorded_ball(meta)
    if recorded is None:
        return ("records no ε-ball (norm and eps), so its images cannot be checked; save it again "
                "with tf-ntk-evaluate --save_adversarial")
    norm, eps = recorded
    size = ensembles.perturbation_size(x_adv, x, norm)
    tolerance = ensembles.ball_limit(eps) - eps
    outside = size > ensembles.ball_limit(eps)
    if not outside.any():
        return None
    i = int(np.flatnonzero(outside)[0])
    return (f"image {i} lies {size[i]:.3g} from its clean image in {'L∞' if norm == 'linf' else 'L2'}, "
            f"outside its ε-ball of {eps:.4g} (tolerance {tolerance:.2g})"
            + (f"; {int(outside.sum())} images lie outside it" if outside.sum() > 1 else ""))


def _check_split(adv_set: Mapping[str, Any], split: tuple[np.ndarray, np.ndarray], split_name: str) -> str | None:
    """The first difference between the set's clean images and labels and the images of ``split``
    (x_split (M, H, W, C), y_split (M,)) at its recorded indices (the first N where none are
    recorded), or None."""
    x_split, y_split = split
    x, y, indices = adv_set["x"], adv_set["y"], adv_set.get("indices")
    if indices is None:
        if len(y) > len(y_split) or not (np.array_equal(x, x_split[:len(y)])
                                          and np.array_equal(y, y_split[:len(y)])):
            return (f"its {len(y)} clean images and labels are not the first {len(y)} of {split_name} "
                    "(and it records no indices)")
        return None
    if indices.shape != y.shape or not np.issubdtype(indices.dtype, np.integer):
        return f"records {indices.shape} {indices.dtype} indices for {len(y)} examples"
    if indices.min() < 0 or indices.max() >= len(y_split):
        return f"records indices outside the {len(y_split)} images of {split_name}"
    same = (x == x_split[indices]).reshape(len(y), -1).all(axis=1)
    if not same.all():
        i = int(np.flatnonzero(~same)[0])
        return f"its clean image {i} is not image {int(indices[i])} of {split_name}"
    if not np.array_equal(y, y_split[indices]):
        i = int(np.flatnonzero(y != y_split[indices])[0])
        return (f"its label {i} ({int(y[i])}) is not the label of image {int(indices[i])} of "
                f"{split_name} ({int(y_split[indices[i]])})")
    return None


def check_adversarial_set(adv_set: Mapping[str, Any], *, name: str, num_classes: int | None = None,
                          image_shape: Sequence[int] | None = None, split: tuple[np.ndarray, np.ndarray] | None = None,
                          split_name: str = "the split") -> None:
    """Raises ValueError (one line: ``name``, then the first problem) unless ``adv_set`` (as
    `load_adversarial` returns it) is a sound adversarial set: at least one example; x, x_adv
    (N, H, W, C) finite floats in [0, 1] (of ``image_shape`` (H, W, C) when given); labels y (N,)
    integers within ``num_classes`` (default: its recorded number of classes); every x_adv inside its
    recorded ε-ball around x (L∞ or L2, [0, 1] pixel units, up to `ensembles.ball_limit`); and,
    with ``split`` = (x_split (M, H, W, C), y_split (M,)), its clean images and labels exactly those
    of the split at its recorded indices (the first N for sets that record none). ``split_name``
    (e.g. "digits/test") names the split in the message."""
    meta: Any = adv_set.get("meta")  # a dict whenever problem stays None
    problem = None if isinstance(meta, dict) else "its record is not a JSON object"
    problem = problem or _check_arrays(adv_set, image_shape)
    problem = problem or _check_classes(meta, adv_set["y"], num_classes)
    problem = problem or _check_ball(meta, adv_set["x"], adv_set["x_adv"])
    if split is not None:
        problem = problem or _check_split(adv_set, split, split_name)
    if problem:
        verb = problem.split()[0] in ("holds", "records", "was")
        raise ValueError(f"{name}{' ' if verb else ': '}{problem}")


def save_adversarial(path: str, x: npt.ArrayLike, x_adv: npt.ArrayLike, y: npt.ArrayLike, config: Any, *,
                     num_classes: int, eps: float | None = None, norm: str | None = None,
                     data: dict[str, Any] | None = None, indices: npt.ArrayLike | None = None, **record: Any) -> None:
    """Checks (`check_adversarial_set`) and writes an adversarial set to ``path`` (.npz) atomically.

    Stores ``x``, ``x_adv`` (N, H, W, C) float32 in [0, 1], ``y`` (N,) int32 in [0, num_classes),
    ``indices`` (N,) int64 of the examples in their split (when given) and a JSON record: the format,
    the attack config, the ε-ball every x_adv lies in (``norm`` and ``eps``, default the config's),
    ``num_classes``, ``data`` (e.g. {"dataset", "split", "image_size", "channels"}) and ``record``
    (e.g. the source checkpoint), so it can be checked and replayed against other models.

    Raises:
      ValueError: not a .npz path, or the set is unsound; nothing is written then.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"adversarial sets are .npz files, got {path!r}")
    meta = {"format": FORMAT, "attack": config.to_dict(), "norm": norm or config.norm,
            "eps": float(config.eps if eps is None else eps), "num_classes": int(num_classes),
            **({"data": data} if data is not None else {}), **record}
    arrays = {"x": np.asarray(x, np.float32), "x_adv": np.asarray(x_adv, np.float32),
              "y": np.asarray(y, np.int32)}
    if indices is not None:
        arrays["indices"] = np.asarray(indices, np.int64)
    check_adversarial_set({**arrays, "meta": meta}, name=f"adversarial set {path}")
    rundir.write_npz(path, compressed=True, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)


def load_adversarial(path: str, *, name: str | None = None, **expected: Any) -> dict[str, Any]:
    """{"x", "x_adv", "y", "meta"[, "indices"]} of a set written by `save_adversarial`, checked by
    `check_adversarial_set` with ``expected`` (num_classes, image_shape, split, split_name).

    Raises:
      ValueError: one line naming the file (``name``, default the path): unreadable, or unsound.
    """
    name = name or str(path)
    try:
        arrays = rundir.read_npz(path)
        out = {k: arrays[k] for k in ("x", "x_adv", "y")}
        if "indices" in arrays:
            out["indices"] = arrays["indices"]
        out["meta"] = json.loads(str(arrays["meta"]))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, tf.errors.OpError) as e:
        reason = rundir.one_line(e) if str(e).strip() else "empty or truncated file"
        raise ValueError(f"{name} is not a tf_ntk adversarial set: {reason}") from e
    check_adversarial_set(out, name=name, **expected)
    return out


def transfer_accuracy(model_fn: Callable[[tf.Tensor], tf.Tensor], adversarial_set: str | Mapping[str, Any],
                      batch_size: int = 256) -> float:
    """Accuracy of ``model_fn`` on a saved adversarial set (a path or `load_adversarial`'s dict):
    a transfer attack when the set was crafted against another model. Returns a fraction in [0, 1] of
    its x_adv images classified as their label y, evaluated ``batch_size`` at a time: the mean of
    `transfer_correct`.

    Raises:
      ValueError: the set is unsound (`check_adversarial_set`), its labels included: they must be
        classes of ``model_fn``.
    """
    correct = transfer_correct(model_fn, adversarial_set, batch_size)
    return int(np.sum(correct)) / len(correct)


def transfer_correct(model_fn: Callable[[tf.Tensor], tf.Tensor], adversarial_set: str | Mapping[str, Any],
                     batch_size: int = 256) -> np.ndarray:
    """(N,) bool, in the set's order: each x_adv image of a saved adversarial set (a path or
    `load_adversarial`'s dict) classified as its label y by ``model_fn``. Checked as
    `transfer_accuracy` says."""
    if isinstance(adversarial_set, (str, os.PathLike)):
        name = os.fspath(adversarial_set)
        adversarial_set = load_adversarial(name)
    else:
        name = "adversarial set"
        check_adversarial_set(adversarial_set, name=name)
    num_classes = int(model_fn(tf.constant(adversarial_set["x_adv"][:1])).shape[-1])
    check_adversarial_set(adversarial_set, name=name, num_classes=num_classes)
    return correct_per_example(model_fn, as_dataset(adversarial_set["x_adv"], adversarial_set["y"],
                                                    batch_size))


def output_terms(model: keras.Model, dataset: Iterable[tuple[Any, Any]], config: attacks.PGDConfig | None = None, *,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """The two output terms of a linearized or centered model, per example, on clean inputs and
    (when ``config`` is given) on PGD inputs crafted against the model under its own dynamics.

    The adversarial inputs of batch b are crafted with seed (seed, b) against the model's own output
    (``inference_fn(model)``), exactly as `adversarial_examples` and `robust_accuracy` with a
    `tf_ntk.robust.attacks.PGDConfig` craft them. `output_term_accuracies` turns the result into accuracies.

    Returns:
      {"spawn_clean", "kernel_clean"[, "spawn_adv", "kernel_adv"]}: (N, O) arrays of f_{θ_s}(x) and
      J_{θ_s}(x)(θ − θ_s), and "y" (N,).
    """
    if not hasattr(model, "kernel_term"):
        raise ValueError("output terms exist only for tf_ntk.linearize models")
    terms = tf.function(lambda x: (model.spawn_output(x), model.kernel_term(x)),
                        reduce_retracing=True)
    attack = _attack_fn(inference_fn(model), config) if config is not None else None
    out: dict[str, list[np.ndarray]] = {"spawn_clean": [], "kernel_clean": [], "y": []}
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


TERM_SPLITS = (("clean", "clean"), ("adversarial", "adv"))
"""(key of `output_term_accuracies`, suffix of the `output_terms` arrays)."""


def output_term_accuracies(terms: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Accuracies of the output terms of a linearized or centered model (`output_terms`'s dict).

    For the clean inputs and, when ``terms`` holds them, the adversarial ones: the fraction of
    examples whose label y is the argmax (ties to the lowest class) of

    - "spawn_term": the spawn function f_{θ_s}(x) alone;
    - "kernel_term": the kernel term J_{θ_s}(x)(θ − θ_s) alone;
    - "sum": f_{θ_s}(x) + J_{θ_s}(x)(θ − θ_s).

    A linearized model's output is the sum, so its "sum" is the model's accuracy on those inputs;
    a centered model's output is the kernel term alone (it has no spawn function: its "spawn_term"
    is what the spawn network it was linearized around scores, and its "sum" what the linearized
    model with the centered model's θ would score), so its "kernel_term" is the model's accuracy.

    Returns:
      {"clean": {"spawn_term", "kernel_term", "sum"}[, "adversarial": {...}]}, fractions in [0, 1].

    Raises:
      ValueError: no examples, or arrays whose shapes do not match (N, O) and labels (N,).
    """
    y = np.asarray(terms["y"])
    out = {}
    for key, suffix in TERM_SPLITS:
        if f"spawn_{suffix}" not in terms:
            continue
        spawn, kernel = np.asarray(terms[f"spawn_{suffix}"]), np.asarray(terms[f"kernel_{suffix}"])
        if spawn.ndim != 2 or spawn.shape != kernel.shape or y.shape != spawn.shape[:1]:
            raise ValueError(f"output terms of inconsistent shapes: spawn_{suffix} {spawn.shape}, "
                             f"kernel_{suffix} {kernel.shape}, y {y.shape}")
        _check_nonempty(len(y), "output term accuracies")
        out[key] = {name: int(np.sum(np.argmax(logits, axis=-1) == y)) / len(y)
                    for name, logits in (("spawn_term", spawn), ("kernel_term", kernel),
                                         ("sum", spawn + kernel))}
    return out
