"""The study's report: from what the sweep measured (`tf_ntk.study.collect`) and the claims' verdicts
(`tf_ntk.study.claims`), writes results.csv, report.md, the figures and the study's TensorBoard runs.

Numbers: every robust accuracy is the worst case per example over the protocol PGD-100 and the strong
ensemble ("robust"), with the protocol number beside it. The claims, their primary endpoints and the
rules are in `tf_ntk.study.claims` (and docs/reproduction.md); every other number is descriptive.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import csv
import io
import os
from typing import Any
from typing import cast

import numpy as np

from tf_ntk import data
from tf_ntk import rundir
from tf_ntk import summaries
from tf_ntk.study import board
from tf_ntk.study import claims
from tf_ntk.study import collect
from tf_ntk.study import figures
from tf_ntk.study import plan
from tf_ntk.study import presets
from tf_ntk.study import stats


def _fmt(values: Sequence[Any]) -> str:
    values = [v for v in values if v is not None]
    return str(stats.summary(values)) if values else "–"


def _interval_text(t: claims.Test) -> str:
    if t.interval is None:
        return "–"
    text = str(t.interval)
    if t.bootstrap is not None:
        text += f"; bootstrap [{t.bootstrap.low:+.3f}, {t.bootstrap.high:+.3f}]"
    return text


def _power_text(t: claims.Test) -> str:
    if t.control or t.interval is None or t.interval.n < 2:
        return "–"
    return "–" if t.power is None else f"{t.power}"


def _verdict_text(t: claims.Test) -> str:
    if not t.primary:
        if t.control or t.interval is None:
            return t.verdict
        p = f"p = {t.pvalue:.3g}" + (f", Holm {t.adjusted:.3g}" if t.adjusted == t.adjusted else "")
        return f"{t.verdict} ({p})"
    return f"**{t.verdict}**" + (f" ⚠ sanity: {t.sanity}" if t.sanity else "")


def claims_table(preset: presets.Preset, verdicts: dict[str, tuple[str, list[claims.Test], int]]) -> str:
    """The claims table as Markdown: per claim its primary endpoint (deciding), then its
    descriptive rows (never deciding; Holm-adjusted within the claim)."""
    lines = ["| claim | row | A (mean ± sd) | B (mean ± sd) | value [95% CI] | seeds for 80% power | "
             "verdict |", "|---|---|---|---|---|---|---|"]
    for claim, (verdict, tests, family) in verdicts.items():
        endpoint = claims.PRIMARY[claim]
        lines.append(f"| **{claim}** | {endpoint.statement} | | | | | **{verdict}** |")
        for t in sorted(tests, key=lambda t: not t.primary):
            kind = ("primary (margin " f"{t.margin:g})" if t.primary
                    else "control" if t.control else f"descriptive, Holm over {family}")
            a = f"{t.a_label}: {_fmt(t.a)}" if t.a_label else _fmt(t.values)
            b = f"{t.b_label}: {_fmt(t.b)}" if t.b_label else ""
            lines.append(f"| | *{kind}*: {t.test} | {a} | {b} | {_interval_text(t)} | "
                         f"{_power_text(t)} | {_verdict_text(t)} |")
    return "\n".join(lines)


def _row(kind: str, run: str, metric: str, value: Any, **fields: Any) -> dict[str, Any]:
    base = dict.fromkeys(COLUMNS, "")
    base.update(kind=kind, run=run, metric=metric, value=value, **fields)
    return base


def results_rows(preset: presets.Preset, collected: collect.Collected,
                 verdicts: dict[str, tuple[str, list[claims.Test], int]]) -> list[dict[str, Any]]:
    """Every number of the study as long-format rows (dicts)."""
    rows = []
    for run, phase, source, seed, dynamics, data_mode, spawn in plan.evaluated_runs(preset):
        r = collected.evals.get(run)
        if r is None:
            continue
        base = {"phase": phase, "source": source, "seed": seed, "dynamics": dynamics,
                "data": data_mode, "spawn_epoch": "" if spawn is None else spawn}
        for metric, key in (("benign_accuracy", "benign"), ("robust_accuracy", "robust"),
                            ("robust_accuracy_protocol", "protocol"),
                            ("robust_accuracy_strong", "strong")):
            rows.append(_row("evaluation", run, metric, r[key], **base))
        for i, t in enumerate(r["transfer"]):
            rows.append(_row("transfer", run, f"transfer_accuracy_{('parent', 'sibling')[i] if i < 2 else i}",
                             t["accuracy"], **base))
        for inputs, terms in (r["output_terms"] or {}).items():
            for term, value in terms.items():
                rows.append(_row("output_terms", run, f"{inputs}_{term}_accuracy", value, **base))
    for run, krows in collected.kernels.items():
        source, seed = run.split("-s", 1)
        seed = int(seed.split("-")[0])  # <source>-s<seed>[-rep]
        for k in krows:
            for metric, value in k.items():
                if metric in ("run", "epoch") or value != value:  # NaN: not measured there
                    continue
                rows.append(_row("kernel", run, metric, value, phase="1", source=source,
                                 seed=seed, dynamics="standard", epoch=k["epoch"]))
    for run, by_epoch in collected.machines.items():
        source, seed = run.rsplit("-s", 1)
        for epoch, row in sorted(by_epoch.items()):
            for metric in MACHINE_METRICS:
                rows.append(_row("kernel_machine", run, metric, row[metric], phase="1", source=source,
                                 seed=int(seed), dynamics="kernel_machine", spawn_epoch=epoch))
    for (a, b), by_epoch in collected.comparisons.items():
        for epoch, value in sorted(by_epoch.items()):
            rows.append(_row("comparison", f"{a}_vs_{b}", "kernel_distance", value, phase="1",
                             epoch=epoch))
    for claim, (_, tests, _) in verdicts.items():
        for i, t in enumerate(tests):
            if t.interval is None:
                continue
            values = [("mean", t.interval.mean), ("ci95_low", t.interval.low),
                      ("ci95_high", t.interval.high)]
            if t.bootstrap is not None:
                values += [("bootstrap_low", t.bootstrap.low), ("bootstrap_high", t.bootstrap.high)]
            if not t.control:
                values += [("p_value", t.pvalue), ("holm_p_value", t.adjusted),
                           ("seeds_for_80_power", float("nan") if t.power is None else t.power)]
            for metric, value in values:
                rows.append(_row("claim", f"{claim}.{i + 1}", metric, value,
                                 data="primary" if t.primary else "control" if t.control
                                 else "descriptive"))
    return rows


MACHINE_METRICS = ("train_accuracy", "benign_accuracy", "robust_accuracy_protocol",
                   "robust_accuracy_strong", "robust_accuracy")

COLUMNS = ("kind", "run", "phase", "source", "seed", "dynamics", "data", "spawn_epoch", "epoch",
           "metric", "value")


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: repr(float(v)) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


RULES = (
    "- **One primary endpoint per claim**, declared in `tf_ntk/study/claims.py` before any run; the "
    "claim's verdict is its primary's.",
    "- **Holds**: the paired Student-t 95% interval over seeds and the two-level bootstrap 95% "
    "interval (seeds × test images) both lie above the margin.",
    "- **Does not hold at this scale**: both intervals lie below the margin.",
    "- **Inconclusive**: anything else (an interval contains the margin, or the two disagree).",
    "- **Descriptive rows** never decide: each shows its t-interval and a p-value against its "
    "margin, Holm-adjusted within its claim (\"Holm over k\": k rows in the family).",
    "- **Seeds for 80% power**: the seeds a paired t-test needs to resolve the row at the observed "
    "mean and sd.",
    "- **Robust accuracy** is the worst case per test image over the paper's PGD and the strong "
    "ensemble (and, at the primary checkpoints, the sanity report's stronger attacks); a failed "
    "sanity check is shown beside the verdict it touches, its breaks counted.",
)

TIMES = "sweep_times.json"  # in the sweep directory: one record per sweep invocation


def record_time(sweep_dir: str, seconds: float, ran: int, workers: int) -> None:
    """Appends one sweep invocation's wall time to ``sweep_dir/sweep_times.json`` (atomically)."""
    path = os.path.join(sweep_dir, TIMES)
    records = rundir.read_json(path, expect=list) if rundir.exists(path) else []
    records.append({"seconds": round(float(seconds), 1), "jobs_run": int(ran), "workers": int(workers),
                    "cores": os.cpu_count()})
    rundir.write_json(path, records)


