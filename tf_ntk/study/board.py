"""The study's TensorBoard log directory: WORKDIR/tensorboard, one run per condition (≤ 40 runs).

TensorBoard's Scalars, Images and Custom Scalars dashboards select runs on their own only when 40 or
fewer match, and colour lines by run. So the study's own log directory holds one run per
*condition*, the seeds folded into a mean and a spread, and every quantity that conditions share
has one tag, so that a chart draws one line (one colour) per condition:

    phase1/<source>                       kernel/<metric> against the phase-1 epoch; train/loss,
                                          test/benign_accuracy (and the quick PGD estimate)
    distance/<pair>                       kernel/distance_between_runs: standard vs adversarial,
                                          the matched floors, flip vs adversarial
    phase2/<source>-<dynamics>-<data>     accuracy/robust (worst case), accuracy/benign against the
                                          spawn epoch
    kernel_machine/<source>               accuracy/robust, accuracy/benign against the spawn epoch
    figures                               the report's figures (PNG) as images, and the heat maps of
                                          the standard and the adversarial kernel on one scale

The x axis is TensorBoard's step, milli-epochs (`tf_ntk.summaries.epoch_step`). Every value is the
mean over seeds; ``spread/<tag>/min`` and ``spread/<tag>/max`` hold the seeds' range, which the
Custom Scalars layout draws as a margin around the mean. The phase-2 conditions are HParams
sessions (spawn source, spawn epoch of the metric columns, dynamics, data, seeds) whose metrics are
the worst-case robust and the benign accuracy at the last spawn. Every run's own log directory
(phase1/<run>, phase2/<run>, kernels/<run>/tb, …) sits under WORKDIR, one level down:
``tensorboard --logdir WORKDIR/phase2`` shows every phase-2 run with its HParams.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import os

import numpy as np
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalars
from tensorboard.plugins.hparams import api as hparams_api
import tensorflow as tf

from tf_ntk import rundir
from tf_ntk import summaries
from tf_ntk.study import collect
from tf_ntk.study import plan
from tf_ntk.study import presets

BOARD_DIR = "tensorboard"

KERNEL_METRICS = ("distance_to_init", "distance_to_final", "velocity", "target_alignment",
                  "effective_rank", "cka_to_init")
TRAINING_TAGS = ("train/loss", "test/benign_accuracy", "test/robust_accuracy_quick")
ROBUST = "accuracy/robust"
BENIGN = "accuracy/benign"
DISTANCE = "kernel/distance_between_runs"

# HParams columns, in the order TensorBoard shows them: it sorts columns by name, so the names carry
# their rank and the display names read plainly.
HPARAMS = (("1_spawn_source", "spawn source"), ("2_spawn_epoch", "spawn epoch"),
           ("3_dynamics", "dynamics"), ("4_data", "data"), ("5_seeds", "seeds"))
HPARAMS_METRICS = ((ROBUST, "robust accuracy (worst case)"), (BENIGN, "benign accuracy"))
"""At the spawn epoch of the row, means over seeds."""

URL_HINT = ("open http://localhost:6006/#custom_scalars&_smoothingWeight=0 (Custom Scalars, smoothing "
            "off) and untick \"Ignore outliers in chart scaling\" (TensorBoard clips the top of short "
            "series otherwise)")


def _spread(values_by_step: Mapping[int, Sequence[float]]) -> dict[int, tuple[float, float, float]]:
    """{step: [values]} -> {step: (mean, min, max)} over the finite values."""
    out = {}
    for step, values in values_by_step.items():
        values = [float(v) for v in values if v is not None and np.isfinite(v)]
        if values:
            out[step] = (float(np.mean(values)), min(values), max(values))
    return out


def _write_series(tag: str, series: Mapping[int, tuple[float, float, float]]) -> None:
    """Mean at ``tag``, seed range at spread/``tag``/min|max; ``series`` {step: (mean, lo, hi)}."""
    for step, (mean, lo, hi) in sorted(series.items()):
        tf.summary.scalar(tag, mean, step=step)
        tf.summary.scalar(f"spread/{tag}/min", lo, step=step)
        tf.summary.scalar(f"spread/{tag}/max", hi, step=step)


def _seeds_text(preset: presets.Preset) -> str:
    seeds = preset.seed_list()
    return f"{seeds[0]}–{seeds[-1]} ({len(seeds)})" if len(seeds) > 1 else str(seeds[0])


def phase1_series(preset: presets.Preset, collected: collect.Collected, sweep_dir: str,
                  source: str) -> dict[str, dict[int, tuple[float, float, float]]]:
    """{tag: {step: (mean, min, max)}} of ``source``'s phase-1 runs: the kernel metrics by epoch and
    the training curves read from each run's own events."""
    by_tag: dict[str, dict[int, list[float]]] = {}
    for seed in preset.seed_list():
        name = plan.phase1_name(source, seed)
        for row in collected.kernels.get(name, []):
            for metric in KERNEL_METRICS:
                if metric in row:
                    by_tag.setdefault(f"kernel/{metric}", {}).setdefault(
                        summaries.epoch_step(row["epoch"]), []).append(row[metric])
        for (tag, step), values in summaries.read_events(os.path.join(sweep_dir, "phase1", name)).items():
            if tag in TRAINING_TAGS and isinstance(values[-1], float):
                by_tag.setdefault(tag, {}).setdefault(step, []).append(values[-1])
    return {tag: _spread(steps) for tag, steps in by_tag.items()}


