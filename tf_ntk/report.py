"""The study's report: reads what the sweep's jobs wrote (evaluation.json, kernel CSVs, eigen-images),
computes the claims' statistics over seeds and writes results.csv and report.md.

Numbers: every robust accuracy is the worst case per example over the protocol PGD-100 and the strong
ensemble ("robust"), with the protocol number beside it. A claim rests on paired differences over
seeds (the same seed's runs), with Student-t 95% intervals (`tf_ntk.stats`):

- C1a: kernel distance between the standard and the adversarial run of a seed, minus the larger of
  the two seed-to-seed distances (standard seed i vs i+1, adversarial seed i vs i+1), at the last
  epoch; C1b: the share of the kernel's path still ahead at the early epoch e (the kernel epoch
  nearest 10% of phase 1), d(k_e, k_T) / d(k_0, k_T), of the standard run minus that of the
  adversarial run: > 0 when the adversarial kernel is the closer to its final kernel.
- C2: robust accuracy of clean phase 2 from the adversarial spawn minus from the standard spawn, at
  every spawn epoch > 0 (at epoch 0 both spawns are the same random initialisation).
- C3: the same for adversarial phase 2, and adversarial phase 2 from the last adversarial spawn minus
  phase-1 adversarial training, which holds when its interval lies above −0.10 (within 10 points).
The kernel machines (tf-ntk-kernel-machine: the infinite-time centered predictor of each spawn) are
reported beside the claims, in a table and Fig. 6, not tested by them.
A claim holds when each of its tests holds, does not hold at this scale when any test's interval lies
on the wrong side, and is inconclusive otherwise. The verdicts come from these rules alone.
"""

import csv
import dataclasses
import io
import json
import os

import numpy as np
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalars
import tensorflow as tf

from tf_ntk import figures
from tf_ntk import rundir
from tf_ntk import stats
from tf_ntk import summaries
from tf_ntk import study

C3_MARGIN = -0.10  # phase-2 AT on a fixed kernel "reaches high robust accuracy": within 10 points


def _read_text(path):
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def _read_csv(path):
    if not tf.io.gfile.exists(path):
        return []
    rows = list(csv.DictReader(io.StringIO(_read_text(path))))
    for row in rows:
        for key, value in row.items():
            if key != "run":
                row[key] = float(value) if value not in ("", None) else float("nan")
    return rows


@dataclasses.dataclass
class Collected:
    """Everything the sweep measured, keyed by run name.

    Attributes:
      evals: {run: {"benign", "robust", "protocol", "strong", "examples", "path"}}.
      kernels: {phase-1 run: [row of kernel_dynamics.csv, by epoch]}.
      comparisons: {(run a, run b): {epoch: distance}}.
      features: {phase-1 run: eigen_images.npz path}.
      missing: outputs not (yet) there.
      machines: {phase-1 run: {spawn epoch: row of kernel_machine.json}} (tf-ntk-kernel-machine).
    """

    evals: dict
    kernels: dict
    comparisons: dict
    features: dict
    missing: list
    machines: dict = dataclasses.field(default_factory=dict)


def collect(preset, sweep_dir):
    """Reads every output of ``preset``'s plan under ``sweep_dir`` (missing ones are listed)."""
    evals, kernels, comparisons, features, missing, machines = {}, {}, {}, {}, [], {}
    for job in study.plan(preset, sweep_dir):
        if job.output is None:
            continue
        if not tf.io.gfile.exists(job.output):
            missing.append(job.name)
            continue
        kind, name = job.name.split("/", 1)
        if kind == "eval":
            r = json.loads(_read_text(job.output))
            evals[name] = {"benign": r["benign_accuracy"], "robust": r["robust_accuracy"],
                           "protocol": r["robust"]["protocol"]["accuracy"],
                           "strong": r["robust"]["strong"]["accuracy"], "examples": r["examples"],
                           "path": job.output}
        elif kind == "kernels" and "_vs_" in name:
            a, b = name.split("_vs_")
            comparisons[(a, b)] = {row["epoch"]: row["distance"] for row in _read_csv(job.output)}
        elif kind == "kernels":
            kernels[name] = sorted(_read_csv(job.output), key=lambda row: row["epoch"])
        elif kind == "features":
            features[name] = job.output
        elif kind == "kernel_machine":
            rows = json.loads(_read_text(job.output))["rows"]
            machines[name] = {float(row["epoch"]): row for row in rows}
    return Collected(evals, kernels, comparisons, features, missing, machines)