def wall_time_text(sweep_dir: str) -> str:
    """"Wall time: …" of every recorded sweep invocation that ran jobs ("" when none is recorded)."""
    path = os.path.join(sweep_dir, TIMES)
    if not rundir.exists(path):
        return ""
    records = [r for r in rundir.read_json(path, expect=list) if r["jobs_run"]]
    if not records:
        return ""
    total = sum(r["seconds"] for r in records)
    where = ", ".join(sorted({f"{r['workers']} workers on {r['cores']} cores" for r in records}))
    parts = f" in {len(records)} invocations (resumed)" if len(records) > 1 else ""
    return (f"Wall time measured: {total / 60:.1f} min{parts}, {sum(r['jobs_run'] for r in records)} "
            f"jobs, {where}.")


def _verdict_reason(t: claims.Test, margin: float) -> str:
    interval = cast(stats.Interval, t.interval)  # called only for a measured primary
    low, high = interval.low, interval.high
    boot = t.bootstrap
    if t.verdict == claims.HOLDS:
        return f"both intervals lie above {margin:g}"
    if t.verdict == claims.FAILS:
        return f"both intervals lie below {margin:g}"
    inside = [name for name, (lo, hi) in (("the t interval", (low, high)),
                                          ("the bootstrap interval", (boot.low, boot.high) if boot else (0, 0)))
              if lo <= margin <= hi and (boot or name == "the t interval")]
    if inside:
        return f"{' and '.join(inside)} contain{'s' if len(inside) == 1 else ''} {margin:g}"
    return "the t and the bootstrap intervals fall on different sides of the margin"


