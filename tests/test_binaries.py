"""Binaries end to end on digits with tiny settings, in-process through absl flag parsing; event
files read back; flag and input errors asserted by message and exit code; TensorBoard serves the logs.
One subprocess checks the terminal stays free of TensorFlow's C++ noise."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboard.plugins.hparams import plugin_data_pb2
import tensorflow as tf

from tests import helpers
from tf_ntk import data
from tf_ntk import dynamics
from tf_ntk import ntk
from tf_ntk import summaries
from tf_ntk.cli import compute_kernel
from tf_ntk.cli import evaluate
from tf_ntk.cli import kernel_dynamics
from tf_ntk.cli import kernel_machine
from tf_ntk.cli import results
from tf_ntk.cli import train
from tf_ntk.cli import visualize_features
from tf_ntk.robust import evaluation
from tf_ntk.robust import sanity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--width=4", "--eps=0.2", "--attack_steps=2", "--eval_attack_steps=2", "--batch_size=256"]


_run = helpers.run_binary
_run_app = helpers.run_app


def _events(directory):
    """{tag: {step: value or None, ...}} and {tag: plugin} from every event file under ``directory``."""
    values, plugins = {}, {}
    for path in glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                plugin = v.metadata.plugin_data.plugin_name or plugins.get(v.tag)
                plugins[v.tag] = plugin
                value = None
                if plugin == "scalars":
                    value = float(tf.make_ndarray(v.tensor))
                values.setdefault(v.tag, {})[event.step] = value
    return values, plugins


def _hparams(directory):
    """(session start info, experiment) of the HParams summaries in ``directory``'s event files."""
    session = experiment = None
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "hparams":
                    content = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    if content.HasField("session_start_info"):
                        session = content.session_start_info
                    if content.HasField("experiment"):
                        experiment = content.experiment
    return session, experiment


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Phase-1 standard and adversarial runs (2 epochs, spawns at 0, 0.5, 1, 2, online kernels)."""
    root = tmp_path_factory.mktemp("runs")
    common_args = TINY + ["--epochs=2", "--save_epochs=0,0.5,1,2", "--kernel_every=1",
                          "--kernel_at_spawns", "--per_class=2"]
    _run(train, [f"--workdir={root}/std"] + common_args)
    _run(train, [f"--workdir={root}/adv", "--data_mode=adv", "--adv_mode=madry"] + common_args)
    return root


def test_train_writes_checkpoints_results_and_tensorboard(runs, capsys):
    std = os.path.join(runs, "std")
    assert sorted(os.listdir(os.path.join(std, "spawn"))) == [
        "epoch_0", "epoch_0.5", "epoch_1", "epoch_2"]
    results = helpers.read_json(os.path.join(std, "results.json"))
    assert 0.0 <= results["robust_accuracy_quick"] <= results["benign_accuracy"] <= 1.0
    assert results["quick_attack"]["steps"] == 2 and "robust_accuracy" not in results  # --eval_attack_steps
    resolved = helpers.read_json(os.path.join(std, "flags.json"))
    assert resolved["epochs"] == 2 and resolved["resolved_config"]["lr"] == 0.1
    values, plugins = _events(std)
    assert set(values["train/loss"]) == {1000, 2000}
    assert set(values["test/robust_accuracy_quick"]) == {1000, 2000}
    # Kernel metrics at epoch 0, the fractional spawn 0.5 and whole epochs (milli-epoch steps).
    assert set(values["online_kernel/distance_to_init"]) == {0, 500, 1000, 2000}
    assert values["online_kernel/distance_to_init"][0] == pytest.approx(0.0, abs=1e-6)
    assert values["online_kernel/distance_to_init"][2000] > 0
    assert plugins["online_kernel/heat_map"] == "images"
    assert plugins["online_kernel/spectrum_log10"] == "histograms"
    assert plugins["config"] == "text"
    # HParams: the trial is named after the run; spawn source and epoch (phase 1: the init, 0),
    # dynamics, data and seed are the first columns (TensorBoard sorts by name: ranked names, plain
    # display names); the evaluation's numbers are the first metrics, the eigenvalue scalars none.
    session, experiment = _hparams(std)
    assert session.group_name == "std"
    assert session.hparams["06_phase"].number_value == 1
    assert session.hparams["03_dynamics"].string_value == "standard"
    assert session.hparams["01_spawn_source"].string_value == "init"
    assert session.hparams["02_spawn_epoch"].number_value == 0
    metrics = [m.name.tag for m in experiment.metric_infos]
    assert metrics[:2] == ["eval/robust_accuracy", "eval/benign_accuracy"]
    assert "online_kernel/distance_to_init" in metrics  # this run logs its kernel
    assert not any("eigenvalue" in m for m in metrics)
    names = [h.name for h in experiment.hparam_infos]
    assert names[:5] == ["01_spawn_source", "02_spawn_epoch", "03_dynamics", "04_data_mode", "05_seed"]
    assert names == sorted(names)  # the order TensorBoard shows
    assert [h.display_name for h in experiment.hparam_infos][:5] == [
        "spawn_source", "spawn_epoch", "dynamics", "data_mode", "seed"]
    assert any(p == "hparams" for p in plugins.values())
    # A finished run is refused without --overwrite, with one line and exit status 2.
    code, err = _run_app(train, [f"--workdir={std}"] + TINY + ["--epochs=2"], capsys)
    assert code == 2 and err.strip() == (
        f"train: error: {std} holds a finished run; pass --overwrite to replace it or choose "
        "another --workdir")


def test_phase2_centered_from_a_spawn_then_evaluate_and_transfer(runs, monkeypatch):
    adv, std = os.path.join(runs, "adv"), os.path.join(runs, "std")
    cen = os.path.join(runs, "adv-centered")
    _run(train, [f"--workdir={cen}", f"--spawn={adv}/spawn/epoch_0.5", "--dynamics=centered",
                 "--epochs=1", "--save_epochs=0,1"] + TINY)
    meta = helpers.read_json(os.path.join(cen, "spawn", "epoch_1", "meta.json"))
    assert meta["config"]["dynamics"] == "centered" and meta["config"]["lr"] == 0.01
    assert meta["config"]["spawn"].endswith("adv/spawn/epoch_0.5")
    # evaluate: protocol-style attack (shortened), sanity report, saved set, transfer.
    adv_set = os.path.join(runs, "std_adv.npz")
    _run(evaluate, [f"--checkpoint={std}/spawn/epoch_2", "--eps=0.2", "--attack_steps=3",
                    f"--save_adversarial={adv_set}", "--max_examples=64", "--attack=protocol"])
    std_eval = helpers.read_json(os.path.join(std, "eval", "epoch_2", "evaluation.json"))
    assert std_eval["robust_accuracy"] <= std_eval["benign_accuracy"]
    _run(evaluate, [f"--checkpoint={std}/spawn/epoch_2", "--eps=0.2", "--attack_steps=3",
                    f"--transfer_from={adv_set}", "--max_examples=64", f"--workdir={runs}/self_transfer",
                    "--attack=protocol"])
    self_transfer = helpers.read_json(os.path.join(runs, "self_transfer", "evaluation.json"))
    # Replaying a set against the model that made it reproduces its robust accuracy.
    assert self_transfer["transfer_accuracy"] == pytest.approx(std_eval["robust_accuracy"])
    # Protocol and strong side by side (a shortened strong ensemble), and the sanity report on it.
    full = helpers.record_crafts(monkeypatch)
    bases, report = [], sanity.sanity_checks
    monkeypatch.setattr(sanity, "sanity_checks", lambda *a, **kw: bases.append(kw.get("base")) or report(*a, **kw))
    _run(evaluate, [f"--checkpoint={cen}/spawn/epoch_1", "--eps=0.2", "--attack_steps=3",
                    "--max_examples=64", "--output_terms", "--sanity_checks", "--strong_restarts=1",
                    "--square_queries=20", "--blackbox_queries=20"])
    monkeypatch.undo()
    cen_eval = helpers.read_json(os.path.join(cen, "eval", "epoch_1", "evaluation.json"))
    assert cen_eval["dynamics"] == "centered" and "checks" in cen_eval["sanity_checks"]
    # The headline numbers are in the evaluated run's own events (its scalars and HParams row), at
    # the checkpoint's epoch; a protocol-only pass (std above) is not the run's robust accuracy.
    own = summaries.read_events(cen)
    assert own[("eval/robust_accuracy", 1000)] == [pytest.approx(cen_eval["robust_accuracy"])]
    assert own[("eval/benign_accuracy", 1000)] == [pytest.approx(cen_eval["benign_accuracy"])]
    assert own[("eval/robust_accuracy_strong", 1000)] == [pytest.approx(cen_eval["robust"]["strong"]["accuracy"])]
    assert not any(tag.startswith("eval/") for tag, _ in summaries.read_events(std))
    session, experiment = _hparams(cen)
    assert session.hparams["01_spawn_source"].string_value == "adv"
    assert session.hparams["02_spawn_epoch"].number_value == 0.5
    assert "online_kernel/distance_to_init" not in [m.name.tag for m in experiment.metric_infos]
    robust = cen_eval["robust"]
    assert set(robust) == {"protocol", "strong", "sanity"} and robust["strong"]["attack"]["name"] == "strong"
    assert cen_eval["robust_accuracy"] <= min(r["accuracy"] for r in robust.values())
    assert cen_eval["sanity_checks"]["attack"].startswith("strong")
    # The report starts from the evaluation's own strong outcome (not a second run of it).
    assert len(bases) == 1 and bases[0] is not None
    assert bases[0].accuracy == robust["strong"]["accuracy"] and len(bases[0].members) == 11
    assert cen_eval["sanity_checks"]["robust"] == robust["strong"]["accuracy"]
    assert cen_eval["sanity_checks"]["benign"] == cen_eval["benign_accuracy"]
    # The sanity report's stronger attacks count: robust = every attack's bits and the report's.
    bits = {k: evaluation.decode_bits(v) for k, v in cen_eval["per_example"].items()}
    assert np.array_equal(bits["robust"], bits["protocol"] & bits["strong"] & bits["sanity"])
    assert cen_eval["robust_accuracy"] == np.mean(bits["robust"])
    assert robust["sanity"]["accuracy"] == cen_eval["sanity_checks"]["worst_case"] == np.mean(bits["sanity"])
    terms = np.load(os.path.join(cen, "eval", "epoch_1", "output_terms.npz"))
    assert terms["kernel_clean"].shape == terms["spawn_adv"].shape == (64, 10)
    # The accuracies of the saved terms; a centered model's output is its kernel term.
    assert cen_eval["output_terms"] == evaluation.output_term_accuracies(dict(terms))
    assert cen_eval["output_terms"]["clean"]["kernel_term"] == cen_eval["benign_accuracy"]
    values, _ = _events(os.path.join(cen, "eval", "epoch_1"))
    assert "eval/robust_accuracy" in values and "eval/robust_accuracy_strong" in values
    assert not os.path.exists(os.path.join(cen, "eval", "epoch_1", "partial"))
    # Killed inside its sanity report, the same evaluation resumes and gives the same record.
    args = [f"--checkpoint={cen}/spawn/epoch_1", "--eps=0.2", "--attack_steps=3", "--max_examples=64",
            "--output_terms", "--sanity_checks", "--strong_restarts=1", "--square_queries=20",
            "--blackbox_queries=20", f"--workdir={runs}/resumed_eval"]
    helpers.record_crafts(monkeypatch, stop_after=12)
    with pytest.raises(KeyboardInterrupt):
        _run(evaluate, args)
    assert os.listdir(os.path.join(runs, "resumed_eval", "partial"))
    assert not os.path.exists(os.path.join(runs, "resumed_eval", "evaluation.json"))
    monkeypatch.undo()
    rerun = helpers.record_crafts(monkeypatch)
    _run(evaluate, args)
    resumed = helpers.read_json(os.path.join(runs, "resumed_eval", "evaluation.json"))
    for key in ("benign_accuracy", "robust_accuracy", "robust", "per_example", "sanity_checks", "output_terms"):
        assert resumed[key] == cen_eval[key], key
    # The twelve attacks crafted before the kill were not crafted again.
    assert len(full) > 20 and len(rerun) == len(full) - 12
    assert not os.path.exists(os.path.join(runs, "resumed_eval", "partial"))


def _bits(text):
    return evaluation.decode_bits(text)


def test_evaluate_records_per_example_outcomes_and_transfer_from_several_sets(runs, capsys):
    """Sets saved from two checkpoints replayed against a third (the first set twice): each transfer
    accuracy and its per-example string are the model's own predictions on the set; the per-example
    strings' means are the recorded accuracies, and "robust" is the AND of the attacks'."""
    std = os.path.join(runs, "std")
    short = ["--eps=0.2", "--attack_steps=2", "--max_examples=32"]
    sets = []
    for name in ("std", "adv"):
        sets.append(os.path.join(runs, f"transfer_{name}.npz"))
        _run(evaluate, [f"--checkpoint={runs}/{name}/spawn/epoch_2", "--attack=protocol",
                        f"--save_adversarial={sets[-1]}", f"--workdir={runs}/transfer_source_{name}"]
             + short)
    checkpoint = f"{std}/spawn/epoch_1"
    workdir = os.path.join(runs, "transfer_three")
    capsys.readouterr()
    _run(evaluate, [f"--checkpoint={checkpoint}", "--attack=protocol,strong", "--strong_restarts=1",
                    "--square_queries=10", f"--transfer_from={sets[0]},{sets[1]},{sets[0]}",
                    f"--workdir={workdir}", "--eps=0.06", "--attack_steps=2", "--max_examples=32"])
    out = capsys.readouterr().out
    r = helpers.read_json(os.path.join(workdir, "evaluation.json"))
    model, _ = dynamics.load_model(checkpoint)
    # Per example: one character per evaluated example, each string's mean its recorded accuracy.
    per_example = r["per_example"]
    assert set(per_example) == {"benign", "robust", "protocol", "strong"}
    assert all(len(v) == r["examples"] == 32 for v in per_example.values())
    assert np.mean(_bits(per_example["benign"])) == r["benign_accuracy"]
    assert np.mean(_bits(per_example["robust"])) == r["robust_accuracy"]
    for name in ("protocol", "strong"):
        assert np.mean(_bits(per_example[name])) == r["robust"][name]["accuracy"]
    np.testing.assert_array_equal(_bits(per_example["robust"]),
                                  _bits(per_example["protocol"]) & _bits(per_example["strong"]))
    assert not (_bits(per_example["robust"]) & ~_bits(per_example["benign"])).any()
    assert r["robust_accuracy"] < r["benign_accuracy"]
    # The benign outcome is the model's prediction on the clean images (the first 32 of the split,
    # which the saved set holds).
    first = evaluation.load_adversarial(sets[0])
    clean = np.argmax(model(first["x"], training=False).numpy(), -1) == first["y"]
    np.testing.assert_array_equal(_bits(per_example["benign"]), clean)
    # Transfer: one entry per set, in the order given, each recomputed by hand.
    transfer = r["transfer"]
    assert [t["from"] for t in transfer] == [sets[0], sets[1], sets[0]]
    accuracies = []
    for t in transfer:
        saved = evaluation.load_adversarial(t["from"])
        hits = np.argmax(model(saved["x_adv"], training=False).numpy(), -1) == saved["y"]
        assert t["examples"] == len(t["correct"]) == 32
        np.testing.assert_array_equal(_bits(t["correct"]), hits)
        assert t["accuracy"] == np.mean(hits)
        accuracies.append(t["accuracy"])
    assert transfer[0] == transfer[2]
    # The single-set keys are written for one set only.
    assert not {"transfer_accuracy", "transfer_from", "transfer_examples"} & set(r)
    lines = [line for line in out.splitlines() if line.startswith("transfer accuracy")]
    assert lines == [f"transfer accuracy {a:.4f}  (set {p}, 32 examples)"
                     for a, p in zip(accuracies, [sets[0], sets[1], sets[0]])]
    values, _ = _events(workdir)
    for i, a in enumerate(accuracies):
        assert list(values[f"eval/transfer_accuracy/{i}"].values()) == [pytest.approx(a)]
    # One set: the list of one and the earlier keys, the same numbers.
    _run(evaluate, [f"--checkpoint={checkpoint}", "--attack=protocol", f"--transfer_from={sets[1]}",
                    f"--workdir={runs}/transfer_one"] + short)
    one = helpers.read_json(os.path.join(runs, "transfer_one", "evaluation.json"))
    assert one["transfer"] == [transfer[1]]
    assert (one["transfer_accuracy"], one["transfer_from"], one["transfer_examples"]) == (
        transfer[1]["accuracy"], sets[1], 32)


def test_output_terms_of_a_phase1_checkpoint_under_linearized_dynamics(runs):
    """At θ = θ_s the kernel term is exactly 0, so its argmax is class 0 everywhere: its accuracy is
    the share of label 0; the sum is the spawn term, and the model's output."""
    std = os.path.join(runs, "std")
    workdir = os.path.join(runs, "lin_terms")
    _run(evaluate, [f"--checkpoint={std}/spawn/epoch_2", "--eval_dynamics=linearized", "--eps=0.2",
                    "--attack_steps=2", "--max_examples=32", "--attack=protocol", "--output_terms",
                    f"--workdir={workdir}"])
    r = helpers.read_json(os.path.join(workdir, "evaluation.json"))
    terms = dict(np.load(os.path.join(workdir, "output_terms.npz")))
    assert r["dynamics"] == "linearized" and set(r["output_terms"]) == {"clean", "adversarial"}
    assert not terms["kernel_clean"].any() and not terms["kernel_adv"].any()
    share_of_0 = float(np.mean(terms["y"] == 0))
    for inputs in ("clean", "adversarial"):
        got = r["output_terms"][inputs]
        assert got["kernel_term"] == share_of_0
        assert got["sum"] == got["spawn_term"]
    assert r["output_terms"]["clean"]["sum"] == r["benign_accuracy"]
    assert r["output_terms"]["adversarial"]["sum"] < r["output_terms"]["clean"]["sum"]