def _distance(collected, a, b, epoch):
    d = collected.comparisons.get((a, b)) or collected.comparisons.get((b, a)) or {}
    return d.get(epoch)


def _kernel_at(collected, run, epoch, metric):
    for row in collected.kernels.get(run, []):
        if row["epoch"] == epoch:
            return row[metric]
    return None


def remaining(collected, run, epoch, final):
    """d(k_epoch, k_final) / d(k_0, k_final): the share of the kernel's total movement still ahead
    at ``epoch`` (0: it has reached its final kernel)."""
    ahead = _kernel_at(collected, run, epoch, "distance_to_final")
    total = _kernel_at(collected, run, final, "distance_to_init")
    if ahead is None or not total:
        return None
    return ahead / total


def early_epoch(preset):
    """The kernel epoch nearest 10% of phase 1 (C1b's "early")."""
    target = preset.phase1_epochs / 10
    return min((e for e in preset.kernel_epochs if e > 0), key=lambda e: (abs(e - target), e))


@dataclasses.dataclass
class Test:
    """One row of the claims table: the two sides, their paired difference, a verdict."""

    claim: str
    test: str
    a_label: str
    a: list
    b_label: str
    b: list
    margin: float = 0.0
    interval: stats.Interval | None = None
    verdict: str = "inconclusive"

    def __post_init__(self):
        if self.a and len(self.a) == len(self.b):
            self.interval = stats.paired_difference(self.a, self.b)
            self.verdict = stats.verdict(self.interval, self.margin)
        else:
            self.verdict = "inconclusive (missing runs)"


def _paired(values_a, values_b):
    """Keeps the seeds where both sides were measured."""
    keep = [i for i, (x, y) in enumerate(zip(values_a, values_b)) if x is not None and y is not None]
    return [values_a[i] for i in keep], [values_b[i] for i in keep]


def claims(preset, collected):
    """{claim: (verdict, [Test, ...])} for C1, C2 and C3."""
    seeds = range(preset.seeds)
    std = [study.phase1_name("standard", s) for s in seeds]
    adv = [study.phase1_name("adversarial", s) for s in seeds]
    final = float(preset.phase1_epochs)
    out = {}

    cross = [_distance(collected, std[s], adv[s], final) for s in seeds]
    baseline = []
    for s in seeds:
        p = study.baseline_partner(s, preset.seeds)
        both = [] if p is None else [_distance(collected, r[s], r[p], final) for r in (std, adv)]
        baseline.append(None if not both or None in both else max(both))
    early = early_epoch(preset)
    to_final_std = [remaining(collected, r, early, final) for r in std]
    to_final_adv = [remaining(collected, r, early, final) for r in adv]
    out["C1"] = [
        Test("C1", f"kernel distance at epoch {final:g}: standard vs adversarial (same seed) minus "
             "the seed-to-seed baseline", "standard vs adversarial", *_paired(cross, baseline)[:1],
             "seed-to-seed", _paired(cross, baseline)[1]),
        Test("C1", f"share of the kernel's path still ahead at epoch {early:g}, d(k_{early:g}, "
             f"k_{final:g}) / d(k_0, k_{final:g}): standard minus adversarial",
             "standard", _paired(to_final_std, to_final_adv)[0], "adversarial",
             _paired(to_final_std, to_final_adv)[1]),
    ]

    def robust(name):
        r = collected.evals.get(name)
        return None if r is None else r["robust"]

    for claim, data_mode in (("C2", "clean"), ("C3", "adv")):
        if data_mode not in preset.phase2_data:
            continue
        tests = []
        for dynamics in preset.phase2_dynamics:
            for spawn in preset.spawn_epochs:
                if spawn == 0:
                    continue  # identical spawns: a control, not a test
                a = [robust(study.phase2_name(dynamics, data_mode, "adversarial", s, spawn)) for s in seeds]
                b = [robust(study.phase2_name(dynamics, data_mode, "standard", s, spawn)) for s in seeds]
                tests.append(Test(claim, f"{dynamics} phase 2 on {data_mode} data from spawn epoch "
                                  f"{spawn:g}: robust accuracy, adversarial minus standard spawn",
                                  "adversarial spawn", *_paired(a, b)[:1], "standard spawn",
                                  _paired(a, b)[1]))
        if claim == "C3":
            last = max(preset.spawn_epochs)
            for dynamics in preset.phase2_dynamics:
                a = [robust(study.phase2_name(dynamics, "adv", "adversarial", s, last)) for s in seeds]
                b = [robust(f"{r}") for r in adv]
                tests.append(Test(claim, f"{dynamics} adversarial phase 2 from the epoch-{last:g} "
                                  "adversarial spawn minus phase-1 adversarial training (holds above "
                                  f"{C3_MARGIN:+.2f})", "phase 2 on a fixed kernel",
                                  _paired(a, b)[0], "phase-1 adversarial training", _paired(a, b)[1],
                                  margin=C3_MARGIN))
        out[claim] = tests
    result = {}
    for claim, tests in out.items():
        main = [t for t in tests if "linearized" not in t.test] or tests
        verdicts = [t.verdict for t in main]
        if all(v == "holds" for v in verdicts):
            verdict = "holds"
        elif any(v == "does not hold at this scale" for v in verdicts):
            verdict = "does not hold at this scale"
        else:
            verdict = "inconclusive"
        result[claim] = (verdict, tests)
    return result


