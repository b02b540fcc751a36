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

from tests import helpers
from tf_ntk import data
from tf_ntk.cli import common
from tf_ntk.cli import reproduce
from tf_ntk.study import board
from tf_ntk.study import claims
from tf_ntk.study import collect
from tf_ntk.study import plan
from tf_ntk.study import presets
from tf_ntk.study import report

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
def killed_sweep(tmp_path_factory):
    """The smoke preset on the pool of 2 workers, its process killed (SIGKILL) while a phase-2 run
    trains, then rerun to the end (once per test process: session scope, since xdist may interleave
    other modules' tests with this group's). Returns (sweep directory, what the kill left: the
    workers still alive, {finished output: mtime}, the phase-2 runs caught mid-training)."""
    root = tmp_path_factory.mktemp("sweep") / "pool"
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "binaries.reproduce", "--preset=smoke", f"--workdir={root}", "--jobs=2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not glob.glob(str(root / "phase2" / "*" / "resume")) and time.time() < deadline:
        time.sleep(0.2)
    workers = psutil.Process(process.pid).children()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(workers, timeout=10)
    interrupted = [os.path.basename(os.path.dirname(p)) for p in glob.glob(str(root / "phase2" / "*" / "resume"))
                   if not os.path.exists(os.path.join(os.path.dirname(p), "results.json"))]
    left = {"workers": len(workers), "alive": alive, "report": (root / "report.md").exists(),
            "interrupted": interrupted,
            "done": {j.output: os.path.getmtime(j.output) for j in plan.plan(presets.PRESETS["smoke"], str(root))
                     if j.output and os.path.exists(j.output)}}
    _run(["--preset=smoke", f"--workdir={root}", "--jobs=2"])
    return root, left


