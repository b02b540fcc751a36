"""The study's figures (matplotlib, Agg): kernel distances, standard-vs-adversarial distance against
the matched noise floors, phase-2 accuracy against the spawn epoch, alignment and effective rank,
eigen-images, the kernel machine against the spawn epoch, the kernel velocity. Lines are means over
seeds, bands ± one sample standard deviation. Each figure is written as PNG (fixed size, `SIZE` inches at `DPI`) and PDF
through tf.io.gfile."""

import io
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tf_ntk import rundir
from tf_ntk import study

DPI = 100
SIZE = (10.0, 4.0)  # inches: 1000 x 400 pixels
COLORS = {"standard": "tab:blue", "adversarial": "tab:red", "flip": "tab:green"}
STYLES = {"clean": "-", "adv": "--"}


def _save(fig, path_png):
    for path, fmt in ((path_png, "png"), (path_png[:-4] + ".pdf", "pdf")):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=DPI)
        rundir.write_bytes(path, buf.getvalue())
    plt.close(fig)


def _epoch_axis(ax, preset, label="epoch"):
    """Symmetric-log x axis: linear below the first fractional spawn, so 0 and 0.125 both show."""
    epochs = preset.save_epochs()
    positive = [e for e in epochs if e > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ax.set_xlim(0, max(epochs) * 1.15)
    if len(epochs) <= 12:
        ax.set_xticks(epochs)
        ax.set_xticklabels([f"{e:g}" for e in epochs], fontsize=7)
    ax.set_xlabel(label)
    ax.grid(True, alpha=0.3)


def _band(ax, epochs, series, color, label, style="-"):
    """Mean over seeds with a ± std band; ``series`` (seeds, epochs), NaN where missing."""
    values = np.asarray(series, np.float64)
    if values.size == 0 or np.all(np.isnan(values)):
        return
    with warnings.catch_warnings():  # epochs no seed measured: NaN, not drawn
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
    std = np.nan_to_num(std)
    ax.plot(epochs, mean, style, color=color, marker="o", markersize=3, label=label)
    ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def _kernel_series(preset, collected, source, metric):
    epochs = [float(e) for e in preset.save_epochs() if float(e) in
              {float(x) for x in preset.kernel_epochs}]
    series = []
    for s in preset.seed_list():
        rows = {r["epoch"]: r for r in collected.kernels.get(study.phase1_name(source, s), [])}
        series.append([rows[e][metric] if e in rows and metric in rows[e] else np.nan for e in epochs])
    return epochs, series


def _kernel_panels(preset, collected, path, panels, title, log=False):
    """One panel per (metric, y label, panel title) of the phase-1 kernel metrics, standard vs
    adversarial (and flip) training."""
    fig, axes = plt.subplots(1, len(panels), figsize=SIZE, squeeze=False)
    for ax, (metric, ylabel, panel_title) in zip(axes[0], panels):
        if log:
            ax.set_yscale("log")
        for source in study.phase1_sources(preset):
            epochs, series = _kernel_series(preset, collected, source, metric)
            _band(ax, epochs, series, COLORS[source], f"{source} training")
        _epoch_axis(ax, preset, "phase-1 epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def kernel_distance(preset, collected, path):
    distance = "kernel distance 1 − cos(K, K')"
    _kernel_panels(preset, collected, path,
                   [("distance_to_init", distance, "distance to the initial kernel"),
                    ("distance_to_final", distance, "distance to the final kernel")],
                   "Fig. 1: how far the kernel moves (mean ± sd over seeds)")


def standard_vs_adversarial(preset, collected, path):
    fig, ax = plt.subplots(figsize=SIZE)
    epochs = [float(e) for e in preset.kernel_epochs]
    seeds = preset.seed_list()
    pairs = {"standard vs adversarial (same initialisation)": ("black", "-", [
        (study.phase1_name("standard", s), study.phase1_name("adversarial", s)) for s in seeds])}
    if preset.matched_floor:
        for source in study.SOURCES:
            pairs[f"matched floor, {source} (same initialisation, other data order)"] = (
                COLORS[source], "--", [(study.phase1_name(source, s), study.replica_name(source, s))
                                       for s in seeds])
    if preset.flip:
        pairs[f"flip (adversarial from epoch {preset.flip_epoch()}) vs adversarial"] = (
            COLORS["flip"], "-.", [(study.phase1_name(study.FLIP, s),
                                    study.phase1_name("adversarial", s)) for s in seeds])
    for label, (color, style, runs) in pairs.items():
        series = []
        for a, b in runs:
            d = collected.comparisons.get((a, b)) or collected.comparisons.get((b, a)) or {}
            series.append([d.get(e, np.nan) for e in epochs])
        _band(ax, epochs, series, color, label, style)
    _epoch_axis(ax, preset, "phase-1 epoch")
    ax.set_ylabel("kernel distance 1 − cos(K, K')")
    ax.set_title("Fig. 2: distance between the standard and the adversarial kernel vs the matched "
                 "noise floors (C1a)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _accuracy_axis(ax, values):
    """y around the values shown (robust accuracies are often ≤ 0.2, benign ones ≥ 0.8), within
    [0, 1]."""
    values = [v for v in values if v is not None and v == v]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = 0.1 * (hi - lo) + 0.02
    ax.set_ylim(max(-0.01, lo - pad), min(1.01, hi + pad))


def phase2_vs_spawn(preset, collected, path):
    rows = len(preset.phase2_dynamics)
    fig, axes = plt.subplots(rows, 2, figsize=(SIZE[0], SIZE[1] * rows), squeeze=False)
    spawns = [float(e) for e in preset.spawn_epochs]
    for row, dynamics in enumerate(preset.phase2_dynamics):
        for col, metric in enumerate(("robust", "benign")):
            ax = axes[row][col]
            shown = []
            for source in study.phase1_sources(preset):
                for dyn, data_mode in preset.phase2_conditions():
                    if dyn != dynamics or (source == study.FLIP and (dyn, data_mode) != ("centered", "clean")):
                        continue
                    series = []
                    for s in preset.seed_list():
                        series.append([
                            (collected.evals.get(study.child_name(dynamics, data_mode, source, s, e))
                             or {}).get(metric, np.nan) for e in spawns])
                    shown += [v for r in series for v in r]
                    _band(ax, spawns, series, COLORS[source],
                          f"{data_mode} phase 2, {source} spawn", STYLES[data_mode])
            reference = [(collected.evals.get(study.phase1_name("adversarial", s)) or {}).get(metric)
                         for s in preset.seed_list()]
            reference = [v for v in reference if v is not None]
            if reference:
                ax.axhline(np.mean(reference), color="gray", linestyle=":",
                           label="phase-1 adversarial training (final)")
            _epoch_axis(ax, preset, "spawn epoch (phase 1)")
            _accuracy_axis(ax, shown + reference)
            ax.set_ylabel(f"{metric} accuracy" + (f" (ε = {preset.eps:.3g}, worst case)"
                                                  if metric == "robust" else ""))
            ax.set_title(f"{dynamics} phase 2: {metric} accuracy")
            ax.legend(fontsize=7)
    fig.suptitle("Fig. 3: phase-2 accuracy against the spawn epoch (mean ± sd over seeds)\n"
                 "spawn 0 is the initialisation, shared by both sources")
    fig.tight_layout()
    _save(fig, path)


def alignment_and_rank(preset, collected, path):
    _kernel_panels(preset, collected, path,
                   [("target_alignment", "kernel-target alignment", "alignment with the labels"),
                    ("effective_rank", "effective rank", "effective rank of the spectrum")],
                   "Fig. 4: kernel-target alignment and effective rank (mean ± sd over seeds)")


def _eigen_label(name, eigenvalue, cosine, reached):
    """``eig0+`` → "eigenvector 0, + / λ 1.2e+03 / cos +0.81"; a failed search says so."""
    head = "w = K⁻¹y" if name == "w" else f"eigvec {name[3:-1]}, {name[-1]}"
    lam = "" if eigenvalue is None or not np.isfinite(eigenvalue) else f"λ {eigenvalue:.3g}\n"
    return f"{head}\n{lam}cos {cosine:+.2f}{'' if reached else ' NOT REACHED'}"


def eigen_image_panel(rows, title, figsize=None):
    """A figure of eigen-images, one row per (row label, arrays of `tf_ntk.eigenimages` results as
    saved by tf-ntk-visualize-features: images, names, cosines, eigenvalues, reached), each image
    labelled with its eigenvector index and sign, eigenvalue and achieved cosine (red when the search
    did not reach the sign sought). ``figsize`` in inches (default: 2.6 inches per row)."""
    columns = max(len(arrays["images"]) for _, arrays in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=figsize or (SIZE[0], 2.6 * len(rows)),
                             squeeze=False)
    for row, (label, arrays) in enumerate(rows):
        n = len(arrays["images"])
        eigenvalues = arrays.get("eigenvalues", np.full(n, np.nan))
        reached = arrays.get("reached", np.ones(n, bool))
        for col in range(columns):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= n:
                ax.axis("off")
                continue
            image = arrays["images"][col]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_title(_eigen_label(str(arrays["names"][col]), float(eigenvalues[col]),
                                      float(arrays["cosines"][col]), bool(reached[col])),
                         fontsize=7, color="black" if reached[col] else "red")
            if col == 0:
                ax.set_ylabel(label)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def png_bytes(fig):
    """The figure as PNG bytes (then closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def velocity(preset, collected, path):
    _kernel_panels(preset, collected, path,
                   [("velocity", "kernel velocity (distance per epoch)", "velocity of the kernel")],
                   "Fig. 7: kernel velocity d(K_t, K_t+dt) / dt (mean ± sd over seeds, log scale)\n"
                   "phase 1 is lazy once it has fallen below 10% of its peak", log=True)


def eigen_images(preset, collected, path):
    first = preset.seed_list()[0]
    loaded = {source: rundir.read_npz(collected.features[study.phase1_name(source, first)])
              for source in study.SOURCES if study.phase1_name(source, first) in collected.features}
    if not loaded:
        return False
    rows = [(f"{source}\nlogit {int(arrays['logit'])}", arrays) for source, arrays in loaded.items()]
    fig = eigen_image_panel(rows, f"Fig. 5: eigen-images of the final (epoch {preset.phase1_epochs}) "
                                  f"kernels, seed {first}", figsize=SIZE)
    _save(fig, path)
    return True


def kernel_machine(preset, collected, path):
    """Kernel-machine accuracy against the spawn epoch, standard vs adversarial spawns, next to the
    finite-time centered phase-2 curve on clean data from the same spawns (when the study has it)."""
    epochs = list(preset.machine_epochs())
    if not collected.machines or not epochs:
        return False
    fig, axes = plt.subplots(1, 2, figsize=SIZE)
    for ax, metric in zip(axes, ("robust", "benign")):
        for source in study.SOURCES:
            series = [[(collected.machines.get(study.phase1_name(source, s)) or {}).get(e, {}).get(
                f"{metric}_accuracy", np.nan) for e in epochs] for s in preset.seed_list()]
            _band(ax, epochs, series, COLORS[source], f"kernel machine, {source} spawn")
            if "centered" in preset.phase2_dynamics and "clean" in preset.phase2_data:
                series = [[(collected.evals.get(study.child_name("centered", "clean", source, s, e))
                            or {}).get(metric, np.nan) for e in epochs] for s in preset.seed_list()]
                _band(ax, epochs, series, COLORS[source],
                      f"centered phase 2 ({preset.phase2_epochs} epochs, clean), {source} spawn", "--")
        _epoch_axis(ax, preset, "spawn epoch (phase 1)")
        _accuracy_axis(ax, [v for line in ax.get_lines() for v in line.get_ydata()])
        ax.set_ylabel(f"{metric} accuracy" + (f" (ε = {preset.eps:.3g}, worst case)"
                                              if metric == "robust" else ""))
        ax.set_title(f"{metric} accuracy")
        ax.legend(fontsize=7)
    fig.suptitle("Fig. 6: the kernel machine k(x, X)(K + λI)⁻¹Y of each spawn vs finite-time centered "
                 "training (mean ± sd over seeds)")
    fig.tight_layout()
    _save(fig, path)
    return True


FIGURES = (
    ("Fig. 1: kernel distance to init and to the final kernel", "fig1_kernel_distance.png",
     kernel_distance),
    ("Fig. 2: standard vs adversarial kernel distance, matched noise floors",
     "fig2_standard_vs_adversarial.png", standard_vs_adversarial),
    ("Fig. 3: phase-2 robust and benign accuracy vs spawn epoch", "fig3_phase2_vs_spawn.png",
     phase2_vs_spawn),
    ("Fig. 4: target alignment and effective rank", "fig4_alignment_rank.png", alignment_and_rank),
    ("Fig. 5: eigen-images of the final kernels", "fig5_eigen_images.png", eigen_images),
    ("Fig. 6: kernel-machine robust and benign accuracy vs spawn epoch, next to centered phase 2",
     "fig6_kernel_machine.png", kernel_machine),
    ("Fig. 7: kernel velocity during phase 1", "fig7_velocity.png", velocity),
)


def draw_all(preset, collected, directory):
    """Draws every figure into ``directory``; returns [(title, png path)] of those drawn."""
    drawn = []
    for title, name, draw in FIGURES:
        path = os.path.join(directory, name)
        if draw(preset, collected, path) is not False:
            drawn.append((title, path))
    return drawn