CLAIMS = {
    "C1": "Adversarial training moves the kernel to a different kernel than standard training, and "
          "fast.",
    "C2": "Robustness lives in the kernel: clean phase 2 keeps robust accuracy from adversarial "
          "spawns, not from standard ones.",
    "C3": "Adversarial training on a fixed kernel reaches high robust accuracy, higher from "
          "adversarial spawns.",
}


def _fmt(values):
    return str(stats.summary(values)) if values else "–"


def claims_table(preset, verdicts):
    """The claims table as Markdown."""
    lines = ["| claim | test | A (mean ± sd) | B (mean ± sd) | A − B [95% CI] | verdict |",
             "|---|---|---|---|---|---|"]
    for claim, (verdict, tests) in verdicts.items():
        lines.append(f"| **{claim}** | {CLAIMS[claim]} | | | | **{verdict}** |")
        for t in tests:
            lines.append(f"| | {t.test} | {t.a_label}: {_fmt(t.a)} | {t.b_label}: {_fmt(t.b)} | "
                         f"{t.interval if t.interval else '–'} | {t.verdict} |")
    return "\n".join(lines)


def _run_rows(preset, collected):
    """[(run, phase, source, seed, dynamics, data, spawn epoch)] of every run, in plan order."""
    rows = []
    for source in study.SOURCES:
        for s in range(preset.seeds):
            rows.append((study.phase1_name(source, s), "1", source, s, "standard",
                         "adv" if source == "adversarial" else "clean", None))
    for source in study.SOURCES:
        for s in range(preset.seeds):
            for spawn in preset.spawn_epochs:
                for dynamics in preset.phase2_dynamics:
                    for data_mode in preset.phase2_data:
                        rows.append((study.phase2_name(dynamics, data_mode, source, s, spawn), "2",
                                     source, s, dynamics, data_mode, float(spawn)))
    return rows


def results_rows(preset, collected, verdicts):
    """Every number of the study as long-format rows (dicts)."""
    rows = []
    for run, phase, source, seed, dynamics, data_mode, spawn in _run_rows(preset, collected):
        r = collected.evals.get(run)
        if r is None:
            continue
        base = {"kind": "evaluation", "run": run, "phase": phase, "source": source, "seed": seed,
                "dynamics": dynamics, "data": data_mode,
                "spawn_epoch": "" if spawn is None else spawn, "epoch": ""}
        for metric in ("benign", "robust", "protocol", "strong"):
            name = {"benign": "benign_accuracy", "robust": "robust_accuracy",
                    "protocol": "robust_accuracy_protocol", "strong": "robust_accuracy_strong"}[metric]
            rows.append({**base, "metric": name, "value": r[metric]})
    for run, krows in collected.kernels.items():
        source, seed = run.rsplit("-s", 1)
        for k in krows:
            for metric, value in k.items():
                if metric in ("run", "epoch") or value != value:  # NaN: not measured there
                    continue
                rows.append({"kind": "kernel", "run": run, "phase": "1", "source": source,
                             "seed": int(seed), "dynamics": "standard", "data": "", "spawn_epoch": "",
                             "epoch": k["epoch"], "metric": metric, "value": value})
    for run, by_epoch in collected.machines.items():
        source, seed = run.rsplit("-s", 1)
        for epoch, row in sorted(by_epoch.items()):
            for metric in MACHINE_METRICS:
                rows.append({"kind": "kernel_machine", "run": run, "phase": "1", "source": source,
                             "seed": int(seed), "dynamics": "kernel_machine", "data": "",
                             "spawn_epoch": epoch, "epoch": "", "metric": metric, "value": row[metric]})
    for (a, b), by_epoch in collected.comparisons.items():
        for epoch, value in sorted(by_epoch.items()):
            rows.append({"kind": "comparison", "run": f"{a}_vs_{b}", "phase": "1", "source": "",
                         "seed": "", "dynamics": "", "data": "", "spawn_epoch": "", "epoch": epoch,
                         "metric": "kernel_distance", "value": value})
    for claim, (_, tests) in verdicts.items():
        for i, t in enumerate(tests):
            if t.interval is None:
                continue
            for metric, value in (("difference_mean", t.interval.mean), ("ci95_low", t.interval.low),
                                  ("ci95_high", t.interval.high)):
                rows.append({"kind": "claim", "run": f"{claim}.{i + 1}", "phase": "", "source": "",
                             "seed": "", "dynamics": "", "data": "", "spawn_epoch": "", "epoch": "",
                             "metric": metric, "value": value})
    return rows


