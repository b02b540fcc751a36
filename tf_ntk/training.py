"""Supervised training of a Keras classifier with SGD + momentum and softmax cross-entropy."""

import keras
import numpy as np
import tensorflow as tf

from tf_ntk import attacks


def set_seed(seed):
    """Seeds Python, NumPy and TensorFlow and makes TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


def piecewise_constant_lr(base_lr, boundaries_epochs=(100, 150), factor=0.1, steps_per_epoch=1):
    """The protocol's schedule: ``base_lr``, times ``factor`` at each boundary epoch (0.1 → 0.01 → 0.001)."""
    boundaries = [int(b * steps_per_epoch) for b in boundaries_epochs]
    values = [base_lr * factor**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def sgd(learning_rate, momentum=0.9):
    """SGD with (heavy-ball) momentum, the protocol's optimizer."""
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)


def make_train_step(model, optimizer, *, attack=None, jit_compile=False):
    """A compiled train step ``(x, y) -> (mean loss, accuracy)`` on one batch.

    Args:
      model: the Keras classifier (logits); trained in training mode (BN batch statistics).
      optimizer: a Keras optimizer.
      attack: None for clean training, or a `tf_ntk.attacks.PGDConfig`: the step then trains on
        PGD examples crafted against the current weights with BN in inference mode (Madry).
      jit_compile: compile with XLA.
    """
    variables = model.trainable_variables
    model_fn = lambda x: model(x, training=False)  # noqa: E731  (one stable callable for the attack)

    def step(x, y):
        if attack is not None:
            x = tf.stop_gradient(attack.attack(model_fn, x, y))
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(attacks.cross_entropy_loss(y, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                              tf.cast(y, tf.int32)), tf.float32))
        return loss, acc

    return tf.function(step, jit_compile=jit_compile)


def train_epoch(step, dataset):
    """Runs ``step`` over every batch; returns (mean loss, mean accuracy) weighted by batch size."""
    losses, accs, sizes = [], [], []
    for x, y in dataset:
        loss, acc = step(x, y)
        losses.append(float(loss))
        accs.append(float(acc))
        sizes.append(int(x.shape[0]))
    if not sizes:
        raise ValueError("cannot train on an empty dataset")
    return float(np.average(losses, weights=sizes)), float(np.average(accs, weights=sizes))