def test_compute_kernel_and_kernel_dynamics_over_two_runs(runs):
    std, adv = os.path.join(runs, "std"), os.path.join(runs, "adv")
    _run(compute_kernel, [f"--checkpoint={std}/spawn/epoch_1", "--per_class=2", "--logit=3"])
    saved = np.load(os.path.join(std, "kernels", "epoch_1", "kernel.npz"))
    assert saved["kernel"].shape == (20, 20) and int(saved["logit"]) == 3
    np.testing.assert_array_equal(saved["labels"], np.repeat(np.arange(10), 2))
    values, plugins = _events(os.path.join(std, "kernels", "epoch_1"))
    assert plugins["kernel/heat_map"] == "images" and 1000 in values["kernel/trace"]

    out = os.path.join(runs, "dynamics")
    argv = [f"--run={std}", f"--compare_run={adv}", "--per_class=2", "--test_per_class=1",
            f"--workdir={out}"]
    _run(kernel_dynamics, argv)
    values, plugins = _events(os.path.join(out, "tb", "std"))
    assert set(values["kernel/distance_to_init"]) == {0, 500, 1000, 2000}
    assert values["kernel/distance_to_final"][2000] == pytest.approx(0.0, abs=1e-6)
    assert set(values["kernel/velocity"]) == {500, 1000, 2000}
    for tag in ("target_alignment", "cka_to_init", "effective_rank", "kernel_regression_accuracy",
                "parameter_distance", "eigenvalue_0"):
        assert f"kernel/{tag}" in values
    assert plugins["kernel/spectrum_log10"] == "histograms"
    comparison, _ = _events(os.path.join(out, "tb", "comparison"))
    assert set(comparison["comparison/distance"]) == {0, 500, 1000, 2000}
    # Both runs start from the same seed: identical initial kernels.
    assert comparison["comparison/distance"][0] == pytest.approx(0.0, abs=1e-6)
    rows = helpers.read_csv(os.path.join(out, "kernel_dynamics.csv"))
    assert [(r["run"], float(r["epoch"])) for r in rows] == [
        (run, e) for run in ("std", "adv") for e in (0, 0.5, 1, 2)]
    # The cached kernels make a rerun skip the computation and reproduce the CSV.
    cached = os.path.join(out, "kernels", "std", "epoch_1.npz")
    stamp = os.path.getmtime(cached)
    _run(kernel_dynamics, argv)
    assert os.path.getmtime(cached) == stamp
    assert helpers.read_csv(os.path.join(out, "kernel_dynamics.csv")) == rows


