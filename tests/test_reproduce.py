"""tf_ntk.cli.reproduce end to end on the smoke preset: the report's and results.csv's numbers against
the runs' own files, the figures, an interrupted sweep resumed, the printed commands run one by one
against the pool, the cifar10 plan offline, bad inputs; and the claim rules on hand-made numbers."""

import csv
import glob
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import psutil
import pytest
import tensorflow as tf

from tf_ntk.cli import common
from tf_ntk.cli import reproduce
from tf_ntk import data
from tf_ntk import report
from tf_ntk import study
from tests import helpers

# One xdist worker runs the whole module, so the smoke sweep (the fixture) runs once.
pytestmark = pytest.mark.xdist_group("reproduce")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T_975_1DF = 12.706204736174698  # Student t, 97.5% quantile, 1 degree of freedom
T_975_2DF = 4.302652729911275


def _run(argv):
    helpers.run_binary(reproduce, argv)


def _run_app(argv, capsys):
    return helpers.run_app(reproduce, argv, capsys)


@pytest.fixture(scope="session")
def pool_sweep(tmp_path_factory):
    """The smoke preset run by the pool of 2 workers (once per test process: session scope, since
    xdist may interleave other modules' tests with this group's)."""
    root = tmp_path_factory.mktemp("sweep") / "pool"
    _run(["--preset=smoke", f"--workdir={root}", "--jobs=2"])
    return root