def distance_series(preset: presets.Preset,
                    collected: collect.Collected) -> dict[str, dict[int, tuple[float, float, float]]]:
    """{pair kind: {step: (mean, min, max)}} of the kernel distances between runs."""
    by_kind: dict[str, dict[int, list[float]]] = {}
    for a, b in plan.comparison_pairs(preset):
        if b.endswith(presets.REPLICA):
            kind = f"matched_floor_{a.split('-s')[0]}"
        elif a.startswith(presets.FLIP):
            kind = "flip_vs_adversarial"
        else:
            kind = "standard_vs_adversarial"
        for epoch, distance in (collected.comparisons.get((a, b)) or {}).items():
            by_kind.setdefault(kind, {}).setdefault(summaries.epoch_step(epoch), []).append(distance)
    return {kind: _spread(steps) for kind, steps in by_kind.items()}


def phase2_series(
        preset: presets.Preset, collected: collect.Collected,
) -> dict[tuple[str, str, str], dict[str, dict[int, tuple[float, float, float]]]]:
    """{(source, dynamics, data): {"robust"|"benign": {step: (mean, min, max)}}} against the spawn
    epoch (spawn 0, the shared initialisation, in every source's curve)."""
    by_condition: dict[tuple[str, str, str], dict[str, dict[int, list[float]]]] = {}
    for run, phase, source, _, dynamics, data_mode, spawn in plan.evaluated_runs(preset):
        r = collected.evals.get(run)
        if phase != "2" or r is None:
            continue
        sources = presets.SOURCES if spawn == 0 else (source,)  # the init is every source's spawn 0
        for s in sources:
            for key in ("robust", "benign"):
                by_condition.setdefault((s, dynamics, data_mode), {}).setdefault(key, {}).setdefault(
                    summaries.epoch_step(spawn), []).append(r[key])
    return {c: {k: _spread(v) for k, v in d.items()} for c, d in by_condition.items()}


def machine_series(preset: presets.Preset, collected: collect.Collected,
                   source: str) -> dict[str, dict[int, tuple[float, float, float]]]:
    by_key: dict[str, dict[int, list[float]]] = {}
    for seed in preset.seed_list():
        for epoch, row in (collected.machines.get(plan.phase1_name(source, seed)) or {}).items():
            for key in ("robust", "benign"):
                by_key.setdefault(key, {}).setdefault(summaries.epoch_step(epoch), []).append(
                    row[f"{key}_accuracy"])
    return {k: _spread(v) for k, v in by_key.items()}


def _margin(title: str, tag: str) -> layout_pb2.Chart:
    return layout_pb2.Chart(title=title, margin=layout_pb2.MarginChartContent(series=[
        layout_pb2.MarginChartContent.Series(value=tag, lower=f"spread/{tag}/min",
                                             upper=f"spread/{tag}/max")]))


def _lines(title: str, tag: str) -> layout_pb2.Chart:
    return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[f"^{tag}$"]))