def test_kernel_machine_walks_the_spawns_and_matches_the_closed_form(runs, capsys):
    """Every spawn's benign and training accuracy equal those of k(x, X)(K + λI)⁻¹Y from the float64
    full empirical NTK; robust ≤ each attack's; CSV, JSON and TensorBoard agree; a finished walk is
    refused; a rerun reuses the per-spawn results."""
    std = os.path.join(runs, "std")
    out = os.path.join(runs, "km")
    argv = [f"--phase1_run={std}", f"--workdir={out}", "--at_epochs=0,2", "--train_per_class=3",
            "--test_examples=40", "--eps=0.2", "--attack_steps=2", "--strong_restarts=1",
            "--square_queries=10", "--solve_dtype=float64", "--batch_size=256"]
    _run(kernel_machine, argv)
    result = helpers.read_json(os.path.join(out, "kernel_machine.json"))
    rows = result["rows"]
    assert [r["epoch"] for r in rows] == [0.0, 2.0] and result["examples"] == 40
    x, y = data.load_arrays("digits", "train")
    idx = data.class_balanced_indices(y, 3, seed=0, num_classes=10)
    x, y = x[idx], y[idx]
    xt, yt = data.load_arrays("digits", "test")
    xt, yt = xt[:40], yt[:40]
    for row in rows:
        model, _ = dynamics.load_model(os.path.join(std, "spawn", f"epoch_{row['epoch']:g}"))
        k = ntk.empirical_ntk(model, np.concatenate([x, xt]), kind="full", dtype="float64",
                              implementation="jacobian").numpy().transpose(0, 2, 1, 3).reshape(700, 700)
        k_train, k_test = k[:300, :300], k[300:, :300]
        lam = 1e-3 * np.trace(k_train) / 300
        assert row["ridge"] == pytest.approx(lam, rel=1e-9) and row["solver"] == "direct"
        alpha = np.linalg.solve(k_train + lam * np.eye(300), np.eye(10)[y].ravel())
        assert row["train_accuracy"] == np.mean(np.argmax((k_train @ alpha).reshape(30, 10), 1) == y)
        assert row["benign_accuracy"] == np.mean(np.argmax((k_test @ alpha).reshape(40, 10), 1) == yt)
        assert row["robust_accuracy"] <= min(row["robust_accuracy_protocol"], row["robust_accuracy_strong"])
        assert row["robust_accuracy_strong"] <= row["benign_accuracy"]
    table = helpers.read_csv(os.path.join(out, "kernel_machine.csv"))
    assert [float(r["robust_accuracy"]) for r in table] == [r["robust_accuracy"] for r in rows]
    values, _ = _events(out)
    assert values["kernel_machine/benign_accuracy"] == pytest.approx(
        {0: rows[0]["benign_accuracy"], 2000: rows[1]["benign_accuracy"]})
    code, err = _run_app(kernel_machine, argv, capsys)
    assert code == 2 and "holds a finished run; pass --overwrite" in err
    # Without the final record, a rerun takes every spawn's result from spawns/ (its timing included).
    os.remove(os.path.join(out, "kernel_machine.json"))
    _run(kernel_machine, argv)
    assert helpers.read_json(os.path.join(out, "kernel_machine.json"))["rows"] == rows


