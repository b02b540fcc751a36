"""Benign and robust (PGD) accuracy of a classifier over a dataset."""

import tensorflow as tf

from tf_ntk import attacks


def inference_fn(model):
    """A stable callable images -> logits with BN in inference mode, for attacks and evaluation."""
    return lambda x: model(x, training=False)


def _count_correct(model_fn, x, y):
    pred = tf.argmax(model_fn(x), axis=-1, output_type=tf.int32)
    correct = tf.reduce_sum(tf.cast(tf.equal(pred, tf.cast(y, tf.int32)), tf.int64))
    return correct, tf.size(y, out_type=tf.int64)


def _fraction_correct(step, dataset, what):
    correct = total = 0
    for x, y in dataset:
        c, n = step(x, y)
        correct += int(c)
        total += int(n)
    if total == 0:
        raise ValueError(f"cannot compute {what} on an empty dataset")
    return correct / total


def accuracy(model_fn, dataset):
    """Fraction of examples of ``dataset`` ((images, labels) batches) that ``model_fn`` classifies right."""
    step = tf.function(lambda x, y: _count_correct(model_fn, x, y))
    return _fraction_correct(step, dataset, "accuracy")


def robust_accuracy(model_fn, dataset, config=attacks.PGDConfig()):
    """Accuracy on PGD examples crafted against ``model_fn`` (one traced attack for all batches)."""
    step = tf.function(lambda x, y: _count_correct(model_fn, config.attack(model_fn, x, y), y))
    return _fraction_correct(step, dataset, "robust accuracy")