MACHINE_METRICS = ("train_accuracy", "benign_accuracy", "robust_accuracy_protocol",
                   "robust_accuracy_strong", "robust_accuracy")

COLUMNS = ("kind", "run", "phase", "source", "seed", "dynamics", "data", "spawn_epoch", "epoch",
           "metric", "value")


def _csv_text(rows):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: repr(float(v)) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def _num(value):
    return "–" if value is None else f"{value:.3f}"


def markdown(preset, sweep_dir, collected, verdicts, drawn, outcome_line=""):
    """report.md's text."""
    lines = [f"# Reproduction report: preset `{preset.name}`", "",
             preset.description, "",
             "Claims of *Evolution of Neural Tangent Kernels under Benign and Adversarial Training* "
             "(NeurIPS 2022), tested over "
             f"{preset.seeds} seed{'s' if preset.seeds > 1 else ''}. A − B is the mean paired "
             "difference over seeds with its Student-t 95% interval; robust accuracy is the worst "
             "case over the paper's PGD-100 and the strong attack ensemble. The verdict rules are in "
             "docs/reproduction.md.", "", claims_table(preset, verdicts), ""]
    if outcome_line:
        lines += [outcome_line, ""]
    if collected.missing:
        lines += [f"**Incomplete sweep**: {len(collected.missing)} outputs missing "
                  f"({', '.join(collected.missing[:8])}{' …' if len(collected.missing) > 8 else ''}).",
                  ""]
    lines += ["## Figures", ""]
    for title, path in drawn:
        lines.append(f"- [{title}]({os.path.relpath(path, sweep_dir)})")
    lines += ["", "## Accuracy over seeds", "",
              "Mean ± sample standard deviation over the seeds measured (n).", "",
              "| phase | source | spawn | dynamics | data | n | benign | robust (protocol) | "
              "robust |", "|---|---|---|---|---|---|---|---|---|"]
    groups = {}
    for run, phase, source, _, dynamics, data_mode, spawn in _run_rows(preset, collected):
        if run in collected.evals:
            groups.setdefault((phase, source, spawn, dynamics, data_mode), []).append(
                collected.evals[run])
    for (phase, source, spawn, dynamics, data_mode), found in groups.items():
        cells = [str(stats.summary([r[k] for r in found])) for k in ("benign", "protocol", "robust")]
        lines.append(f"| {phase} | {source} | {'' if spawn is None else f'{spawn:g}'} | {dynamics} | "
                     f"{data_mode} | {len(found)} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "",
              "Benign and robust accuracy of each run's final checkpoint on "
              f"{_examples_text(preset)} (robust: worst case of protocol PGD-{preset.eval_steps} and "
              "the strong ensemble).", "",
              "| run | phase | spawn | seed | dynamics | data | benign | robust (protocol) | "
              "robust (strong) | robust |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run, phase, source, seed, dynamics, data_mode, spawn in _run_rows(preset, collected):
        r = collected.evals.get(run, {})
        spawn_text = "" if spawn is None else f"{source} @ {spawn:g}"
        lines.append(f"| {run} | {phase} | {spawn_text} | {seed} | {dynamics} | {data_mode} | "
                     f"{_num(r.get('benign'))} | {_num(r.get('protocol'))} | {_num(r.get('strong'))} | "
                     f"{_num(r.get('robust'))} |")
    lines += _machine_lines(preset, collected)
    lines += ["", "## Kernels at the last phase-1 epoch", "",
              "| run | distance to init | target alignment | effective rank |", "|---|---|---|---|"]
    final = float(preset.phase1_epochs)
    for run in collected.kernels:
        lines.append(f"| {run} | {_num(_kernel_at(collected, run, final, 'distance_to_init'))} | "
                     f"{_num(_kernel_at(collected, run, final, 'target_alignment'))} | "
                     f"{_num(_kernel_at(collected, run, final, 'effective_rank'))} |")
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    for key, value in preset.to_dict().items():
        if key in ("spawn_epochs", "kernel_epochs", "phase1_lr_boundaries"):
            value = ", ".join(f"{v:g}" for v in value) or "none"
        lines.append(f"| {key} | {value} |")
    lines += ["", "## Where everything is", "",
              "- `results.csv`: every number above, one per row (kind, run, metric, value).",
              "- `phase1/`, `phase2/`: the runs (flags.json, checkpoints, results.json, events); "
              "`<run>/eval/`: evaluation.json.",
              "- `kernels/`: kernel metrics per run and distances per pair; `features/`: eigen-images.",
              "- `logs/`: each job's output.", "",
              f"TensorBoard: `{summaries.tensorboard_command(sweep_dir)}` (Custom "
              "Scalars: standard and adversarial curves paired; `summary/`: phase 2 against the spawn "
              "epoch)", ""]
    return "\n".join(lines)


def _machine_lines(preset, collected):
    """The kernel machines' table: mean ± sd over seeds per source and spawn epoch."""
    if not collected.machines:
        return []
    lines = ["", "## Kernel machines: the infinite-time centered predictor", "",
             "k(x, X)(K + λI)⁻¹Y with the spawn's full empirical NTK on "
             f"{preset.kernel_machine_per_class} training images per class (λ = 10⁻³ × mean "
             "eigenvalue; tf-ntk-kernel-machine), evaluated like the runs; mean ± sd over seeds. "
             "Next to it: centered phase 2 on clean data from the same spawn (finite time).", "",
             "| source | spawn | n | train | benign | robust (protocol) | robust | centered phase 2 (clean): "
             "robust |", "|---|---|---|---|---|---|---|---|"]
    for source in study.SOURCES:
        for epoch in preset.machine_epochs():
            found = [collected.machines[r][epoch] for r in
                     (study.phase1_name(source, s) for s in range(preset.seeds))
                     if epoch in collected.machines.get(r, {})]
            if not found:
                continue
            cells = [str(stats.summary([row[k] for row in found])) for k in
                     ("train_accuracy", "benign_accuracy", "robust_accuracy_protocol", "robust_accuracy")]
            phase2 = [collected.evals[n]["robust"] for n in
                      (study.phase2_name("centered", "clean", source, s, epoch) for s in range(preset.seeds))
                      if n in collected.evals]
            lines.append(f"| {source} | {epoch:g} | {len(found)} | " + " | ".join(cells)
                         + f" | {stats.summary(phase2) if phase2 else '–'} |")
    return lines


def _examples_text(preset):
    return (f"the first {preset.eval_examples} test images" if preset.eval_examples
            else "the whole test set")


SUMMARY_DIR = "summary"


def _layout():
    """TensorBoard's Custom Scalars layout: standard and adversarial curves side by side."""
    def chart(title, *tags):
        return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=list(tags)))

    return layout_pb2.Layout(category=[
        layout_pb2.Category(title="Phase 2 against the spawn epoch (mean over seeds; standard and "
                                  "adversarial spawns)", chart=[
            chart("robust accuracy (worst of protocol and strong)", r"^phase2_.*/robust_accuracy$"),
            chart("benign accuracy", r"^phase2_.*/benign_accuracy$"),
            chart("kernel machine: robust accuracy", r"^kernel_machine/robust_accuracy$"),
            chart("kernel machine: benign accuracy", r"^kernel_machine/benign_accuracy$")]),
        layout_pb2.Category(title="Kernels: standard vs adversarial (every seed)", chart=[
            chart("distance to init", r"^kernel/distance_to_init$"),
            chart("target alignment", r"^kernel/target_alignment$"),
            chart("effective rank", r"^kernel/effective_rank$"),
            chart("CKA between the two runs", r"^comparison/cka$"),
            chart("standard vs adversarial distance, and seed-to-seed baselines",
                  r"^kernel_comparison/")]),
        layout_pb2.Category(title="Training", chart=[
            chart("test accuracy (benign, quick robust estimate)", r"^test/"),
            chart("training loss", r"^train/loss$")]),
    ])