def test_visualize_features_writes_images(runs, capsys):
    std = os.path.join(runs, "std")
    _run(visualize_features, [f"--checkpoint={std}/spawn/epoch_2", "--per_class=2", "--num_eigen=1",
                              "--feature_steps=5", "--logit=1"])
    out = os.path.join(std, "features", "epoch_2")
    assert sorted(p for p in os.listdir(out) if p.endswith(".png")) == [
        "eig0+.png", "eig0-.png", "eigen_images.png", "w.png"]
    saved = np.load(os.path.join(out, "eigen_images.npz"))
    assert saved["images"].shape == (3, 8, 8, 1)
    assert saved["images"].min() >= 0 and saved["images"].max() <= 1
    assert saved["kernel"].dtype == np.float64  # eigen-images default to a float64 kernel
    # Every result says whether its search reached the sign sought, and the output says so too.
    signs = {"eig0+": 1, "eig0-": -1, "w": 1}
    for name, cos, reached in zip(saved["names"], saved["cosines"], saved["reached"]):
        assert bool(reached) == (signs[str(name)] * cos > 0)
    printed = capsys.readouterr().out
    assert "logit 1 (--logit)" in printed
    assert ("warning: the search did not reach" in printed) == (not saved["reached"].all())
    _, plugins = _events(out)
    assert plugins["eigen_images/logit_1"] == "images"