@pytest.fixture(scope="session")
def pool_sweep(killed_sweep):
    """The smoke sweep's directory (finished: the killed pool resumed)."""
    return killed_sweep[0]


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
    preset = presets.PRESETS["smoke"]
    assert len(evals) == sum(j.name.startswith("eval/") for j in plan.plan(preset, str(pool_sweep)))
    # 3 phase-1 sources x 2 seeds; phase 2: the 2 centered conditions from spawn 0 and 4 conditions
    # (centered clean and adv, linearized and standard clean) x 2 sources from spawn 2, x 2 seeds; the
    # flip source's centered clean child at spawn 2.
    assert len(evals) == 3 * 2 + (2 + 4 * 2) * 2 + 2
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
    # C2's primary, recomputed by hand from the evaluation files: centered clean from spawn 2.
    d = [evals[f"centered-clean-from-adversarial-s{s}-e2"]["robust_accuracy"]
         - evals[f"centered-clean-from-standard-s{s}-e2"]["robust_accuracy"] for s in (0, 1)]
    mean, half = np.mean(d), T_975_1DF * np.std(d, ddof=1) / math.sqrt(2)
    claim = {r["metric"]: float(r["value"]) for r in rows if r["kind"] == "claim" and r["run"] == "C2.1"}
    assert claim["mean"] == pytest.approx(mean, abs=1e-12)
    assert (claim["ci95_low"], claim["ci95_high"]) == pytest.approx((mean - half, mean + half), abs=1e-9)
    assert {r["data"] for r in rows if r["run"] == "C2.1"} == {"primary"}
    # The new job families' rows: transfer accuracies (parent's set, then the sibling's) of every
    # centered child of spawn 2, the output terms of every linearized child, standard phase 2, flip.
    transfer = {(r["run"], r["metric"]): float(r["value"]) for r in rows if r["kind"] == "transfer"}
    terms = {(r["run"], r["metric"]): float(r["value"]) for r in rows if r["kind"] == "output_terms"}
    for run, r in evals.items():
        if run.startswith("centered-") and run.endswith("-e2") and "-from-flip" not in run:
            assert len(r["transfer"]) == 2
            for i, which in enumerate(("parent", "sibling")):
                assert transfer.pop((run, f"transfer_accuracy_{which}")) == r["transfer"][i]["accuracy"]
        if run.startswith("linearized-"):
            for inputs, accuracies in r["output_terms"].items():
                for term, value in accuracies.items():
                    assert terms.pop((run, f"{inputs}_{term}_accuracy")) == value
    assert not transfer and not terms
    assert "standard-clean-from-adversarial-s1-e2" in evals and "flip-s0" in evals
    assert "centered-clean-from-flip-s1-e2" in evals
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
    assert f"tensorboard --logdir {pool_sweep}/tensorboard" in text
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
    assert count == len(machine_rows) == 4 * 1 * len(report.MACHINE_METRICS)  # 4 runs x 1 spawn
    robust = [machine_rows[(f"adversarial-s{s}", 2.0, "robust_accuracy")] for s in (0, 1)]
    line = next(x for x in text.splitlines() if x.startswith("| adversarial | 2 | 2 |"))
    assert f"| {np.mean(robust):.3f} ± {np.std(robust, ddof=1):.3f} |" in line
    for name in ("fig1_kernel_distance", "fig3_phase2_vs_spawn", "fig5_eigen_images", "fig6_kernel_machine",
                 "fig7_velocity", "fig8_heat_maps", "fig9_scree"):
        assert f"](figures/{name}.png)" in text and "![" in text  # embedded, not only linked
    # Self-contained: a paragraph per claim (its primary, the sign that supports it, what was
    # measured and why the verdict), the rules, the resolution, the terms, the measured wall time.
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections[:6] == ["## What the numbers show", "## How a claim is decided", "## The claims table",
                            "## Resolution", "## Terms", "## Figures"]
    claim_verdicts = claims.claims(preset, collect.collect(preset, str(pool_sweep)))
    for claim, (verdict, _, _) in claim_verdicts.items():
        paragraph = next(x for x in text.splitlines() if x.startswith(f"**{claim}: "))
        assert claims.PRIMARY[claim].reading in paragraph and f"**{verdict}**" in paragraph
    n = 32  # the smoke preset's primary_examples
    assert f"evaluated on {n} test images: one image is {1 / n:.4f}" in text
    assert "Wall time measured: " in text


def test_figures_are_valid_pngs_of_the_expected_size(pool_sweep):
    pngs = sorted(glob.glob(os.path.join(pool_sweep, "figures", "*.png")))
    assert [os.path.basename(p) for p in pngs] == [
        "fig1_kernel_distance.png", "fig2_standard_vs_adversarial.png", "fig3_phase2_vs_spawn.png",
        "fig4_alignment_rank.png", "fig5_eigen_images.png", "fig6_kernel_machine.png",
        "fig7_velocity.png", "fig8_heat_maps.png", "fig9_scree.png"]
    for path in pngs:
        with open(path, "rb") as f:
            raw = f.read()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        image = tf.io.decode_png(raw).numpy()
        rows = len(presets.PRESETS["smoke"].phase2_dynamics) if "fig3" in path else 1
        assert image.shape[:2] == (400 * rows, 1000), path  # one 1000 x 400 row of panels each
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


