"""The study's figures (matplotlib, Agg): kernel distances, standard-vs-adversarial distance against
the matched noise floors, phase-2 accuracy against the spawn epoch, alignment and effective rank,
eigen-images, the kernel machine against the spawn epoch, the kernel velocity. Lines are means over
seeds, bands ± one sample standard deviation. Each figure is written as PNG (fixed size, `SIZE` inches at `DPI`) and PDF
through tf.io.gfile."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import io
import os
from typing import Any
import warnings

import matplotlib

from tf_ntk.study import collect

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tf_ntk import rundir
from tf_ntk.study import claims
from tf_ntk.study import plan
from tf_ntk.study import presets

DPI = 100
SIZE = (10.0, 4.0)  # inches: 1000 x 400 pixels
COLORS = {"standard": "tab:blue", "adversarial": "tab:red", "flip": "tab:green"}
STYLES = {"clean": "-", "adv": "--"}


def _primary(verdicts: dict[str, tuple[str, list[claims.Test], int]] | None,
             claim: str) -> tuple[str, claims.Test] | None:
    """(verdict, the primary `tf_ntk.study.claims.Test`) of ``claim`` in ``verdicts``, or None."""
    if not verdicts or claim not in verdicts:
        return None
    verdict, tests, _ = verdicts[claim]
    primary = next((t for t in tests if t.primary), None)
    return None if primary is None or primary.interval is None else (verdict, primary)


def _annotate(ax: plt.Axes, verdicts: dict[str, tuple[str, list[claims.Test], int]] | None, claims: Sequence[str],
              loc: tuple[float, float] = (0.01, 0.98)) -> None:
    """Writes each claim's primary endpoint on ``ax`` (two lines per claim: its mean, t-interval and
    bootstrap interval; its margin and verdict), and raises the top of a linear y axis to make room."""
    lines = []
    for claim in claims:
        found = _primary(verdicts, claim)
        if found is None:
            continue
        verdict, t = found
        interval: Any = t.interval  # not None: _primary checked it
        text = f"{claim} primary: {interval.mean:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]"
        if t.bootstrap is not None:
            text += f", bootstrap [{t.bootstrap.low:+.3f}, {t.bootstrap.high:+.3f}]"
        lines += [text, f"    margin {t.margin:g} → {verdict}"]
    if not lines:
        return
    if ax.get_yscale() == "linear" and loc[1] > 0.5:
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.09 * len(lines) * (hi - lo))
    ax.text(*loc, "\n".join(lines), transform=ax.transAxes, va="top" if loc[1] > 0.5 else "bottom",
            ha="left", fontsize=7,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9, "edgecolor": "0.6"})


def _save(fig: plt.Figure, path_png: str) -> None:
    for path, fmt in ((path_png, "png"), (path_png[:-4] + ".pdf", "pdf")):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=DPI)
        rundir.write_bytes(path, buf.getvalue())
    plt.close(fig)


def _epoch_axis(ax: plt.Axes, preset: presets.Preset, label: str = "epoch") -> None:
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


def _band(ax: plt.Axes, epochs: Sequence[float], series: Sequence[Sequence[float]], color: str, label: str,
          style: str = "-") -> None:
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


def _kernel_series(preset: presets.Preset, collected: collect.Collected, source: str,
                   metric: str) -> tuple[list[float], list[list[float]]]:
    epochs = [float(e) for e in preset.save_epochs() if float(e) in
              {float(x) for x in preset.kernel_epochs}]
    series = []
    for s in preset.seed_list():
        rows = {r["epoch"]: r for r in collected.kernels.get(plan.phase1_name(source, s), [])}
        series.append([rows[e][metric] if e in rows and metric in rows[e] else np.nan for e in epochs])
    return epochs, series


def _kernel_panels(preset: presets.Preset, collected: collect.Collected, path: str,
                   panels: Sequence[tuple[str, str, str]], title: str, log: bool = False) -> None:
    """One panel per (metric, y label, panel title) of the phase-1 kernel metrics, standard vs
    adversarial (and flip) training."""
    fig, axes = plt.subplots(1, len(panels), figsize=SIZE, squeeze=False)
    for ax, (metric, ylabel, panel_title) in zip(axes[0], panels):
        if log:
            ax.set_yscale("log")
        for source in plan.phase1_sources(preset):
            epochs, series = _kernel_series(preset, collected, source, metric)
            _band(ax, epochs, series, COLORS[source], f"{source} training")
        _epoch_axis(ax, preset, "phase-1 epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def kernel_distance(preset: presets.Preset, collected: collect.Collected, path: str) -> None:
    distance = "kernel distance 1 − cos(K, K')"
    _kernel_panels(preset, collected, path,
                   [("distance_to_init", distance, "distance to the initial kernel"),
                    ("distance_to_final", distance, "distance to the final kernel")],
                   "Fig. 1: how far the kernel moves (mean ± sd over seeds)")


def standard_vs_adversarial(preset: presets.Preset, collected: collect.Collected, path: str,
                            verdicts: dict[str, tuple[str, list[claims.Test], int]] | None = None) -> None:
    fig, ax = plt.subplots(figsize=SIZE)
    epochs = [float(e) for e in preset.kernel_epochs]
    seeds = preset.seed_list()
    pairs = {"standard vs adversarial (same initialisation)": ("black", "-", [
        (plan.phase1_name("standard", s), plan.phase1_name("adversarial", s)) for s in seeds])}
    if preset.matched_floor:
        for source in presets.SOURCES:
            pairs[f"matched floor, {source} (same initialisation, other data order)"] = (
                COLORS[source], "--", [(plan.phase1_name(source, s), plan.replica_name(source, s))
                                       for s in seeds])
    if preset.flip:
        pairs[f"flip (adversarial from epoch {preset.flip_epoch()}) vs adversarial"] = (
            COLORS["flip"], "-.", [(plan.phase1_name(presets.FLIP, s),
                                    plan.phase1_name("adversarial", s)) for s in seeds])
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
    _annotate(ax, verdicts, ("C1a",))
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    _save(fig, path)


def _accuracy_axis(ax: plt.Axes, values: Sequence[float]) -> None:
    """y around the values shown (robust accuracies are often ≤ 0.2, benign ones ≥ 0.8), within
    [0, 1]."""
    values = [v for v in values if v is not None and v == v]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = 0.1 * (hi - lo) + 0.02
    ax.set_ylim(max(-0.01, lo - pad), min(1.01, hi + pad))


def phase2_vs_spawn(preset: presets.Preset, collected: collect.Collected, path: str,
                    verdicts: dict[str, tuple[str, list[claims.Test], int]] | None = None) -> None:
    rows = len(preset.phase2_dynamics)
    fig, axes = plt.subplots(rows, 2, figsize=(SIZE[0], SIZE[1] * rows), squeeze=False)
    spawns = [float(e) for e in preset.spawn_epochs]
    for row, dynamics in enumerate(preset.phase2_dynamics):
        for col, metric in enumerate(("robust", "benign")):
            ax = axes[row][col]
            shown = []
            for source in plan.phase1_sources(preset):
                for dyn, data_mode in preset.phase2_conditions():
                    if dyn != dynamics or (source == presets.FLIP and (dyn, data_mode) != ("centered", "clean")):
                        continue
                    series = []
                    for s in preset.seed_list():
                        series.append([
                            (collected.evals.get(plan.child_name(dynamics, data_mode, source, s, e))
                             or {}).get(metric, np.nan) for e in spawns])
                    shown += [v for r in series for v in r]
                    _band(ax, spawns, series, COLORS[source],
                          f"{data_mode} phase 2, {source} spawn", STYLES[data_mode])
            reference: list[Any] = [(collected.evals.get(plan.phase1_name("adversarial", s)) or {}).get(metric)
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
            if dynamics == "centered" and metric == "robust":
                _annotate(ax, verdicts, ("C2", "C3"))
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("Fig. 3: phase-2 accuracy against the spawn epoch (mean ± sd over seeds)\n"
                 "spawn 0 is the initialisation, shared by both sources")
    fig.tight_layout()
    _save(fig, path)


def alignment_and_rank(preset: presets.Preset, collected: collect.Collected, path: str) -> None:
    _kernel_panels(preset, collected, path,
                   [("target_alignment", "kernel-target alignment", "alignment with the labels"),
                    ("effective_rank", "effective rank", "effective rank of the spectrum")],
                   "Fig. 4: kernel-target alignment and effective rank (mean ± sd over seeds)")


def _eigen_label(name: str, eigenvalue: float | None, cosine: float, reached: bool, readout: float | None = None,
                 other: float | None = None) -> str:
    """``eig0+`` → "eigenvector 0, + / λ 1.2e+03 / cos +0.81"; a failed search says so, with the
    output layer's and the other layers' shares of its cosine (`tf_ntk.ntk.eigenimages.cosine_parts`)."""
    head = "w = K⁻¹y" if name == "w" else f"eigvec {name[3:-1]}, {name[-1]}"
    lam = "" if eigenvalue is None or not np.isfinite(eigenvalue) else f"λ {eigenvalue:.3g}\n"
    text = f"{head}\n{lam}cos {cosine:+.2f}{'' if reached else ' NOT REACHED'}"
    if not reached and readout is not None:
        text += f"\n(output layer {readout:+.2f}, rest {other:+.2f})"
    return text


def eigen_image_panel(rows: Sequence[tuple[str, Mapping[str, np.ndarray]]], title: str,
                      figsize: tuple[float, float] | None = None) -> plt.Figure:
    """A figure of eigen-images, one row per (row label, arrays of `tf_ntk.ntk.eigenimages` results as
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
            shown = ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0,
                              vmax=1)
            parts = ((float(arrays["readout"][col]), float(arrays["other"][col]))
                     if "readout" in arrays else (None, None))
            ax.set_title(_eigen_label(str(arrays["names"][col]), float(eigenvalues[col]),
                                      float(arrays["cosines"][col]), bool(reached[col]), *parts),
                         fontsize=7, color="black" if reached[col] else "red")
            if col == 0:
                ax.set_ylabel(label)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.91, 1))
    fig.colorbar(shown, cax=fig.add_axes((0.925, 0.12, 0.012, 0.7)), label="pixel value")
    return fig