def test_checkpoint_of_another_model_is_refused(runs, tmp_path, capsys):
    workdir = tmp_path / "p2"
    code, err = _run_app(train, [f"--workdir={workdir}", f"--spawn={runs}/std/spawn/epoch_1",
                                 "--model=mlp", "--epochs=1"], capsys)
    assert code == 2 and "holds cnn(width=4)" in err and "not mlp()" in err
    assert not workdir.exists()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "meta.json").write_text("{not json")
    (tmp_path / "corrupt" / "ckpt.index").write_text("")
    code, err = _run_app(evaluate, [f"--checkpoint={tmp_path}/corrupt"], capsys)
    assert code == 2 and err.startswith(f"evaluate: error: corrupt checkpoint record {tmp_path}/corrupt")


def test_results_table_lists_every_run(runs, capsys):
    std = os.path.join(runs, "std")
    _run(evaluate, [f"--checkpoint={std}/spawn/epoch_2", "--eps=0.2", "--attack_steps=2",
                    "--max_examples=32", "--strong_restarts=1", "--square_queries=10",
                    f"--workdir={std}/eval/table", "--overwrite"])
    measured = helpers.read_json(os.path.join(std, "eval", "table", "evaluation.json"))
    capsys.readouterr()
    _run(results, [f"--root={runs}"])
    out = capsys.readouterr().out
    lines = out.split("\n\n")[0].splitlines()
    header = lines[0].split()
    # Every attack any evaluation under the root ran is a column (another test's run adds "sanity").
    assert header[:7] == ["run", "phase", "dynamics", "data", "from", "benign", "quick"]
    assert header[-1] == "worst" and {"protocol", "strong"} <= set(header[7:-1])
    by_run = {line.split()[0]: line.split() for line in lines[2:]}
    want = helpers.read_json(os.path.join(std, "results.json"))
    assert by_run["std"][1:4] == ["1", "standard", "clean"]
    cell = lambda column: float(by_run["std"][header.index(column) - 1])  # noqa: E731 ("from" is empty)
    assert cell("benign") == pytest.approx(want["benign_accuracy"], abs=5e-4)
    assert cell("quick") == pytest.approx(want["robust_accuracy_quick"], abs=5e-4)
    assert cell("protocol") == pytest.approx(measured["robust"]["protocol"]["accuracy"], abs=5e-4)
    assert cell("strong") == pytest.approx(measured["robust"]["strong"]["accuracy"], abs=5e-4)
    assert cell("worst") == pytest.approx(measured["robust_accuracy"], abs=5e-4)
    assert by_run["adv"][3:5] == ["adv", "(madry)"]
    assert "quick: the estimate logged during training (PGD-2, one start)" in out