def layout() -> layout_pb2.Layout:
    """The Custom Scalars layout: each chart one tag, one line per condition (run), and the same
    tag as a margin chart (mean with the seeds' min–max)."""
    return layout_pb2.Layout(category=[
        layout_pb2.Category(title="C1: standard vs adversarial kernels (phase 1, mean over seeds)", chart=[
            _lines("distance between runs' kernels: standard vs adversarial against the matched floors",
                   DISTANCE),
            _margin("distance between runs' kernels, seeds' range", DISTANCE),
            _lines("kernel velocity (distance per epoch)", "kernel/velocity"),
            _lines("kernel distance to the initial kernel", "kernel/distance_to_init"),
            _lines("kernel distance to the final kernel", "kernel/distance_to_final"),
            _lines("kernel-target alignment", "kernel/target_alignment"),
            _lines("effective rank", "kernel/effective_rank")]),
        layout_pb2.Category(title="C2, C3: phase 2 against the spawn epoch (x: spawn epoch in "
                                  "milli-epochs)", chart=[
            _lines("robust accuracy (worst case), one line per condition", ROBUST),
            _margin("robust accuracy, seeds' range", ROBUST),
            _lines("benign accuracy", BENIGN),
            _margin("benign accuracy, seeds' range", BENIGN)]),
        layout_pb2.Category(title="Phase-1 training (mean over seeds)", chart=[
            _lines("training loss", "train/loss"),
            _margin("training loss, seeds' range", "train/loss")]),
    ])


def _png_image(tag: str, path: str, description: str) -> None:
    image = tf.image.decode_png(rundir.read_bytes(path), channels=3)
    tf.summary.image(tag, image[None], step=0, description=description)


def write(preset: presets.Preset, sweep_dir: str, collected: collect.Collected,
          figure_paths: Sequence[tuple[str, str]] = (), heat_map_path: str | None = None) -> str:
    """Rewrites ``sweep_dir/tensorboard`` from ``collected`` (`tf_ntk.study.collect.Collected`).

    Args:
      figure_paths: [(title, png path)] of the report's figures, logged as images.
      heat_map_path: PNG of the standard and adversarial kernels on one colour scale (or None).
    Returns:
      the log directory.
    """
    root = os.path.join(sweep_dir, BOARD_DIR)
    rundir.rmtree(root)

    def run(name: str) -> tf.summary.SummaryWriter:
        return tf.summary.create_file_writer(os.path.join(root, name))

    with run(".").as_default():
        tf.summary.experimental.write_raw_pb(custom_scalars.pb(layout()).SerializeToString(), step=0)
        hparams_api.hparams_config(
            hparams=[hparams_api.HParam(name, display_name=shown) for name, shown in HPARAMS],
            metrics=[hparams_api.Metric(tag, display_name=shown) for tag, shown in HPARAMS_METRICS])
    for source in plan.phase1_sources(preset):
        writer = run(f"phase1/{source}")
        with writer.as_default():
            for tag, series in phase1_series(preset, collected, sweep_dir, source).items():
                _write_series(tag, series)
        writer.close()
    for kind, series in distance_series(preset, collected).items():
        writer = run(f"distance/{kind}")
        with writer.as_default():
            _write_series(DISTANCE, series)
        writer.close()
    last = summaries.epoch_step(max(preset.spawn_epochs)) if preset.spawn_epochs else 0
    for (source, dynamics, data_mode), by_key in sorted(phase2_series(preset, collected).items()):
        name = f"phase2/{source}-{dynamics}-{data_mode}"
        writer = run(name)
        with writer.as_default():
            _write_series(ROBUST, by_key["robust"])
            _write_series(BENIGN, by_key["benign"])
            hparams_api.hparams({"1_spawn_source": source,
                                 "2_spawn_epoch": max(by_key["robust"]) / summaries.EPOCH_SCALE
                                 if by_key["robust"] else last / summaries.EPOCH_SCALE,
                                 "3_dynamics": dynamics, "4_data": data_mode,
                                 "5_seeds": _seeds_text(preset)}, trial_id=name)
        writer.close()
    for source in presets.SOURCES:
        machine = machine_series(preset, collected, source)
        if machine:
            writer = run(f"kernel_machine/{source}")
            with writer.as_default():
                _write_series(ROBUST, machine["robust"])
                _write_series(BENIGN, machine["benign"])
            writer.close()
    images = [(title, path) for title, path in figure_paths]
    if heat_map_path:
        images.append(("standard and adversarial kernels on one colour scale", heat_map_path))
    if images:
        writer = run("figures")
        with writer.as_default():
            for title, path in images:
                tag = "figures/" + os.path.basename(path)[:-4]
                _png_image(tag, path, title)
        writer.close()
    return root


def command(sweep_dir: str) -> str:
    """The shell command that opens the study's log directory with every image kept."""
    return summaries.tensorboard_command(os.path.join(sweep_dir, BOARD_DIR))