def test_the_board_holds_one_run_per_condition_with_the_seeds_mean_and_range(pool_sweep):
    """tensorboard/phase2/<source>-<dynamics>-<data>: accuracy/robust at every spawn epoch
    (milli-epochs) = the mean over seeds of the runs' own evaluations, the seeds' min and max beside
    it; tensorboard/distance/standard_vs_adversarial: the mean kernel distance per epoch."""
    evals = _evaluations(pool_sweep)
    preset = presets.PRESETS["smoke"]
    root = os.path.join(pool_sweep, board.BOARD_DIR)
    for source in presets.SOURCES:
        for dynamics, data_mode in preset.phase2_conditions():
            values, _ = _scalars(os.path.join(root, "phase2", f"{source}-{dynamics}-{data_mode}"))
            curve = values[board.ROBUST]
            spawns = [e for e in preset.spawn_epochs if e > 0 or dynamics == "centered"]
            assert sorted(curve) == [round(1000 * e) for e in spawns]
            for spawn in spawns:
                runs = [plan.child_name(dynamics, data_mode, source, s, spawn) for s in preset.seed_list()]
                got = [evals[r]["robust_accuracy"] for r in runs]
                step = round(1000 * spawn)
                assert curve[step] == pytest.approx(np.mean(got), abs=1e-6)
                assert values[f"spread/{board.ROBUST}/min"][step] == pytest.approx(min(got), abs=1e-6)
                assert values[f"spread/{board.ROBUST}/max"][step] == pytest.approx(max(got), abs=1e-6)
    values, _ = _scalars(os.path.join(root, "distance", "standard_vs_adversarial"))
    distances = values[board.DISTANCE]
    assert sorted(distances) == [round(1000 * e) for e in preset.kernel_epochs]
    rows = [helpers.read_csv(os.path.join(pool_sweep, "kernels", f"standard-s{s}_vs_adversarial-s{s}",
                                          "comparison.csv")) for s in preset.seed_list()]
    want = np.mean([float(next(r for r in rs if float(r["epoch"]) == 2.0)["distance"]) for rs in rows])
    assert distances[2000] == pytest.approx(want, rel=1e-5)
    _, plugins = _scalars(root)
    assert {"custom_scalars", "hparams"} <= plugins