def test_summaries_step_is_milli_epochs():
    assert [summaries.epoch_step(e) for e in (0, 0.125, 1, 2.5)] == [0, 125, 1000, 2500]


def test_tensorboard_serves_the_scalars_images_and_histograms(runs):
    with helpers.tensorboard(runs, "--load_fast=false") as get:
        tags = {p: get(f"/data/plugin/{p}/tags") for p in ("scalars", "images", "histograms")}
    assert "train/loss" in tags["scalars"]["std"]
    assert "online_kernel/distance_to_init" in tags["scalars"]["std"]
    assert "online_kernel/heat_map" in tags["images"]["std"]
    assert "online_kernel/spectrum_log10" in tags["histograms"]["std"]


def test_subprocess_is_quiet_and_bad_input_is_one_line(tmp_path):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "binaries.train", "--dataset=cifar10", f"--data_dir={tmp_path}",
         f"--workdir={tmp_path}/run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("train: error: data set 'cifar10' is not prepared")
    assert "tfds build cifar10" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_with_one_line_and_keeps_no_bad_checkpoint(tmp_path, capsys):
    workdir = tmp_path / "diverged"
    code, err = _run_app(train, [f"--workdir={workdir}", "--lr=1000", "--epochs=2", "--save_epochs=",
                                 "--eval_every=0"] + TINY[:1] + TINY[-1:], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "training diverged: non-finite" in err and "at epoch 1, step" in err
    assert not (workdir / "results.json").exists()


def test_a_kill_in_the_final_evaluation_window_resumes_without_retraining(tmp_path):
    """SIGKILL after the last epoch's resume record but before results.json: the same command only
    evaluates (nothing retrained, the same numbers)."""
    argv = [f"--workdir={tmp_path}/run", "--epochs=1", "--save_epochs=1", "--eval_every=0"] + TINY
    _run(train, argv)
    results = tmp_path / "run" / "results.json"
    first = json.loads(results.read_text())
    kept = {p: os.path.getmtime(p) for p in glob.glob(f"{tmp_path}/run/**/*", recursive=True)
            if os.path.isfile(p) and not p.endswith(("results.json", "flags.json"))
            and "events" not in p}
    results.unlink()  # the state a kill in the window leaves
    _run(train, argv)
    again = json.loads(results.read_text())
    assert again["benign_accuracy"] == first["benign_accuracy"]
    assert again["robust_accuracy_quick"] == first["robust_accuracy_quick"]
    assert all(os.path.getmtime(p) == t for p, t in kept.items()), "the run was retrained"


def test_a_refused_run_leaves_its_directory_untouched(tmp_path, capsys):
    argv = [f"--workdir={tmp_path}/run", "--epochs=1", "--save_epochs=1", "--eval_every=0"] + TINY
    _run(train, argv)
    flags_json = (tmp_path / "run" / "flags.json").read_bytes()
    (tmp_path / "run" / "results.json").unlink()  # unfinished: a rerun would resume it
    code, err = _run_app(train, argv + ["--seed=5"], capsys)
    assert code == 2 and "holds a run with another configuration (differs in: seed)" in err
    assert (tmp_path / "run" / "flags.json").read_bytes() == flags_json


def test_sigterm_keeps_the_run_resumable_and_the_rerun_is_bit_identical(tmp_path):
    argv = ["--epochs=4", "--save_epochs=4", "--eval_every=0", "--data_mode=adv"] + TINY
    workdir = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "binaries.train", f"--workdir={workdir}"] + argv, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    deadline = time.time() + 120
    while not (workdir / "resume" / "meta.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == [
        "train: interrupted by SIGTERM; the work done is kept (train checkpoints the step it reached): "
        "rerun the same command to resume"]
    assert not (workdir / "results.json").exists()
    meta = json.loads((workdir / "resume" / "meta.json").read_text())
    assert 1 <= len(meta["history"]) < 4  # stopped during training, at a step boundary
    # The rerun and the uninterrupted run are processes like the first (not this test process, whose
    # TensorFlow has two logical CPU devices): bit-identity is promised for one environment.
    for run_dir in (workdir, tmp_path / "straight"):
        subprocess.run([sys.executable, "-m", "binaries.train", f"--workdir={run_dir}"] + argv, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL, check=True)
    a = tf.train.load_checkpoint(str(workdir / "spawn" / "epoch_4" / "ckpt"))
    b = tf.train.load_checkpoint(str(tmp_path / "straight" / "spawn" / "epoch_4" / "ckpt"))
    names = [n for n in a.get_variable_to_shape_map() if "model" in n]
    assert names and all(np.array_equal(a.get_tensor(n), b.get_tensor(n)) for n in names)


