"""Image classification data on `tf.data`: float32 NHWC images in [0, 1] and int32 labels.

Data sets:
  * ``digits``: the 8x8 handwritten digits bundled with scikit-learn (1797 images, 10 classes),
    fully offline; the default everywhere. A fixed, seeded, stratified train/test split.
  * ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: through tensorflow-datasets. They are
    loaded only when asked for and never downloaded unless ``download=True``; an unprepared data
    set fails at once with `DatasetNotPreparedError`, which says how to prepare it.

Every loader accepts ``image_size`` (resize to a square side, bilinear) and ``channels`` (1 or 3;
grey images are tiled to 3 channels) so that, for instance, CIFAR-shaped models run on digits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from typing import Optional

import numpy as np
import numpy.typing as npt
from sklearn import datasets as sk_datasets
from sklearn import model_selection
import tensorflow as tf
import tensorflow_datasets as tfds

DIGITS_TEST_FRACTION = 0.2
"""Fraction of scikit-learn's 1,797 digits held out as the test split (360 images)."""
# The digits split is fixed for the project, independent of any experiment's seed.
DIGITS_SPLIT_SEED = 0
"""The digits split's seed, fixed for the project."""

SPLITS = ("train", "test")
"""The split names every data set has."""


class DatasetNotPreparedError(RuntimeError):
    """A tensorflow-datasets data set is not on disk and downloading was not asked for."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set, after any resizing.

    Attributes:
      name: registry name.
      num_classes: number of labels; labels are ints in [0, num_classes).
      image_shape: (H, W, C) of one image as the loaders yield it.
      num_examples: {"train": n, "test": n}.
    """

    name: str
    num_classes: int
    image_shape: tuple
    num_examples: dict


@dataclasses.dataclass(frozen=True)
class _Source:
    num_classes: int
    image_shape: tuple
    num_examples: dict
    tfds_name: Optional[str] = None


_SOURCES = {
    "digits": _Source(10, (8, 8, 1), {"train": 1437, "test": 360}),
    "mnist": _Source(10, (28, 28, 1), {"train": 60000, "test": 10000}, "mnist"),
    "fashion_mnist": _Source(10, (28, 28, 1), {"train": 60000, "test": 10000}, "fashion_mnist"),
    "cifar10": _Source(10, (32, 32, 3), {"train": 50000, "test": 10000}, "cifar10"),
    "cifar100": _Source(100, (32, 32, 3), {"train": 50000, "test": 10000}, "cifar100"),
}


def names() -> list[str]:
    """The known data set names, sorted: ``digits`` (scikit-learn's 8x8 digits, offline, 1,437 train /
    360 test images (8, 8, 1)) and the tensorflow-datasets ones (``mnist``, ``fashion_mnist``,
    ``cifar10``, ``cifar100``), which must be prepared once (`check_prepared`)."""
    return sorted(_SOURCES)


def _source(name: str) -> _Source:
    if name not in _SOURCES:
        raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(names())}")
    return _SOURCES[name]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")


def _output_shape(image_shape: tuple[int, int, int], image_size: int | None,
                  channels: int | None) -> tuple[int, int, int]:
    h, w, c = image_shape
    if image_size is not None:
        if int(image_size) < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        h = w = int(image_size)
    if channels is not None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if channels < c:
            raise ValueError(f"cannot reduce {c} channels to {channels}")
        c = channels
    return (h, w, c)


def info(name: str, *, image_size: int | None = None, channels: int | None = None) -> DatasetInfo:
    """`DatasetInfo` of data set ``name`` as the loaders yield it with these options.

    Args:
      name: one of `names()`.
      image_size: resize to image_size x image_size pixels (None: the native size).
      channels: 1 or 3 (3 tiles grey images; None: the native channels).
    """
    src = _source(name)
    return DatasetInfo(
        name=name,
        num_classes=src.num_classes,
        image_shape=_output_shape(src.image_shape, image_size, channels),
        num_examples=dict(src.num_examples),
    )