def claim_paragraphs(preset: presets.Preset, verdicts: dict[str, tuple[str, list[claims.Test], int]]) -> list[str]:
    """A paragraph per claim: its primary endpoint, which sign supports it, what was measured, why
    the verdict, and where its descriptive rows point."""
    out = []
    for claim, (verdict, tests, family) in verdicts.items():
        endpoint = claims.PRIMARY[claim]
        primary = next((t for t in tests if t.primary), None)
        text = (f"**{claim}: {endpoint.statement}** Primary endpoint: {endpoint.primary}; "
                f"{endpoint.reading}.")
        if primary is None or primary.interval is None:
            text += f" Not measured (runs missing): **{verdict}**."
        else:
            i = primary.interval
            text += (f" Measured over {i.n} seeds: {i.mean:+.3f}, t 95% CI [{i.low:+.3f}, {i.high:+.3f}]"
                     + (f", bootstrap [{primary.bootstrap.low:+.3f}, {primary.bootstrap.high:+.3f}]"
                        if primary.bootstrap else "")
                     + f": **{verdict}** ({_verdict_reason(primary, endpoint.margin)}).")
            if verdict == claims.OPEN and primary.power:
                text += (f" At the observed mean and sd a paired t-test resolves it with about "
                         f"{primary.power} seeds.")
            if primary.sanity:
                text += f" Sanity: {primary.sanity}."
        described = [t for t in tests if not t.primary and not t.control and t.interval is not None]
        if described:
            above = sum(t.verdict.startswith("above") for t in described)
            below = sum(t.verdict.startswith("below") for t in described)
            text += (f" Descriptive rows ({len(described)}, Holm over {family}): {above} above their "
                     f"margin, {below} below, {len(described) - above - below} not resolved.")
        out += [text, ""]
    return out[:-1]