def _results(root):
    with open(os.path.join(root, "results.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _evaluations(root):
    """{run name: evaluation.json} read straight from the run directories."""
    out = {}
    for path in glob.glob(os.path.join(root, "phase*", "*", "eval", "*", "evaluation.json")):
        with open(path, encoding="utf-8") as f:
            out[path.split(os.sep)[-4]] = json.load(f)
    return out


def test_results_csv_and_report_equal_the_runs_own_files(pool_sweep):
    rows = _results(pool_sweep)
    evals = _evaluations(pool_sweep)
    assert len(evals) == 2 * 2 * (1 + 2 * 2)  # 2 sources x 2 seeds x (phase 1 + 2 spawns x 2 data)
    metric = {"benign_accuracy": lambda r: r["benign_accuracy"],
              "robust_accuracy": lambda r: r["robust_accuracy"],
              "robust_accuracy_protocol": lambda r: r["robust"]["protocol"]["accuracy"],
              "robust_accuracy_strong": lambda r: r["robust"]["strong"]["accuracy"]}
    eval_rows = [r for r in rows if r["kind"] == "evaluation"]
    assert len(eval_rows) == 4 * len(evals)
    for r in eval_rows:
        assert float(r["value"]) == metric[r["metric"]](evals[r["run"]]), r
    # Worst case over attacks: never above either attack's number.
    for r in evals.values():
        assert r["robust_accuracy"] <= min(a["accuracy"] for a in r["robust"].values())
    # Kernel metrics: every number of every run's kernel_dynamics.csv, and every comparison.
    kernel_rows = {(r["run"], float(r["epoch"]), r["metric"]): float(r["value"])
                   for r in rows if r["kind"] == "kernel"}
    count = 0
    for path in glob.glob(os.path.join(pool_sweep, "kernels", "*", "kernel_dynamics.csv")):
        with open(path, encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key in ("run", "epoch") or value == "":
                        continue
                    run = os.path.basename(os.path.dirname(path))
                    assert kernel_rows[(run, float(row["epoch"]), key)] == float(value)
                    count += 1
    assert count == len(kernel_rows) > 0
    comparison = {(r["run"], float(r["epoch"])): float(r["value"])
                  for r in rows if r["kind"] == "comparison"}
    for path in glob.glob(os.path.join(pool_sweep, "kernels", "*_vs_*", "comparison.csv")):
        with open(path, encoding="utf-8") as f:
            for row in csv.DictReader(f):
                key = (os.path.basename(os.path.dirname(path)), float(row["epoch"]))
                assert comparison.pop(key) == float(row["distance"])
    assert not comparison
    # A claim's interval, recomputed by hand from the evaluation files: C2 at spawn epoch 0.5.
    d = [evals[f"centered-clean-from-adversarial-s{s}-e0.5"]["robust_accuracy"]
         - evals[f"centered-clean-from-standard-s{s}-e0.5"]["robust_accuracy"] for s in (0, 1)]
    mean, half = np.mean(d), T_975_1DF * np.std(d, ddof=1) / math.sqrt(2)
    claim = {r["metric"]: float(r["value"]) for r in rows if r["kind"] == "claim" and r["run"] == "C2.1"}
    assert claim["difference_mean"] == pytest.approx(mean, abs=1e-12)
    assert (claim["ci95_low"], claim["ci95_high"]) == pytest.approx((mean - half, mean + half), abs=1e-9)
    # report.md: every run's row shows its own numbers; the claims table shows the interval.
    with open(os.path.join(pool_sweep, "report.md"), encoding="utf-8") as f:
        text = f.read()
    for run, r in evals.items():
        line = next(x for x in text.splitlines() if x.startswith(f"| {run} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[-4:] == [f"{v:.3f}" for v in (r["benign_accuracy"], r["robust"]["protocol"]["accuracy"],
                                                     r["robust"]["strong"]["accuracy"], r["robust_accuracy"])]
    assert f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]" in text
    # The summary over seeds: mean ± sample standard deviation, by hand.
    robust = [evals[f"adversarial-s{s}"]["robust_accuracy"] for s in (0, 1)]
    benign = [evals[f"adversarial-s{s}"]["benign_accuracy"] for s in (0, 1)]
    line = next(x for x in text.splitlines() if x.startswith("| 1 | adversarial |"))
    assert f"| 2 | {np.mean(benign):.3f} ± {np.std(benign, ddof=1):.3f} |" in line
    assert line.endswith(f"| {np.mean(robust):.3f} ± {np.std(robust, ddof=1):.3f} |")
    assert f"tensorboard --logdir {pool_sweep}" in text
    # Kernel machines: every number of every run's kernel_machine.json, and the report's table.
    machine_rows = {(r["run"], float(r["spawn_epoch"]), r["metric"]): float(r["value"])
                    for r in rows if r["kind"] == "kernel_machine"}
    count = 0
    for path in glob.glob(os.path.join(pool_sweep, "kernel_machine", "*", "kernel_machine.json")):
        run = os.path.basename(os.path.dirname(path))
        for row in helpers.read_json(path)["rows"]:
            for metric in report.MACHINE_METRICS:
                assert machine_rows[(run, row["epoch"], metric)] == row[metric]
                count += 1
    assert count == len(machine_rows) == 4 * 2 * len(report.MACHINE_METRICS)  # 4 runs x 2 spawns
    robust = [machine_rows[(f"adversarial-s{s}", 2.0, "robust_accuracy")] for s in (0, 1)]
    line = next(x for x in text.splitlines() if x.startswith("| adversarial | 2 | 2 |"))
    assert f"| {np.mean(robust):.3f} ± {np.std(robust, ddof=1):.3f} |" in line
    for name in ("fig1_kernel_distance", "fig3_phase2_vs_spawn", "fig5_eigen_images", "fig6_kernel_machine"):
        assert f"(figures/{name}.png)" in text


def test_figures_are_valid_pngs_of_the_expected_size(pool_sweep):
    pngs = sorted(glob.glob(os.path.join(pool_sweep, "figures", "*.png")))
    assert [os.path.basename(p) for p in pngs] == [
        "fig1_kernel_distance.png", "fig2_standard_vs_adversarial.png", "fig3_phase2_vs_spawn.png",
        "fig4_alignment_rank.png", "fig5_eigen_images.png", "fig6_kernel_machine.png"]
    for path in pngs:
        with open(path, "rb") as f:
            raw = f.read()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        image = tf.io.decode_png(raw).numpy()
        assert image.shape[:2] == (400, 1000), path
        gray = image[..., :3].mean(axis=-1)
        assert (gray < 200).mean() > 0.01, f"{path} is (nearly) blank"
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20, path
        with open(path[:-4] + ".pdf", "rb") as f:
            assert f.read(5) == b"%PDF-"


def _scalars(directory):
    """{tag: {step: value}} of the event files directly in ``directory``, and the plugins seen."""
    values, plugins = {}, set()
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                plugins.add(v.metadata.plugin_data.plugin_name)
                if v.metadata.plugin_data.plugin_name == "scalars":
                    values.setdefault(v.tag, {})[event.step] = float(tf.make_ndarray(v.tensor))
    return values, plugins


def test_the_summary_runs_draw_phase2_curves_and_kernel_comparisons(pool_sweep):
    """summary/<source>: phase-2 accuracy at every spawn epoch (milli-epochs), the mean over seeds of
    the runs' own evaluations; summary/comparison: the Custom Scalars layout and the mean
    standard-vs-adversarial kernel distance per epoch."""
    evals = _evaluations(pool_sweep)
    preset = study.PRESETS["smoke"]
    for source in study.SOURCES:
        values, _ = _scalars(os.path.join(pool_sweep, "summary", source))
        for dynamics in preset.phase2_dynamics:
            for data_mode in preset.phase2_data:
                curve = values[f"phase2_{dynamics}_{data_mode}/robust_accuracy"]
                assert sorted(curve) == [round(1000 * e) for e in preset.spawn_epochs]
                for spawn in preset.spawn_epochs:
                    runs = [study.phase2_name(dynamics, data_mode, source, s, spawn)
                            for s in range(preset.seeds)]
                    want = np.mean([evals[r]["robust_accuracy"] for r in runs])
                    assert curve[round(1000 * spawn)] == pytest.approx(want, abs=1e-6)
    values, plugins = _scalars(os.path.join(pool_sweep, "summary", "comparison"))
    assert "custom_scalars" in plugins
    distances = values["kernel_comparison/standard_vs_adversarial"]
    assert sorted(distances) == [round(1000 * e) for e in preset.kernel_epochs]
    rows = [helpers.read_csv(os.path.join(pool_sweep, "kernels", f"standard-s{s}_vs_adversarial-s{s}",
                                          "comparison.csv")) for s in range(preset.seeds)]
    want = np.mean([float(next(r for r in rs if float(r["epoch"]) == 2.0)["distance"]) for rs in rows])
    assert distances[2000] == pytest.approx(want, rel=1e-5)


def test_interrupted_sweep_resumes_to_the_same_numbers(pool_sweep, tmp_path):
    """A sweep whose process is killed (SIGKILL) mid-way, then rerun: its workers end with it,
    finished jobs are not redone, and every number equals the uninterrupted pool's."""
    root = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "binaries.reproduce", "--preset=smoke", f"--workdir={root}", "--jobs=2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not glob.glob(str(root / "phase2" / "*" / "resume")) and time.time() < deadline:
        time.sleep(0.2)
    workers = psutil.Process(process.pid).children()
    assert len(workers) >= 2
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, "worker processes outlived the sweep"
    assert not (root / "report.md").exists(), "the sweep finished before it could be killed"
    done = {j.output: os.path.getmtime(j.output) for j in study.plan(study.PRESETS["smoke"], str(root))
            if j.output and os.path.exists(j.output)}
    _run(["--preset=smoke", f"--workdir={root}", "--jobs=2"])
    for output, mtime in done.items():
        assert os.path.getmtime(output) == mtime, f"{output} was recomputed"
    assert _results(root) == _results(pool_sweep)
    for name in ("phase1/adversarial-s1", "phase2/centered-adv-from-adversarial-s1-e2"):
        with open(root / name / "history.json") as f, open(pool_sweep / name / "history.json") as g:
            assert [r["loss"] for r in json.load(f)] == [r["loss"] for r in json.load(g)]


def test_printed_commands_are_the_pools_jobs_and_run_alone_to_its_numbers(pool_sweep, tmp_path, capsys):
    """--print_commands prints exactly the jobs the pool runs (module and arguments, dependency
    order); its first commands, run one by one in a fresh directory, give the pool's numbers."""
    root = tmp_path / "commands"
    _run(["--preset=smoke", f"--workdir={root}", "--print_commands"])
    lines = capsys.readouterr().out.strip().splitlines()
    jobs = study.plan(study.PRESETS["smoke"], str(root), report_args=[
        f"--workdir={root}", "--preset=smoke", "--report_only"])
    assert lines == [job.command() for job in jobs]
    assert lines[-1].endswith("--report_only") and "--preset=smoke" in lines[-1]
    first = jobs[:2]  # phase-1 training of the standard seed-0 run, then its strong evaluation
    assert [j.name for j in first] == ["phase1/standard-s0", "eval/standard-s0"]
    for line in lines[:2]:
        argv = shlex.split(line)
        assert argv[:2] == ["python", "-m"] and argv[2].startswith("tf_ntk.cli.")
        error = common.execute(argv[2], argv[3:], str(tmp_path / "log.txt"))
        assert error is None, (line, error)
    for job in first:
        ours = helpers.read_json(job.output)
        theirs = helpers.read_json(os.path.join(pool_sweep, os.path.relpath(job.output, root)))
        keys = [k for k in ("benign_accuracy", "robust_accuracy", "robust_accuracy_quick", "final_train_loss")
                if k in theirs]
        assert len(keys) >= 2 and {k: ours.get(k) for k in keys} == {k: theirs[k] for k in keys}, job.name


def test_cifar10_dry_run_is_offline(monkeypatch, capsys):
    def no_data(*args, **kwargs):
        raise AssertionError("the dry run loaded data")

    monkeypatch.setattr(data, "load", no_data)
    monkeypatch.setattr(data, "load_arrays", no_data)
    _run(["--preset=cifar10", "--dry_run", "--workdir=/nonexistent/sweep"])
    out = capsys.readouterr().out
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if line.split() and line.split()[0] in ("phase1", "phase2", "eval", "kernels", "kernel_machine",
                                                       "total")}
    spawns = 109
    assert counts["phase1"] == 6 and counts["phase2"] == 2 * 3 * spawns * 2
    assert counts["eval"] == 6 + counts["phase2"]
    assert counts["kernels"] == 6 + 9
    assert counts["kernel_machine"] == 6  # one per phase-1 run
    assert counts["total"] == sum(counts[k] for k in ("phase1", "phase2", "eval", "kernels",
                                                      "kernel_machine")) + 2 + 1
    assert "train-step equivalents" in out
    assert not os.path.exists("/nonexistent/sweep")


@pytest.mark.parametrize("argv, message", [
    (["--preset=smoke", "--phase2_dynamics=standard"], "phase2_dynamics must be centered"),
    (["--preset=smoke", "--spawn_epochs=0.5,9"], "outside phase 1"),
    (["--preset=smoke", "--spawn_epochs=a,b"], "--spawn_epochs must be numbers"),
    (["--preset=nope"], "--preset"),
    (["--report_only", "--workdir=/nonexistent/sweep"], "not a sweep directory"),
])
def test_bad_input_is_one_line(argv, message, capsys, tmp_path):
    code, err = _run_app(argv + ([] if "--workdir" in " ".join(argv) else [f"--workdir={tmp_path}/x"]),
                         capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "x")


def test_a_sweep_of_other_settings_is_refused(pool_sweep, capsys):
    code, err = _run_app(["--preset=smoke", "--seeds=3", f"--workdir={pool_sweep}"], capsys)
    assert code == 2 and "holds a sweep with other settings (seeds)" in err
    code, err = _run_app(["--preset=quick", f"--workdir={pool_sweep}", "--report_only"], capsys)
    assert code == 2 and "other settings" in err
    other = pool_sweep.parent / "not-a-sweep"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, err = _run_app(["--preset=smoke", f"--workdir={other}", "--overwrite"], capsys)
    assert code == 2 and "holds no sweep" in err and (other / "notes.txt").exists()


def _collected(evals=None, kernels=None, comparisons=None):
    return report.Collected(evals or {}, kernels or {}, comparisons or {}, {}, [])


def test_claim_rules_on_hand_made_numbers():
    preset = study.PRESETS["smoke"].replace(seeds=3, spawn_epochs=(0.0, 2.0))
    evals = {}
    for s, (adv_spawn, std_spawn) in enumerate([(0.30, 0.02), (0.35, 0.00), (0.32, 0.04)]):
        for mode, shift in (("clean", 0.0), ("adv", 0.2)):
            for spawn in (0.0, 2.0):
                a = adv_spawn + shift if spawn else std_spawn
                evals[study.phase2_name("centered", mode, "adversarial", s, spawn)] = {"robust": a}
                evals[study.phase2_name("centered", mode, "standard", s, spawn)] = {"robust": std_spawn}
        evals[study.phase1_name("adversarial", s)] = {"robust": [0.60, 0.50, 0.55][s]}
    verdicts = report.claims(preset, _collected(evals))
    c2_verdict, c2_tests = verdicts["C2"]
    assert len(c2_tests) == 1 and c2_verdict == "holds"  # spawn epoch 0 is a control, not a test
    d = np.array([0.28, 0.35, 0.28])
    half = T_975_2DF * d.std(ddof=1) / math.sqrt(3)
    assert (c2_tests[0].interval.low, c2_tests[0].interval.high) == pytest.approx(
        (d.mean() - half, d.mean() + half))
    c3_verdict, c3_tests = verdicts["C3"]
    # vs phase 1: (0.50, 0.55, 0.52) - (0.60, 0.50, 0.55) = (-0.10, 0.05, -0.03): inside the margin.
    assert c3_tests[-1].margin == report.C3_MARGIN and c3_tests[-1].verdict == "inconclusive"
    assert c3_tests[0].verdict == "holds" and c3_verdict == "inconclusive"
    # Reversed spawns: the claim does not hold.
    flipped = {k.replace("adversarial-s", "X").replace("standard-s", "adversarial-s").replace(
        "X", "standard-s"): v for k, v in evals.items()}
    assert report.claims(preset, _collected(flipped))["C2"][0] == "does not hold at this scale"
    # C1: distances and the share of the kernel path ahead, by hand.
    final, early = 2.0, report.early_epoch(preset)
    assert early == 0.5 and final == preset.phase1_epochs
    comparisons, kernels = {}, {}
    for s in range(3):
        t = (s + 1) % 3
        comparisons[(f"standard-s{s}", f"adversarial-s{s}")] = {final: 0.30 + 0.01 * s}
        for source in study.SOURCES:
            pair = tuple(sorted((f"{source}-s{s}", f"{source}-s{t}")))
            comparisons[pair] = {final: 0.05 if source == "standard" else 0.07}
        kernels[f"standard-s{s}"] = [{"epoch": early, "distance_to_final": 0.08},
                                     {"epoch": final, "distance_to_init": 0.10, "distance_to_final": 0.0}]
        kernels[f"adversarial-s{s}"] = [{"epoch": early, "distance_to_final": 0.02 + 0.01 * s},
                                        {"epoch": final, "distance_to_init": 0.20, "distance_to_final": 0.0}]
    c1_verdict, (c1a, c1b) = report.claims(preset, _collected(evals, kernels, comparisons))["C1"]
    assert c1a.a == pytest.approx([0.30, 0.31, 0.32]) and c1a.b == pytest.approx([0.07] * 3)
    assert c1b.a == pytest.approx([0.8] * 3) and c1b.b == pytest.approx([0.1, 0.15, 0.2])
    assert c1a.verdict == c1b.verdict == c1_verdict == "holds"
    # Missing runs: no verdict from numbers that are not there.
    assert report.claims(preset, _collected())["C1"][0] == "inconclusive"


def test_an_unprepared_data_set_fails_before_any_job(tmp_path, capsys):
    code, err = _run_app(["--preset=cifar10", f"--data_dir={tmp_path}/tfds", f"--workdir={tmp_path}/s"],
                         capsys)
    assert code == 2 and "'cifar10' is not prepared" in err and "tfds build cifar10" in err
    assert not os.path.exists(tmp_path / "s")


def test_the_report_is_written_on_a_file_system_that_is_not_posix(pool_sweep, tmp_path, capsys):
    """--report_only on a copy of the sweep in TensorFlow's in-memory ram:// file system (no atomic
    rename, like gs://) writes the report, numbers and figures a local copy gets."""
    ram, local = f"ram://{uuid.uuid4().hex}/sweep", tmp_path / "sweep"
    for base, _, files in os.walk(pool_sweep):
        rel = os.path.relpath(base, pool_sweep)
        for name in files:
            for root in (ram, str(local)):
                target = root if rel == "." else f"{root}/{rel}"  # ram:// does not resolve "./"
                tf.io.gfile.makedirs(target)
                tf.io.gfile.copy(os.path.join(base, name), f"{target}/{name}", overwrite=True)
    for root in (ram, str(local)):
        tf.io.gfile.remove(os.path.join(root, "report.md"))
        _run([f"--workdir={root}", "--report_only"])
    capsys.readouterr()
    for name in ("report.md", "results.csv"):
        ours = tf.io.gfile.GFile(os.path.join(ram, name)).read().replace(ram, "ROOT")
        assert ours == (local / name).read_text().replace(str(local), "ROOT"), name
    figures = sorted(tf.io.gfile.listdir(os.path.join(ram, "figures")))
    assert figures == sorted(os.listdir(local / "figures")) and any(f.endswith(".png") for f in figures)
