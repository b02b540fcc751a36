"""TensorBoard summaries of runs and kernels: scalars, heat maps, spectra, configuration, HParams.

Every summary of tf_ntk is logged against the epoch in **milli-epochs**: TensorBoard's step is
``round(1000 · epoch)``, so the fractional spawn epoch 0.125 lands at step 125 and epoch 3 at 3000.
"""

import json

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from tf_ntk import metrics

EPOCH_SCALE = 1000


def epoch_step(epoch):
    """The TensorBoard step of a (fractional) epoch: round(1000 · epoch)."""
    return int(round(float(epoch) * EPOCH_SCALE))


def heat_map(kernel, *, min_pixels=256):
    """A kernel (N, N) as a (1, S, S, 3) uint8 image: white = max, black = min, nearest upscaled
    so S ≥ ``min_pixels``; examples in the kernel's order (class by class for the probe sets)."""
    k = np.asarray(kernel, np.float64)
    if k.ndim != 2:
        raise ValueError(f"expected an (N, N) kernel, got shape {k.shape}")
    lo, hi = k.min(), k.max()
    scaled = (k - lo) / (hi - lo) if hi > lo else np.zeros_like(k)
    rep = max(1, -(-min_pixels // max(k.shape)))
    img = np.kron(scaled, np.ones((rep, rep)))
    img = (255 * img).round().astype(np.uint8)
    return np.repeat(img[None, :, :, None], 3, axis=-1)


def image_grid(images, columns=None):
    """Images (M, H, W, C) in [0, 1] as one (1, rows·H, cols·W, C) grid."""
    images = np.asarray(images, np.float32)
    m, h, w, c = images.shape
    cols = columns or int(np.ceil(np.sqrt(m)))
    rows = -(-m // cols)
    grid = np.ones((rows * h, cols * w, c), np.float32)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = im
    return grid[None]


def write_config(config, step=0):
    """The resolved configuration as text (a JSON code block) under ``config``."""
    text = "```\n" + json.dumps(config, indent=2, sort_keys=True, default=str) + "\n```"
    tf.summary.text("config", text, step=step)


def write_hparams(config):
    """HParams for run comparison: the scalar-valued entries (bool, int, float, str) of ``config``."""
    flat = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
    hparams_api.hparams(flat)


def write_kernel(tag, kernel, epoch, *, top=10):
    """Heat map, spectrum histogram and top eigenvalues of a kernel (N, N) at ``epoch``."""

    step = epoch_step(epoch)
    tf.summary.image(f"{tag}/heat_map", heat_map(kernel), step=step)
    lam = metrics.spectrum(kernel)
    tf.summary.histogram(f"{tag}/spectrum_log10", np.log10(np.maximum(lam, 1e-30)), step=step)
    for i, value in enumerate(lam[:top]):
        tf.summary.scalar(f"{tag}/eigenvalue_{i}", value, step=step)