def _resolution_lines(preset: presets.Preset, collected: collect.Collected) -> list[str]:
    """The test-set resolution, and the gap between the protocol PGD and the worst case."""
    n = _test_images(preset, True)
    lines = [f"Primary checkpoints are evaluated on {n} test images: one image is {1 / n:.4f} of an "
             f"accuracy, and binomial noise at an accuracy of 0.3 is about {_binomial_sd(preset):.3f}; "
             "the bootstrap's second level (test images) carries it into the primaries' intervals."]
    if preset.eval_examples and preset.eval_examples != n:
        lines[0] += (f" The other checkpoints are evaluated on {preset.eval_examples} images (one "
                     f"image = {1 / preset.eval_examples:.4f}).")
    gaps = [r["protocol"] - r["robust"] for r in collected.evals.values() if r.get("strong") is not None]
    if gaps:
        lines += ["", f"The paper's PGD-{preset.eval_steps} alone overstates robust accuracy: over "
                  f"{len(gaps)} evaluations the worst case is {np.mean(gaps):.3f} lower on average "
                  f"(largest gap {max(gaps):.3f}); the strong ensemble's restarts, losses and "
                  "black-box Square attack break images that one PGD start misses. Every robust "
                  "accuracy in this report is the worst case."]
    lines += ["", "Across machines: the same seed gives the same numbers on one machine (tested), but "
              "other CPUs sum floating-point numbers in another order and the runs drift apart: the "
              "C2 primary at spawn 10 of the quick preset measured +0.128 on one machine and +0.113 "
              "on another; read differences of that size as machine noise, not as effects."]
    return lines