def png_bytes(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes (then closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def velocity(preset: presets.Preset, collected: collect.Collected, path: str,
             verdicts: dict[str, tuple[str, list[claims.Test], int]] | None = None) -> None:
    """Kernel velocity (log scale) and the C1b measure: the share of the way to the final kernel
    covered, 1 − d(K_e, K_T) / d(K_0, K_T), with the primary's epoch (10% of phase 1) and margin."""
    fig, axes = plt.subplots(1, 2, figsize=SIZE)
    final = float(preset.phase1_epochs)
    for source in plan.phase1_sources(preset):
        epochs, series = _kernel_series(preset, collected, source, "velocity")
        _band(axes[0], epochs, series, COLORS[source], f"{source} training")
        covered = []
        for s in preset.seed_list():
            run = plan.phase1_name(source, s)
            covered.append([np.nan if claims.remaining(collected, run, e, final) is None
                            else 1.0 - claims.remaining(collected, run, e, final)  # type: ignore[operator]
                            for e in epochs])  # (not None: checked just before)
        _band(axes[1], epochs, covered, COLORS[source], f"{source} training")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("kernel velocity (distance per epoch)")
    axes[0].set_title("velocity; lazy once below 10% of its peak")
    early = preset.early_epoch()
    axes[1].axvline(early, color="gray", linestyle=":",
                    label=f"epoch {early:g} = 10% of phase 1 ({preset.optimizer_steps(early):g} steps)")
    axes[1].axhline(claims.PRIMARY["C1b"].margin, color="gray", linestyle="--", label="C1b margin")
    axes[1].set_ylim(-0.05, 1.05)  # raised by the annotation
    axes[1].set_ylabel("share of the way to the final kernel covered")
    axes[1].set_title("C1b: 1 − d(K_e, K_T) / d(K_0, K_T)")
    for ax in axes:
        _epoch_axis(ax, preset, "phase-1 epoch")
    _annotate(axes[1], verdicts, ("C1b",), loc=(0.01, 0.98))
    axes[0].legend(fontsize=7, loc="best")
    axes[1].legend(fontsize=6, loc="lower right")
    fig.suptitle("Fig. 7: how fast the kernel settles (mean ± sd over seeds)")
    fig.tight_layout()
    _save(fig, path)


def _final_kernels(preset: presets.Preset, collected: collect.Collected) -> dict[str, dict[str, np.ndarray]]:
    """{source: eigen_images.npz arrays} of the first seed's final kernels (the features jobs)."""
    first = preset.seed_list()[0]
    return {source: rundir.read_npz(collected.features[plan.phase1_name(source, first)])
            for source in presets.SOURCES if plan.phase1_name(source, first) in collected.features}


def heat_maps(preset: presets.Preset, collected: collect.Collected, path: str) -> bool:
    """The standard and the adversarial final kernel (first seed, the logit of the eigen-images) on
    one colour scale, with a colour bar; examples class by class."""
    loaded = _final_kernels(preset, collected)
    if not loaded:
        return False
    kernels = {source: np.asarray(a["kernel"], np.float64) for source, a in loaded.items()}
    lo = min(float(k.min()) for k in kernels.values())
    hi = max(float(k.max()) for k in kernels.values())
    fig, axes = plt.subplots(1, len(kernels), figsize=SIZE, squeeze=False)
    for ax, (source, kernel) in zip(axes[0], kernels.items()):
        shown = ax.imshow(kernel, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
        labels = np.asarray(loaded[source]["labels"])
        for cut in [i - 0.5 for i in range(1, len(labels)) if labels[i] != labels[i - 1]]:
            ax.axhline(cut, color="white", linewidth=0.5)
            ax.axvline(cut, color="white", linewidth=0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{source} training, logit {int(loaded[source]['logit'])}\n"
                     f"max {kernel.max():.3g}, trace {np.trace(kernel):.3g}", fontsize=9)
    fig.colorbar(shown, ax=axes[0].tolist(), label="k(x, x') (one scale for both)")
    fig.suptitle(f"Fig. 8: the final (epoch {preset.phase1_epochs}) kernels of seed "
                 f"{preset.seed_list()[0]} on the probe images, class by class")
    _save(fig, path)
    return True


def scree(preset: presets.Preset, collected: collect.Collected, path: str) -> bool:
    """Normalised spectra λ_i / Σλ of the final kernels (first seed), log scale: how concentrated
    each kernel is, independent of its scale."""
    loaded = _final_kernels(preset, collected)
    if not loaded:
        return False
    fig, ax = plt.subplots(figsize=SIZE)
    for source, arrays in loaded.items():
        lam = np.clip(np.linalg.eigvalsh(np.asarray(arrays["kernel"], np.float64))[::-1], 0, None)
        share = lam / lam.sum()
        ax.plot(np.arange(1, len(share) + 1), share, "o-", markersize=2, color=COLORS[source],
                label=f"{source} training (top eigenvalue {100 * share[0]:.0f}% of the trace)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5 * min(float(np.min(line.get_ydata()[line.get_ydata() > 0]))  # type: ignore[index, operator]
                                 for line in ax.get_lines()))  # (get_ydata: an array here)
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel("λ_i / Σ λ")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Fig. 9: normalised spectrum (scree) of the final kernels, seed {preset.seed_list()[0]}")
    fig.tight_layout()
    _save(fig, path)
    return True


def eigen_images(preset: presets.Preset, collected: collect.Collected, path: str) -> bool:
    first = preset.seed_list()[0]
    loaded = {source: rundir.read_npz(collected.features[plan.phase1_name(source, first)])
              for source in presets.SOURCES if plan.phase1_name(source, first) in collected.features}
    if not loaded:
        return False
    rows = [(f"{source}\nlogit {int(arrays['logit'])}", arrays) for source, arrays in loaded.items()]
    fig = eigen_image_panel(rows, f"Fig. 5: eigen-images of the final (epoch {preset.phase1_epochs}) "
                                  f"kernels, seed {first}", figsize=SIZE)
    _save(fig, path)
    return True


def kernel_machine(preset: presets.Preset, collected: collect.Collected, path: str) -> bool:
    """Kernel-machine accuracy against the spawn epoch, standard vs adversarial spawns, next to the
    finite-time centered phase-2 curve on clean data from the same spawns (when the study has it)."""
    epochs = list(preset.machine_epochs())
    if not collected.machines or not epochs:
        return False
    fig, axes = plt.subplots(1, 2, figsize=SIZE)
    for ax, metric in zip(axes, ("robust", "benign")):
        for source in presets.SOURCES:
            series = [[(collected.machines.get(plan.phase1_name(source, s)) or {}).get(e, {}).get(
                f"{metric}_accuracy", np.nan) for e in epochs] for s in preset.seed_list()]
            _band(ax, epochs, series, COLORS[source], f"kernel machine, {source} spawn")
            if "centered" in preset.phase2_dynamics and "clean" in preset.phase2_data:
                series = [[(collected.evals.get(plan.child_name("centered", "clean", source, s, e))
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
    ("Fig. 7: kernel velocity and the C1b measure during phase 1", "fig7_velocity.png", velocity),
    ("Fig. 8: heat maps of the final kernels on one colour scale", "fig8_heat_maps.png", heat_maps),
    ("Fig. 9: normalised spectra of the final kernels", "fig9_scree.png", scree),
)

# Figures that annotate the claims they illustrate with the primary endpoint's numbers.
ANNOTATED = {standard_vs_adversarial, phase2_vs_spawn, velocity}


def draw_all(preset: presets.Preset, collected: collect.Collected, directory: str,
             verdicts: dict[str, tuple[str, list[claims.Test], int]] | None = None) -> list[tuple[str, str]]:
    """Draws every figure into ``directory``; ``verdicts`` (`tf_ntk.study.claims.claims`) annotate the
    claims' figures. Returns [(title, png path)] of those drawn."""
    drawn = []
    for title, name, draw in FIGURES:
        path = os.path.join(directory, name)
        done = draw(preset, collected, path, verdicts) if draw in ANNOTATED else draw(preset, collected, path)
        if done is not False:
            drawn.append((title, path))
    return drawn