def _transform(images: tf.Tensor, image_size: int | None, channels: int | None) -> tf.Tensor:
    """(N, H, W, C) or (H, W, C) float32 in [0, 1] -> resized / channel-tiled, still in [0, 1]."""
    if image_size is not None and tuple(images.shape[-3:-1]) != (image_size, image_size):
        images = tf.image.resize(images, (image_size, image_size), method="bilinear")
        images = tf.clip_by_value(images, 0.0, 1.0)
    if channels is not None and images.shape[-1] != channels:
        images = tf.repeat(images, channels // images.shape[-1], axis=-1)
    return images


@functools.lru_cache(maxsize=None)
def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:

    bunch = sk_datasets.load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[..., None]  # pixels are 0..16
    labels = bunch.target.astype(np.int32)
    train_idx, test_idx = model_selection.train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    return {
        "train": (images[train_idx], labels[train_idx]),
        "test": (images[test_idx], labels[test_idx]),
    }


def _not_prepared_message(tfds_name: str, data_dir: str | None) -> str:
    where = data_dir or "~/tensorflow_datasets"
    dd = f" --data_dir={data_dir}" if data_dir else ""
    return (
        f"data set {tfds_name!r} is not prepared in {where}. Prepare it once on a machine with network "
        f"access: `tfds build {tfds_name}{dd}` (or pass download=True / --download), then copy the "
        f"directory here or point data_dir at it (a gs:// bucket on Cloud TPU)."
    )


def check_prepared(name: str, *, data_dir: str | None = None, download: bool = False) -> None:
    """Raises `DatasetNotPreparedError` (with instructions) when data set ``name`` would have to be
    downloaded and ``download`` is off; reads no examples and never touches the network."""
    src = _source(name)
    if src.tfds_name is None or download:
        return
    if not tfds.builder(src.tfds_name, data_dir=data_dir).is_prepared():
        raise DatasetNotPreparedError(_not_prepared_message(src.tfds_name, data_dir))


def _tfds_load(tfds_name: str, split: str, data_dir: str | None, download: bool, **kwargs: Any) -> tf.data.Dataset:
    try:
        return tfds.load(
            tfds_name, split=split, data_dir=data_dir, download=download, as_supervised=True, **kwargs
        )
    except AssertionError as e:
        # tfds raises AssertionError("... could not find data in ...") when the data is not prepared.
        if "could not find data" in str(e):
            raise DatasetNotPreparedError(_not_prepared_message(tfds_name, data_dir)) from None
        raise


def _to_float(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(image, tf.float32) / 255.0, tf.cast(label, tf.int32)


def load_arrays(name: str = "digits", split: str = "train", *, data_dir: str | None = None,
                image_size: int | None = None, channels: int | None = None,
                download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The whole split as numpy arrays.

    Args:
      name: one of `names()`; ``digits`` (offline) by default.
      split: ``"train"`` or ``"test"``.
      data_dir: tensorflow-datasets directory (a gs:// bucket on Cloud TPU); ignored for digits.
      image_size, channels: resize to image_size x image_size pixels, tile grey images to 3 channels.
      download: allow tensorflow-datasets to download and prepare the data.

    Returns:
      (images, labels): images float32 (N, H, W, C) in [0, 1] (pixel intensity / 255); labels int32
      (N,) in [0, num_classes).
    """
    src = _source(name)
    _check_split(split)
    _output_shape(src.image_shape, image_size, channels)
    if src.tfds_name is None:
        images, labels = _digits_arrays()[split]
    else:
        ds = _tfds_load(src.tfds_name, split, data_dir, download).batch(4096)
        chunks = [(x, y) for x, y in ds.as_numpy_iterator()]
        images = np.concatenate([x for x, _ in chunks]).astype(np.float32) / 255.0
        labels = np.concatenate([y for _, y in chunks])
    images = _transform(tf.convert_to_tensor(images), image_size, channels)
    return np.asarray(images, dtype=np.float32), np.asarray(labels, dtype=np.int32)


def batch(dataset: tf.data.Dataset, *, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
          drop_remainder: bool = False, shuffle_buffer: int | None = None) -> tf.data.Dataset:
    """Shuffles (seeded by ``(seed, epoch)``) and batches a dataset of (image, label) pairs.

    The order for a given ``(seed, epoch)`` is always the same, so a resumed run sees the same batches
    as one never interrupted. Under tf.distribute pass the *global* batch size and, for TPUs,
    ``drop_remainder=True`` (static shapes).

    Args:
      dataset: a `tf.data.Dataset` of unbatched (image (H, W, C), label ()) pairs.
      batch_size: examples per batch (≥ 1).
      shuffle: shuffle before batching, with a buffer of ``shuffle_buffer`` examples (default: all).
      seed, epoch: the shuffle's seed is a function of both.
      drop_remainder: drop the last partial batch.

    Returns:
      The batched dataset: (images (B, H, W, C), labels (B,)) with B = ``batch_size`` (the last
      batch smaller unless ``drop_remainder``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        buffer = shuffle_buffer or int(dataset.cardinality().numpy())
        if buffer < 1:
            buffer = 10_000
        dataset = dataset.shuffle(buffer, seed=int(seed) * 1_000_003 + int(epoch),
                                  reshuffle_each_iteration=False)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def load(name: str = "digits", split: str = "train", *, batch_size: int = 128, shuffle: bool = False, seed: int = 0,
         epoch: int = 0, drop_remainder: bool = False, data_dir: str | None = None, image_size: int | None = None,
         channels: int | None = None, download: bool = False) -> tf.data.Dataset:
    """A batched `tf.data.Dataset` of (images (B, H, W, C) float32 in [0, 1], labels (B,) int32).

    Args:
      name: one of `names()`; ``digits`` (offline) by default.
      split: ``"train"`` or ``"test"``.
      batch_size: global batch size.
      shuffle, seed, epoch: shuffle with a seed that depends on (seed, epoch) only.
      drop_remainder: drop the last partial batch (static shapes for TPUs).
      data_dir: tensorflow-datasets directory (a gs:// bucket on Cloud TPU); ignored for digits.
      image_size, channels: resize to image_size x image_size, tile grey images to 3 channels.
      download: allow tensorflow-datasets to download and prepare the data.

    Raises:
      DatasetNotPreparedError: a TFDS data set is not prepared and download is False.
    """
    src = _source(name)
    _check_split(split)
    _output_shape(src.image_shape, image_size, channels)
    if src.tfds_name is None:
        images, labels = load_arrays(name, split, image_size=image_size, channels=channels)
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
    else:
        # Cache the decoded uint8 examples (150 MB for CIFAR-10), then convert on the fly.
        ds = _tfds_load(src.tfds_name, split, data_dir, download).cache()
        transform = functools.partial(_transform, image_size=image_size, channels=channels)
        ds = ds.map(lambda x, y: (transform(_to_float(x, y)[0]), tf.cast(y, tf.int32)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return batch(ds, batch_size=batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                 drop_remainder=drop_remainder,
                 shuffle_buffer=min(src.num_examples[split], 50_000) if shuffle else None)


def class_balanced_indices(labels: npt.ArrayLike, per_class: int, *, seed: int = 0,
                           num_classes: int | None = None) -> np.ndarray:
    """Indices of ``per_class`` examples of every class, ordered class by class.

    Within a class the examples are drawn without replacement with ``seed`` and kept in the order drawn.

    Args:
      labels: int array (N,).
      per_class: examples per class (the kernel analysis uses 50).
      seed: sampling seed.
      num_classes: classes to take (default: max label + 1); every one must have ``per_class`` examples.

    Returns:
      int64 array (num_classes * per_class,).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    rng = np.random.default_rng(seed)
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} examples, fewer than per_class={per_class}")
        out.append(rng.choice(idx, size=per_class, replace=False))
    return np.concatenate(out).astype(np.int64)


def class_balanced_sample(images: np.ndarray, labels: npt.ArrayLike, per_class: int, *, seed: int = 0,
                          num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images[idx], labels[idx])`` for ``idx = class_balanced_indices(labels, per_class, ...)``.

    Args:
      images: array (N, H, W, C) (any dtype; typically float32 in [0, 1]).
      labels: int array (N,).
      per_class, seed, num_classes: as for `class_balanced_indices`.

    Returns:
      (images (P, H, W, C), labels (P,)) with P = num_classes * per_class, class by class.
    """
    idx = class_balanced_indices(labels, per_class, seed=seed, num_classes=num_classes)
    return images[idx], np.asarray(labels)[idx]
