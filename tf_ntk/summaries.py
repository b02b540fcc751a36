"""TensorBoard summaries of runs and kernels: scalars, heat maps, spectra, configuration, HParams.

Every summary of tf_ntk is logged against the epoch in **milli-epochs**: TensorBoard's step is
``round(1000 · epoch)``, so the fractional spawn epoch 0.125 lands at step 125 and epoch 3 at 3000.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
import json
import os
from typing import Any

from matplotlib import colormaps
import numpy as np
import numpy.typing as npt
from tensorboard.plugins.hparams import api as hparams_api
import tensorflow as tf

from tf_ntk import rundir
from tf_ntk.ntk import metrics

TENSORBOARD_FLAGS = "--samples_per_plugin=images=100000"
"""What `tensorboard` needs to show every epoch's heat map and eigen-image: TensorBoard keeps 10
images per tag by default, and since 2.8 ``images=0`` keeps none (tensorflow/tensorboard#5550,
its maintainers' advice: a large number)."""


def tensorboard_command(logdir: str | os.PathLike) -> str:
    """The shell command that shows ``logdir`` in TensorBoard with every image kept."""
    return f"tensorboard --logdir {logdir} {TENSORBOARD_FLAGS}"


EPOCH_SCALE = 1000


def epoch_step(epoch: float) -> int:
    """The TensorBoard step of a (fractional) epoch: round(1000 · epoch)."""
    return int(round(float(epoch) * EPOCH_SCALE))


BOUNDARY = (255, 255, 255)  # class boundaries in heat maps: white lines


def colour_scale(kernels: Iterable[npt.ArrayLike]) -> tuple[float, float]:
    """(lo, hi): one colour scale for several kernels (e.g. a run's epochs), so heat maps compare."""
    return (min(float(np.min(k)) for k in kernels), max(float(np.max(k)) for k in kernels))


def heat_map(kernel: npt.ArrayLike, *, scale: tuple[float, float] | None = None, labels: npt.ArrayLike | None = None,
             min_pixels: int = 256, cmap: str = "viridis") -> np.ndarray:
    """A kernel (N, M) as a (1, S·N/max, S·M/max, 3) uint8 image through a matplotlib colour map.

    Args:
      kernel: (N, M) values, examples in the kernel's order (class by class for the probe sets).
      scale: (lo, hi) mapped to the colour map's ends (values outside are clipped); default the
        kernel's own min and max. Pass `colour_scale` of a run's kernels to compare its epochs.
      labels: (N,) class labels of square kernels in class order: a white line is drawn between
        classes (the image is one pixel taller and wider per boundary).
      min_pixels: nearest-neighbour upscaling so the longer side has at least this many pixels.
      cmap: a matplotlib colour-map name (viridis: dark = low, yellow = high).
    """
    k = np.asarray(kernel, np.float64)
    if k.ndim != 2:
        raise ValueError(f"expected an (N, N) kernel, got shape {k.shape}")
    lo, hi = scale if scale is not None else (k.min(), k.max())
    scaled = np.clip((k - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(k)
    rep = max(1, -(-min_pixels // max(k.shape)))
    rgb = colormaps[cmap](np.kron(scaled, np.ones((rep, rep))))[..., :3]
    img = (255 * rgb).round().astype(np.uint8)
    if labels is not None:
        labels = np.asarray(labels)
        cuts = [i * rep for i in range(1, len(labels)) if labels[i] != labels[i - 1]]
        if cuts:  # rows first, then columns: both at the same positions of the unlined image
            img = np.insert(np.insert(img, cuts, BOUNDARY, axis=0), cuts, BOUNDARY, axis=1)
    return img[None]


def write_config(config: Mapping[str, Any], step: int = 0) -> None:
    """The resolved configuration as text (a JSON code block) under ``config``."""
    text = "```\n" + json.dumps(config, indent=2, sort_keys=True, default=str) + "\n```"
    tf.summary.text("config", text, step=step)


# The HParams dashboard's metric columns, in this order: the evaluation's numbers (written into the
# run's events by tf-ntk-evaluate) first. Naming them keeps the dashboard from listing every scalar.
HPARAMS_METRICS = (
    ("eval/robust_accuracy", "robust accuracy (worst case over the attacks; tf-ntk-evaluate)"),
    ("eval/benign_accuracy", "benign accuracy (tf-ntk-evaluate)"),
    ("test/benign_accuracy", "benign test accuracy during training"),
    ("test/robust_accuracy_quick", "quick robust estimate during training (PGD-k, one start; not "
                                   "the reported robust accuracy)"),
    ("train/loss", "training loss"),
    ("train/accuracy", "training accuracy"),
)
ONLINE_KERNEL_METRICS = (
    ("online_kernel/distance_to_init", "kernel distance to init"),
    ("online_kernel/target_alignment", "kernel-target alignment"),
    ("online_kernel/effective_rank", "kernel effective rank"),
)
# The columns a researcher sorts runs by, first. TensorBoard orders the columns by name, so these
# are written as "01_spawn_source", … with their plain name as the display name.
HPARAMS_FIRST = ("spawn_source", "spawn_epoch", "dynamics", "data_mode", "seed", "phase", "adv_mode",
                 "eps", "data_seed")


def hparam_name(key: str) -> str:
    """The HParams name of a configuration key: ranked ("01_spawn_source") for `HPARAMS_FIRST`."""
    return f"{HPARAMS_FIRST.index(key) + 1:02d}_{key}" if key in HPARAMS_FIRST else key


def write_hparams(config: Mapping[str, Any], trial_id: str | None = None, online_kernel: bool = False) -> None:
    """HParams for run comparison: the scalar-valued entries (bool, int, float, str) of ``config``,
    as the trial ``trial_id`` (e.g. the run's name; TensorBoard shows a hash otherwise), with the
    `HPARAMS_FIRST` columns first and `HPARAMS_METRICS` (and the online kernel's metrics when the
    run logs them)."""
    flat = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
    order = [k for k in HPARAMS_FIRST if k in flat] + sorted(k for k in flat if k not in HPARAMS_FIRST)
    metrics = HPARAMS_METRICS + (ONLINE_KERNEL_METRICS if online_kernel else ())
    hparams_api.hparams_config(
        hparams=[hparams_api.HParam(hparam_name(k), display_name=k) for k in order],
        metrics=[hparams_api.Metric(tag, display_name=name) for tag, name in metrics])
    hparams_api.hparams({hparam_name(k): flat[k] for k in order}, trial_id=trial_id)


def event_files(logdir: str | os.PathLike) -> list[str]:
    """The TensorBoard event files directly in ``logdir`` (any file system), sorted."""
    return rundir.glob(f"{str(logdir).rstrip('/')}/events.out.tfevents.*")


def read_events(logdir: str | os.PathLike) -> dict[tuple[str, int], list[float | bytes]]:
    """{(tag, step): [values]} of every summary in the event files directly in ``logdir``, in
    file order; a scalar's value is a float, any other summary's its serialized tensor (bytes). A
    record cut short by a kill ends its file's reading (what came before it counts)."""
    found: dict[tuple[str, int], list[float | bytes]] = {}
    for path in event_files(logdir):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    tensor = tf.make_ndarray(value.tensor) if value.HasField("tensor") else None
                    kept = (float(tensor) if tensor is not None and tensor.ndim == 0
                            and tensor.dtype.kind == "f" else value.SerializeToString())
                    found.setdefault((value.tag, int(event.step)), []).append(kept)
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError):
            continue
    return found


class Ledger:
    """The summaries already in a log directory, so that a resumed command writes each
    (tag, step) once: a run killed after its events reached the disk but before the record that
    says so (``history.json``, ``results.json``) writes the same summaries again when it resumes.

        ledger = summaries.Ledger(workdir)          # before the writer adds anything
        ledger.scalar("train/loss", 0.31, step=1000)  # skipped if already logged
    """

    def __init__(self, logdir: str | os.PathLike | None = None) -> None:
        self.logged = set(read_events(logdir)) if logdir is not None else set()

    def new(self, tag: str, step: int) -> bool:
        """Whether (tag, step) is not logged yet; marks it logged."""
        key = (tag, int(step))
        if key in self.logged:
            return False
        self.logged.add(key)
        return True

    def scalar(self, tag: str, value: float, step: int, **kwargs: Any) -> None:
        if self.new(tag, step):
            tf.summary.scalar(tag, value, step=step, **kwargs)


def write_kernel(tag: str, kernel: npt.ArrayLike, epoch: float, *, top: int = 10,
                 scale: tuple[float, float] | None = None, labels: npt.ArrayLike | None = None,
                 ledger: Ledger | None = None) -> None:
    """Heat map (`heat_map` with ``scale`` and class ``labels``), spectrum histogram and top
    eigenvalues of a kernel (N, N) at ``epoch``; with a `Ledger`, only what it does not hold yet."""
    step = epoch_step(epoch)
    ledger = ledger or Ledger()
    lo, hi = scale if scale is not None else (float(np.min(kernel)), float(np.max(kernel)))
    if ledger.new(f"{tag}/heat_map", step):
        tf.summary.image(
            f"{tag}/heat_map", heat_map(kernel, scale=(lo, hi), labels=labels), step=step,
            description=f"viridis from {lo:.4g} (dark) to {hi:.4g} (yellow)"
            f"{' for every epoch of the run' if scale is not None else ' (this epoch)'}; "
            "examples class by class, white lines between classes. TensorBoard keeps 10 "
            f"images per tag unless launched with {TENSORBOARD_FLAGS}.")
    lam = metrics.spectrum(kernel)
    if ledger.new(f"{tag}/spectrum_log10", step):
        tf.summary.histogram(f"{tag}/spectrum_log10", np.log10(np.maximum(lam, 1e-30)), step=step)
    for i, value in enumerate(lam[:top]):
        ledger.scalar(f"{tag}/eigenvalue_{i}", value, step=step)
