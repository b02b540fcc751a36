"""Data pipelines: ranges, shapes, dtypes, split determinism, class balance, TFDS (mocked) and fast failure."""

import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_ntk import data


def test_digits_arrays_are_the_real_split():
    x_tr, y_tr = data.load_arrays("digits", "train")
    x_te, y_te = data.load_arrays("digits", "test")
    assert x_tr.shape == (1437, 8, 8, 1) and x_te.shape == (360, 8, 8, 1)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    assert x_tr.min() == 0.0 and x_tr.max() == 1.0 and x_te.min() >= 0.0 and x_te.max() <= 1.0
    # sklearn's digits pixels are 0..16, so every value is a multiple of 1/16.
    np.testing.assert_array_equal(x_tr * 16, np.round(x_tr * 16))
    assert len(y_tr) + len(y_te) == 1797
    # Stratified: each class's test share is within one example of 20%.
    for c in range(10):
        n = np.sum(y_tr == c) + np.sum(y_te == c)
        assert abs(np.sum(y_te == c) - 0.2 * n) <= 1
    info = data.info("digits")
    assert info.num_examples == {"train": 1437, "test": 360} and info.num_classes == 10


def test_digits_split_is_deterministic_and_disjoint():
    a = data.load_arrays("digits", "train")
    data._digits_arrays.cache_clear()  # noqa: SLF001  (a fresh split, not the cached one)
    b = data.load_arrays("digits", "train")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    x_te, _ = data.load_arrays("digits", "test")
    train_rows = {row.tobytes() for row in a[0]}
    # The data set has a handful of exact duplicate images; the split itself takes each image once.
    assert sum(row.tobytes() in train_rows for row in x_te) <= 5


def test_resize_and_tile_to_cifar_shape():
    x, _ = data.load_arrays("digits", "test", image_size=32, channels=3)
    assert x.shape == (360, 32, 32, 3) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    assert data.info("digits", image_size=32, channels=3).image_shape == (32, 32, 3)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        data.load_arrays("digits", "test", channels=2)


def _collect(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return xs, ys


def test_batched_pipeline_shuffles_by_seed_and_epoch():
    ds = data.load("digits", "train", batch_size=100, shuffle=True, seed=3, epoch=0)
    xs, ys = _collect(ds)
    assert xs[0].shape == (100, 8, 8, 1) and xs[0].dtype == np.float32 and ys[0].dtype == np.int32
    assert len(xs) == 15 and xs[-1].shape[0] == 37
    again = np.concatenate(_collect(data.load("digits", "train", batch_size=100, shuffle=True,
                                              seed=3, epoch=0))[1])
    other_epoch = np.concatenate(_collect(data.load("digits", "train", batch_size=100, shuffle=True,
                                                    seed=3, epoch=1))[1])
    labels = np.concatenate(ys)
    np.testing.assert_array_equal(labels, again)
    assert not np.array_equal(labels, other_epoch)
    _, y_all = data.load_arrays("digits", "train")
    np.testing.assert_array_equal(np.sort(labels), np.sort(y_all))
    # Iterating the same dataset twice gives the same order (resume sees the same batches).
    np.testing.assert_array_equal(np.concatenate(_collect(ds)[1]), labels)
    dropped = _collect(data.load("digits", "train", batch_size=100, drop_remainder=True))[0]
    assert len(dropped) == 14 and all(b.shape[0] == 100 for b in dropped)


def test_class_balanced_sampler():
    _, y = data.load_arrays("digits", "train")
    idx = data.class_balanced_indices(y, 50, seed=7)
    assert idx.shape == (500,)
    np.testing.assert_array_equal(y[idx], np.repeat(np.arange(10), 50))
    assert len(set(idx.tolist())) == 500
    np.testing.assert_array_equal(idx, data.class_balanced_indices(y, 50, seed=7))
    assert not np.array_equal(idx, data.class_balanced_indices(y, 50, seed=8))
    x, _ = data.load_arrays("digits", "train")
    xs, ys = data.class_balanced_sample(x, y, 3, seed=0)
    assert xs.shape == (30, 8, 8, 1) and list(ys) == sorted(ys)
    with pytest.raises(ValueError, match="fewer than per_class=1000"):
        data.class_balanced_indices(y, 1000)


def test_mocked_cifar10_pipeline(tmp_path):
    with tfds.testing.mock_data(num_examples=20):
        ds = data.load("cifar10", "train", batch_size=8, shuffle=True, seed=0, data_dir=str(tmp_path))
        xs, ys = _collect(ds)
        x, y = data.load_arrays("cifar10", "test", data_dir=str(tmp_path))
    assert [b.shape for b in xs] == [(8, 32, 32, 3), (8, 32, 32, 3), (4, 32, 32, 3)]
    assert all(b.dtype == np.float32 and b.min() >= 0 and b.max() <= 1 for b in xs)
    assert all(b.dtype == np.int32 and b.min() >= 0 and b.max() < 10 for b in ys)
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert y.dtype == np.int32


def test_mocked_mnist_tiles_to_three_channels(tmp_path):
    with tfds.testing.mock_data(num_examples=4):
        (x, _), = list(data.load("mnist", "test", batch_size=4, image_size=32, channels=3,
                                 data_dir=str(tmp_path)))
    assert x.shape == (4, 32, 32, 3)


def test_unprepared_tfds_fails_with_instructions_and_never_touches_the_network(tmp_path, monkeypatch):
    """Fast because it never tries the network (tfds's download path retries for ~200 s): every
    Python socket connection and name lookup is refused and counted, and none happens."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(data.DatasetNotPreparedError, match="tfds build cifar10"):
        data.load("cifar10", "train", data_dir=str(tmp_path))
    with pytest.raises(data.DatasetNotPreparedError, match="tfds build cifar10"):
        data.check_prepared("cifar10", data_dir=str(tmp_path))
    assert attempts == []


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'; known data sets: cifar10"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        data.load_arrays("digits", "validation")