def write_tensorboard(preset, sweep_dir, collected):
    """The study's summary runs under ``sweep_dir/summary`` (rewritten on every report): phase-2
    accuracy against the spawn epoch, one run per phase-1 source so that the standard and the
    adversarial curves share a chart; kernel distances standard-vs-adversarial and seed-to-seed
    against the epoch (means over seeds); and the Custom Scalars layout pairing the curves."""
    root = os.path.join(sweep_dir, SUMMARY_DIR)
    rundir.rmtree(root)
    groups = {}
    for run, phase, source, _, dynamics, data_mode, spawn in _run_rows(preset, collected):
        r = collected.evals.get(run)
        if phase == "2" and r is not None:
            groups.setdefault((source, f"phase2_{dynamics}_{data_mode}", spawn), []).append(r)
    for source in study.SOURCES:
        writer = tf.summary.create_file_writer(os.path.join(root, source))
        with writer.as_default():
            for (src, tag, spawn), rows in sorted(groups.items()):
                if src != source:
                    continue
                step = summaries.epoch_step(spawn)
                tf.summary.scalar(f"{tag}/robust_accuracy", float(np.mean([r["robust"] for r in rows])), step)
                tf.summary.scalar(f"{tag}/benign_accuracy", float(np.mean([r["benign"] for r in rows])), step)
            for epoch in preset.machine_epochs():
                found = [collected.machines[r][epoch] for r in
                         (study.phase1_name(source, s) for s in range(preset.seeds))
                         if epoch in collected.machines.get(r, {})]
                for metric in ("robust_accuracy", "benign_accuracy"):
                    if found:
                        tf.summary.scalar(f"kernel_machine/{metric}",
                                          float(np.mean([row[metric] for row in found])),
                                          summaries.epoch_step(epoch))
        writer.close()
    series = {}
    for a, b in study.comparison_pairs(preset.seeds):
        kind = ("standard_vs_adversarial" if "adversarial" in b and "standard" in a
                else f"seed_to_seed_{'adversarial' if 'adversarial' in a else 'standard'}")
        for epoch, distance in (collected.comparisons.get((a, b)) or {}).items():
            series.setdefault(kind, {}).setdefault(epoch, []).append(distance)
    writer = tf.summary.create_file_writer(os.path.join(root, "comparison"))
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(custom_scalars.pb(_layout()).SerializeToString(), step=0)
        for kind, by_epoch in series.items():
            for epoch, values in sorted(by_epoch.items()):
                tf.summary.scalar(f"kernel_comparison/{kind}", float(np.mean(values)),
                                  summaries.epoch_step(epoch))
    writer.close()
    return root