def markdown(preset: presets.Preset, sweep_dir: str, collected: collect.Collected,
             verdicts: dict[str, tuple[str, list[claims.Test], int]], drawn: Sequence[tuple[str, str]],
             outcome_line: str = "") -> str:
    """report.md's text."""
    n = preset.seeds
    lines = [f"# Reproduction report: preset `{preset.name}`", "",
             preset.description, "",
             "Claims of *Evolution of Neural Tangent Kernels under Benign and Adversarial Training* "
             f"(NeurIPS 2022), tested over {n} seed{'s' if n > 1 else ''} "
             f"({preset.seed_list()[0]}–{preset.seed_list()[-1]}). {wall_time_text(sweep_dir)}", ""]
    if outcome_line:
        lines += [outcome_line, ""]
    if collected.missing:
        lines += [f"**Incomplete sweep**: {len(collected.missing)} outputs missing "
                  f"({', '.join(collected.missing[:8])}{' …' if len(collected.missing) > 8 else ''}).",
                  ""]
    lines += ["## What the numbers show", "", *claim_paragraphs(preset, verdicts), "",
              "## How a claim is decided", "", *RULES, "",
              "## The claims table", "", claims_table(preset, verdicts), "",
              "## Resolution", "", *_resolution_lines(preset, collected), "",
              "## Terms", "", *_glossary(preset), "",
              "## Figures", ""]
    for title, path in drawn:
        lines += [f"### {title}", "", f"![{title}]({os.path.relpath(path, sweep_dir)})", ""]
    lines += ["## Accuracy over seeds", "",
              "Mean ± sample standard deviation over the seeds measured (n).", "",
              "| phase | source | spawn | dynamics | data | n | benign | robust (protocol) | "
              "robust |", "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run, phase, source, _, dynamics, data_mode, spawn in plan.evaluated_runs(preset):
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
    for run, phase, source, seed, dynamics, data_mode, spawn in plan.evaluated_runs(preset):
        r = collected.evals.get(run, {})
        spawn_text = "" if spawn is None else f"{source} @ {spawn:g}"
        lines.append(f"| {run} | {phase} | {spawn_text} | {seed} | {dynamics} | {data_mode} | "
                     f"{_num(r.get('benign'))} | {_num(r.get('protocol'))} | {_num(r.get('strong'))} | "
                     f"{_num(r.get('robust'))} |")
    lines += _machine_lines(preset, collected)
    lines += _transfer_lines(preset, collected)
    lines += _terms_lines(preset, collected)
    lines += _convergence_lines(preset, collected)
    lines += ["", "## Kernels at the last phase-1 epoch", "",
              "| run | distance to init | target alignment | effective rank |", "|---|---|---|---|"]
    final = float(preset.phase1_epochs)
    for run in collected.kernels:
        lines.append(f"| {run} | {_num(claims.kernel_at(collected, run, final, 'distance_to_init'))} | "
                     f"{_num(claims.kernel_at(collected, run, final, 'target_alignment'))} | "
                     f"{_num(claims.kernel_at(collected, run, final, 'effective_rank'))} |")
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    for key, value in preset.to_dict().items():
        if key in ("spawn_epochs", "kernel_epochs", "phase1_lr_boundaries", "kernel_machine_epochs") \
                and value is not None:
            value = ", ".join(f"{v:g}" for v in value) or "none"
        lines.append(f"| {key} | {value} |")
    lines += ["", "## Where everything is", "",
              "- `results.csv`: every number above, one per row (kind, run, metric, value).",
              "- `phase1/`, `phase2/`: the runs (flags.json, checkpoints, results.json, events); "
              "`<run>/eval/`: evaluation.json.",
              "- `kernels/`: kernel metrics per run and distances per pair; `features/`: eigen-images; "
              "`transfer/`: each spawn's PGD examples; `kernel_machine/`: the kernel machines.",
              "- `figures/`: the figures above (PNG); `sweep.json`: the preset this sweep ran; "
              f"`{TIMES}`: the wall time of each invocation.",
              "- `logs/`: each job's output; `logs/job_times.json`: each job's start and end.", "",
              f"- `{board.BOARD_DIR}/`: the study's TensorBoard log directory, one run per condition "
              "(means over seeds, the seeds' range in Custom Scalars' margin charts, the figures as "
              "images, HParams of the phase-2 conditions).", "",
              f"TensorBoard: `{board.command(sweep_dir)}`; every run of a family: "
              f"`{summaries.tensorboard_command(os.path.join(sweep_dir, 'phase2'))}` (HParams: spawn "
              "source, spawn epoch, dynamics, data, seed).", ""]
    return "\n".join(lines)


def _machine_lines(preset: presets.Preset, collected: collect.Collected) -> list[str]:
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
    for source in presets.SOURCES:
        for epoch in preset.machine_epochs():
            found = [collected.machines[r][epoch] for r in
                     (plan.phase1_name(source, s) for s in preset.seed_list())
                     if epoch in collected.machines.get(r, {})]
            if not found:
                continue
            cells = [str(stats.summary([row[k] for row in found])) for k in
                     ("train_accuracy", "benign_accuracy", "robust_accuracy_protocol", "robust_accuracy")]
            phase2 = [collected.evals[n]["robust"] for n in
                      (plan.child_name("centered", "clean", source, s, epoch) for s in preset.seed_list())
                      if n in collected.evals]
            lines.append(f"| {source} | {epoch:g} | {len(found)} | " + " | ".join(cells)
                         + f" | {stats.summary(phase2) if phase2 else '–'} |")
    return lines


def _test_images(preset: presets.Preset, primary: bool = False) -> int:
    return (plan.eval_examples(preset, primary)
            or data.info(preset.dataset).num_examples["test"])


def _binomial_sd(preset: presets.Preset, accuracy: float = 0.3) -> float:
    return (accuracy * (1 - accuracy) / _test_images(preset, True)) ** 0.5


def _glossary(preset: presets.Preset) -> list[str]:
    adv = "used here" if preset.adv_mode == "clean_then_adv" else "not used here"
    return [
        "- *Phase 1*: training from the initialisation (standard: clean data; adversarial: PGD data).",
        "- *Spawn*: a phase-1 checkpoint that phase 2 starts from; its *spawn epoch* is when it was "
        "saved (0: the initialisation, shared by both trainings).",
        "- *Centered* phase 2 trains f(x) = J(x)(θ − θ_s): the spawn's kernel fixed, its function "
        "removed, so only the kernel can carry what the spawn learned; *linearized* trains "
        "f_s(x) + J(x)(θ − θ_s); *standard* trains the network itself.",
        f"- *Clean-then-adversarial* ({adv}): a step on the clean batch, then one on PGD examples "
        "crafted against the updated weights (two optimizer steps per batch).",
        "- *Flip*: clean training for the first half of phase 1, adversarial after.",
        "- *Kernel distance* d(K, K') = 1 − ⟨K, K'⟩ / (‖K‖ ‖K'‖) between two empirical NTKs on the "
        "same probe images (0: the same up to scale); *velocity*: distance per epoch between "
        "consecutive kernels.",
        "- *Matched floor*: the distance between a run and its replica, the same training from the "
        "same initialisation with another data order and other attack starts.",
        "- *Strong ensemble*: PGD with several losses and restarts, targeted PGD, APGD-CE/DLR and the "
        f"black-box Square attack, worst case per example. Primary checkpoints (phase-1 finals, "
        f"centered phase 2 from the last spawn): {preset.primary_restarts} restarts, "
        f"{preset.primary_square_queries} Square queries and the sanity report; the others: "
        f"{preset.strong_restarts} restarts, {preset.square_queries} queries.",
        "- *Transfer*: accuracy on PGD examples crafted against another model (the parent spawn, "
        "the sibling spawn).",
    ]


def _mean_of(values: Sequence[Any]) -> str:
    values = [v for v in values if v is not None]
    return _fmt(values) if values else "–"


def _transfer_lines(preset: presets.Preset, collected: collect.Collected) -> list[str]:
    """Transfer attacks on the centered children: white-box robust accuracy beside the accuracy on
    the PGD examples of the parent spawn and of the sibling spawn (mean ± sd over seeds)."""
    if not preset.transfer or not any(r["transfer"] for r in collected.evals.values()):
        return []
    lines = ["", "## Transfer attacks on centered phase 2", "",
             "PGD-{0} examples crafted on the parent spawn (the network the child's kernel comes "
             "from, standard dynamics) and on its sibling (the other source's spawn at the same seed "
             "and epoch), evaluated on the child. A transfer accuracy below the white-box robust "
             "accuracy would mean the white-box attacks missed examples (gradient masking): "
             "flagged ⚠.".format(preset.eval_steps), "",
             "| child | spawn | n | white-box robust | transfer from parent | transfer from sibling | "
             "parent's own robust |", "|---|---|---|---|---|---|---|"]
    for source in presets.SOURCES:
        for spawn in preset.spawn_epochs:
            for dynamics, mode in preset.phase2_conditions():
                if dynamics != "centered" or spawn == 0:
                    continue
                runs: list[Any] = [collected.evals.get(plan.phase2_name(dynamics, mode, source, s, spawn))
                        for s in preset.seed_list()]
                runs = [r for r in runs if r and len(r["transfer"]) >= 2]
                if not runs:
                    continue
                white = [r["robust"] for r in runs]
                parent = [r["transfer"][0]["accuracy"] for r in runs]
                sibling = [r["transfer"][1]["accuracy"] for r in runs]
                own = [(collected.transfer_sets.get(plan.transfer_name(source, s, spawn)) or {})
                       .get("protocol") for s in preset.seed_list()]
                flag = " ⚠" if min(parent + sibling) < min(white) else ""
                lines.append(f"| {dynamics} {mode}, {source} spawn | {spawn:g} | {len(runs)} | "
                             f"{_mean_of(white)} | {_mean_of(parent)}{flag} | {_mean_of(sibling)} | "
                             f"{_mean_of(own)} |")
    return lines


def _terms_lines(preset: presets.Preset, collected: collect.Collected) -> list[str]:
    """The output decomposition of linearized phase 2: accuracy of the spawn term f_s(x) alone, of
    the kernel term J(x)(θ − θ_s) alone and of their sum, on clean and on PGD inputs."""
    rows = []
    for source in presets.SOURCES:
        for spawn in preset.spawn_epochs:
            if spawn == 0 and source != "standard":
                continue
            for dynamics, mode in preset.phase2_conditions():
                if dynamics != "linearized":
                    continue
                found: list[Any] = [collected.evals.get(plan.phase2_name(dynamics, mode, source, s, spawn))
                         for s in preset.seed_list()]
                found = [r["output_terms"] for r in found if r and r.get("output_terms")]
                if not found:
                    continue
                cells = [_mean_of([f.get(inputs, {}).get(term) for f in found])
                         for inputs in ("clean", "adversarial") for term in ("spawn_term", "kernel_term", "sum")]
                src = "initialisation" if spawn == 0 else f"{source} spawn"
                rows.append(f"| {mode} | {src} | {spawn:g} | {len(found)} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", "## Output decomposition of linearized phase 2", "",
            "A linearized model is f_s(x) + J(x)(θ − θ_s): accuracy of the spawn term alone, of the "
            "kernel term alone and of their sum (the model), on clean test images and on the protocol "
            "PGD's images crafted against the model (mean ± sd over seeds).", "",
            "| data | from | spawn | n | clean: spawn term | clean: kernel term | clean: sum | "
            "PGD: spawn term | PGD: kernel term | PGD: sum |", "|---|---|---|---|---|---|---|---|---|---|",
            *rows]


def _convergence_lines(preset: presets.Preset, collected: collect.Collected) -> list[str]:
    """Phase 1's convergence check: final kernel velocity over its peak, per source."""
    lines = ["", "## Phase 1: has the kernel converged?", "",
             f"Kernel velocity at the last kernel epoch over its peak (mean ± sd over seeds); phase 1 "
             f"has reached its lazy phase when it is below {collect.VELOCITY_RATIO:g} (Fig. 7).", "",
             "| source | n | final / peak velocity | |", "|---|---|---|---|"]
    any_row = False
    for source in plan.phase1_sources(preset):
        ratios: list[Any] = [collect.velocity_ratio(collected, plan.phase1_name(source, s)) for s in preset.seed_list()]
        ratios = [r for r in ratios if r is not None]
        if not ratios:
            continue
        any_row = True
        mean = sum(ratios) / len(ratios)
        flag = "converged" if mean < collect.VELOCITY_RATIO else "⚠ not converged: the kernel still moves"
        lines.append(f"| {source} | {len(ratios)} | {_fmt(ratios)} | {flag} |")
    return lines if any_row else []


def _examples_text(preset: presets.Preset) -> str:
    return (f"the first {preset.eval_examples} test images" if preset.eval_examples
            else "the whole test set")


def write(preset: presets.Preset, sweep_dir: str,
          outcome_line: str = "") -> tuple[dict[str, tuple[str, list[claims.Test], int]], dict[str, Any]]:
    """Collects, computes the claims, draws the figures and writes results.csv and report.md
    (atomically). Returns (verdicts, paths {"report", "results", "figures": [...]})."""

    collected = collect.collect(preset, sweep_dir)
    verdicts = claims.claims(preset, collected)
    figure_dir = os.path.join(sweep_dir, "figures")
    drawn = figures.draw_all(preset, collected, figure_dir, verdicts)
    board.write(preset, sweep_dir, collected, drawn)
    results_path = os.path.join(sweep_dir, "results.csv")
    report_path = os.path.join(sweep_dir, "report.md")
    rundir.write_text(results_path, _csv_text(results_rows(preset, collected, verdicts)))
    rundir.write_text(report_path, markdown(preset, sweep_dir, collected, verdicts, drawn, outcome_line))
    return verdicts, {"report": report_path, "results": results_path,
                      "figures": [p for _, p in drawn]}


def summary_lines(verdicts: dict[str, tuple[str, list[claims.Test], int]]) -> list[str]:
    """The claims table for a terminal: per claim its verdict and its primary endpoint, and how many
    descriptive rows the report shows."""
    lines = []
    for claim, (verdict, tests, family) in verdicts.items():
        lines.append(f"{claim:<4} {verdict.upper()}: {claims.PRIMARY[claim].statement}")
        for t in tests:
            if t.primary:
                interval = _interval_text(t)
                lines.append(f"     primary: {t.test}: {interval} (margin {t.margin:g})"
                             + (f"; sanity failed: {t.sanity}" if t.sanity else ""))
        lines.append(f"     + {family} descriptive rows (Holm-adjusted) in report.md")
    return lines