def test_data_seed_keys_the_data_order_and_attack_starts_and_is_recorded(tmp_path, monkeypatch):
    """--seed initialises, --data_seed (default --seed) seeds the shuffling and the quick evaluation's
    attack, in phase 1 and phase 2, and lands in flags.json, the results and the HParams."""
    seeds = []  # (what, seed) of every training-data load and quick robust evaluation
    load, robust = data.load, train.evaluation.robust_accuracy

    def recording_load(name, split, **kw):
        if split == "train":
            seeds.append(("train", kw.get("seed")))
        return load(name, split, **kw)

    def recording_robust(*args, **kw):
        seeds.append(("attack", kw.get("seed")))
        return robust(*args, **kw)

    monkeypatch.setattr(data, "load", recording_load)
    monkeypatch.setattr(train.evaluation, "robust_accuracy", recording_robust)
    argv = ["--epochs=1", "--save_epochs=0", "--eval_every=0"] + TINY
    _run(train, [f"--workdir={tmp_path}/d5", "--seed=3", "--data_seed=5"] + argv)
    assert seeds and set(seeds) == {("train", 5), ("attack", 5)}
    seeds.clear()
    _run(train, [f"--workdir={tmp_path}/d3", "--seed=3"] + argv)
    assert seeds and set(seeds) == {("train", 3), ("attack", 3)}
    # The same --seed: the same initialisation.
    a = tf.train.load_checkpoint(str(tmp_path / "d5" / "spawn" / "epoch_0" / "ckpt"))
    b = tf.train.load_checkpoint(str(tmp_path / "d3" / "spawn" / "epoch_0" / "ckpt"))
    names = [n for n in a.get_variable_to_shape_map() if "model" in n]
    assert names and all(np.array_equal(a.get_tensor(n), b.get_tensor(n)) for n in names)
    flags_json = helpers.read_json(os.path.join(tmp_path, "d5", "flags.json"))
    assert flags_json["seed"] == 3 and flags_json["data_seed"] == 5
    assert flags_json["resolved_config"]["data_seed"] == 5
    results = helpers.read_json(os.path.join(tmp_path, "d5", "results.json"))
    assert results["seed"] == 3 and results["data_seed"] == 5 and results["flags"]["data_seed"] == 5
    session, _ = _hparams(os.path.join(tmp_path, "d5"))
    assert session.hparams["05_seed"].number_value == 3 and session.hparams["09_data_seed"].number_value == 5
    default = helpers.read_json(os.path.join(tmp_path, "d3", "results.json"))
    assert default["flags"]["data_seed"] is None and default["data_seed"] == 3
    assert "data_seed" not in default["flags"]["resolved_config"]  # recorded as before the flag
    # Phase 2: the initialisation is the spawn's, --data_seed seeds the rest just the same.
    seeds.clear()
    _run(train, [f"--workdir={tmp_path}/p2", f"--spawn={tmp_path}/d3/spawn/epoch_0", "--dynamics=centered",
                 "--seed=3", "--data_seed=7"] + argv)
    assert seeds and set(seeds) == {("train", 7), ("attack", 7)}
    assert helpers.read_json(os.path.join(tmp_path, "p2", "results.json"))["data_seed"] == 7