def test_tensorboard_as_the_readme_says_shows_images_few_runs_and_the_worst_case_metric(pool_sweep):
    """The README's command on the smoke sweep, through TensorBoard's HTTP API: ≤ 40 runs (its
    dashboards select runs on their own only up to 40), the heat maps and eigen-images returned
    as PNG, HParams with the worst-case robust accuracy as a metric and the columns in order."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    command = board.command("runs/reproduce-quick")
    assert command in readme
    argv = shlex.split(command)
    assert argv[:3] == ["tensorboard", "--logdir", "runs/reproduce-quick/tensorboard"]
    with helpers.tensorboard(os.path.join(pool_sweep, board.BOARD_DIR), *argv[3:]) as get:
        runs = get("/data/runs")
        tags = get("/data/plugin/images/tags")
        shown = {}
        for tag in ("figures/fig8_heat_maps", "figures/fig5_eigen_images"):
            found = get(f"/data/plugin/images/images?run=figures&tag={tag}")
            assert len(found) == 1, (tag, found)
            shown[tag] = get(f"/data/plugin/images/individualImage?{found[0]['query']}")
        experiment = get("/data/plugin/hparams/experiment", {"experimentName": ""})
    assert 10 <= len(runs) <= 40, runs
    assert "figures" in tags
    assert all(png.startswith(b"\x89PNG") for png in shown.values())
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics == [board.ROBUST, board.BENIGN]
    assert "worst case" in experiment["metricInfos"][0]["displayName"]
    assert [h["displayName"] for h in experiment["hparamInfos"]] == [
        "spawn source", "spawn epoch", "dynamics", "data", "seeds"]


def test_interrupted_sweep_resumes_to_the_same_numbers(killed_sweep, tmp_path):
    """The sweep behind every test here was killed (SIGKILL) mid-way and rerun: its workers ended
    with it, finished jobs were not redone, and a phase-2 run it caught mid-training ends exactly as
    the same job run uninterrupted in a fresh directory (its losses, its weights, its evaluation)."""
    root, left = killed_sweep
    assert left["workers"] >= 2 and not left["alive"], "worker processes outlived the sweep"
    assert not left["report"], "the sweep finished before it could be killed"
    for output, mtime in left["done"].items():
        assert os.path.getmtime(output) == mtime, f"{output} was recomputed"
    assert left["interrupted"], "no phase-2 run was caught mid-training"
    name = left["interrupted"][0]
    jobs = {j.name: j for j in plan.plan(presets.PRESETS["smoke"], str(root))}
    fresh = tmp_path / "fresh"
    for job in (jobs[f"phase2/{name}"], jobs[f"eval/{name}"]):
        args = [a.replace(f"{root}/phase2/{name}", str(fresh)) for a in job.args]
        error = common.execute(job.module, args, str(tmp_path / "log.txt"))
        assert error is None, (job.name, error)
    with open(root / "phase2" / name / "history.json") as f, open(fresh / "history.json") as g:
        assert [r["loss"] for r in json.load(f)] == [r["loss"] for r in json.load(g)]
    resumed = tf.train.load_checkpoint(str(root / "phase2" / name / "spawn" / "epoch_1" / "ckpt"))
    uninterrupted = tf.train.load_checkpoint(str(fresh / "spawn" / "epoch_1" / "ckpt"))
    keys = [k for k in resumed.get_variable_to_shape_map() if "OPTIMIZER" not in k and "save_counter" not in k]
    assert keys and all(np.array_equal(resumed.get_tensor(k), uninterrupted.get_tensor(k)) for k in keys)
    ours = helpers.read_json(root / "phase2" / name / "eval" / "epoch_1" / "evaluation.json")
    theirs = helpers.read_json(fresh / "eval" / "epoch_1" / "evaluation.json")
    for key in ("benign_accuracy", "robust_accuracy", "per_example"):
        assert ours[key] == theirs[key], key


def test_printed_commands_are_the_pools_jobs_and_run_alone_to_its_numbers(pool_sweep, tmp_path, capsys):
    """--print_commands prints exactly the jobs the pool runs (module and arguments, dependency
    order); its first commands, run one by one in a fresh directory, give the pool's numbers."""
    root = tmp_path / "commands"
    _run(["--preset=smoke", f"--workdir={root}", "--print_commands"])
    lines = capsys.readouterr().out.strip().splitlines()
    jobs = plan.plan(presets.PRESETS["smoke"], str(root), report_args=[
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


@pytest.mark.parametrize("preset, spawns, flip_spawns", [
    ("cifar10", 10, 2),  # 0, 0.125, 0.5, 1, 2, 5, 10, 20, 50, 100; the flip source's: 50, 100
    ("cifar10-full", 108, 51),  # whole epochs 0..100 and 7 fractions; the flip source's: 50..100
])
def test_cifar10_dry_runs_are_offline_and_cost_device_hours(preset, spawns, flip_spawns, monkeypatch, capsys):
    def no_data(*args, **kwargs):
        raise AssertionError("the dry run loaded data")

    monkeypatch.setattr(data, "load", no_data)
    monkeypatch.setattr(data, "load_arrays", no_data)
    _run([f"--preset={preset}", "--dry_run", "--workdir=/nonexistent/sweep"])
    out = capsys.readouterr().out
    kinds = ("phase1", "phase2", "eval", "transfer", "kernels", "kernel_machine", "features", "total")
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if line.split() and line.split()[0] in kinds}
    seeds, conditions = 3, 5
    assert counts["phase1"] == 3 * seeds + 2 * seeds  # standard, adversarial, flip; 2 replicas
    # Spawn 0 (the initialisation, shared): centered clean and adv only.
    assert counts["phase2"] == seeds * (2 + conditions * 2 * (spawns - 1)) + seeds * flip_spawns
    assert counts["eval"] == 3 * seeds + counts["phase2"]
    assert counts["transfer"] == 2 * seeds * (spawns - 1)
    assert counts["kernels"] == 5 * seeds + 4 * seeds  # per run; cross, 2 floors, flip per seed
    assert counts["kernel_machine"] == 2 * seeds  # one per standard/adversarial phase-1 run
    assert counts["total"] == sum(counts[k] for k in kinds[:-1]) + 1
    assert "train-step equivalents" in out
    # Device-hours per device kind: the plan's train-step equivalents × seconds per step / 3600.
    total = float(next(x for x in out.splitlines() if x.startswith("total")).split()[2].replace(",", ""))
    for kind, (seconds, source) in plan.step_seconds(presets.PRESETS[preset]).items():
        line = next(x for x in out.splitlines() if x.startswith(kind + " "))
        assert float(line.split()[2].replace(",", "")) == pytest.approx(total * seconds / 3600, abs=1)
        assert source in line and (source.startswith("estimated") or source.startswith("measured"))
    assert not os.path.exists("/nonexistent/sweep")


@pytest.mark.parametrize("argv, message", [
    (["--preset=smoke", "--phase2_dynamics=kernel"], "phase2_dynamics must be centered"),
    (["--preset=smoke", "--spawn_epochs=0.5,9"], "outside phase 1"),
    (["--preset=smoke", "--spawn_epochs=a,b"], "flag --spawn_epochs=a,b: 'a,b' is not numbers separated by commas"),
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


def _ray_worker_with_open(path):
    """The Ray worker process that has ``path`` open (the job it runs writes its log there)."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "ray::" not in " ".join(proc.info["cmdline"] or ()):
                continue
            if any(f.path == path for f in proc.open_files()):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_the_smoke_preset_on_a_ray_cluster_equals_the_pool_and_a_killed_worker_s_job_resumes(pool_sweep, tmp_path):
    """The smoke preset (its first seed: every job family, half the jobs) through --executor=ray on
    a real local Ray cluster (head and workers as processes), a worker SIGKILLed while it trains a
    phase-1 run past its first checkpoint: Ray retries the task, the run resumes from its checkpoint,
    and every number of results.csv (but the claims', which need two seeds) equals the local pool's
    for the same runs, to the last digit; no job started before the jobs it needs had ended
    (logs/job_times.json)."""
    root = tmp_path / "ray"
    env = dict(os.environ, PYTHONPATH=ROOT)
    with helpers.ray_head() as address:
        process = subprocess.Popen(
            [sys.executable, "-m", "binaries.reproduce", "--preset=smoke", "--seeds=1", f"--workdir={root}",
             "--executor=ray", f"--ray_address={address}"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        killed = None
        deadline = time.time() + 600
        while killed is None and process.poll() is None and time.time() < deadline:
            for resume in glob.glob(str(root / "phase1" / "*" / "resume")):
                run = os.path.dirname(resume)
                if os.path.exists(os.path.join(run, "results.json")):
                    continue
                log = str(root / "logs" / "phase1" / (os.path.basename(run) + ".log"))
                worker = _ray_worker_with_open(log)
                if worker is not None and not os.path.exists(os.path.join(run, "results.json")):
                    worker.kill()
                    killed = os.path.basename(run)
                    break
            time.sleep(0.05)
        _, err = process.communicate(timeout=900)
    assert process.returncode == 0, err
    assert killed is not None, "no phase-1 run was caught between its first checkpoint and its end"
    log = (root / "logs" / "phase1" / f"{killed}.log").read_text()
    assert log.count("$ python -m tf_ntk.cli.train") == 2 and "resuming" in log.split("$ python -m")[-1]
    ours = [r for r in _results(root) if r["kind"] != "claim"]
    pool = {(r["kind"], r["run"], r["metric"], r["epoch"], r["spawn_epoch"]): r for r in _results(pool_sweep)}
    assert len(ours) > 100
    for row in ours:
        assert row == pool[(row["kind"], row["run"], row["metric"], row["epoch"], row["spawn_epoch"])], row
    times = helpers.read_json(str(root / "logs" / "job_times.json"))
    checked = 0
    for job in plan.plan(presets.PRESETS["smoke"].replace(seeds=1), str(root)):
        for dep in job.deps:
            if job.name in times and dep in times:
                assert times[job.name][0] >= times[dep][1], (job.name, dep)
                checked += 1
    assert checked > 30