def write(preset, sweep_dir, outcome_line=""):
    """Collects, computes the claims, draws the figures and writes results.csv and report.md
    (atomically). Returns (verdicts, paths {"report", "results", "figures": [...]})."""

    collected = collect(preset, sweep_dir)
    verdicts = claims(preset, collected)
    figure_dir = os.path.join(sweep_dir, "figures")
    drawn = figures.draw_all(preset, collected, figure_dir)
    write_tensorboard(preset, sweep_dir, collected)
    results_path = os.path.join(sweep_dir, "results.csv")
    report_path = os.path.join(sweep_dir, "report.md")
    rundir.write_text(results_path, _csv_text(results_rows(preset, collected, verdicts)))
    rundir.write_text(report_path, markdown(preset, sweep_dir, collected, verdicts, drawn, outcome_line))
    return verdicts, {"report": report_path, "results": results_path,
                      "figures": [p for _, p in drawn]}


def summary_lines(verdicts):
    """The claims table for a terminal: one line per claim and per test."""
    lines = []
    for claim, (verdict, tests) in verdicts.items():
        lines.append(f"{claim}  {verdict.upper()}: {CLAIMS[claim]}")
        for t in tests:
            lines.append(f"    {t.verdict:<28} {str(t.interval) if t.interval else '–':<28} {t.test}")
    return lines
