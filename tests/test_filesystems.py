"""Run directories on a file system that is not POSIX: TensorFlow's in-memory ``ram://`` (no atomic
rename, like gs://). The whole chain — train with spawns, a kill in the final-evaluation window and
its resume, phase 2, evaluate with a saved adversarial set, compute_kernel, kernel_dynamics, results —
runs there and gives the numbers it gives on local disk; checkpoints commit by version."""

import os
import uuid

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tf_ntk import checkpoints
from tf_ntk import models
from tf_ntk import rundir
from tf_ntk.cli import common
from tf_ntk.cli import compute_kernel
from tf_ntk.cli import evaluate
from tf_ntk.cli import kernel_dynamics
from tf_ntk.cli import results
from tf_ntk.cli import train

TINY = ["--width=4", "--eps=0.2", "--attack_steps=2", "--eval_attack_steps=2", "--batch_size=256"]


def _chain(root, capsys):
    """Runs the chain under ``root``; returns what it measured, read back through tf.io.gfile."""
    run = helpers.run_binary
    run(train, [f"--workdir={root}/std", "--epochs=2", "--save_epochs=0,1,2", "--eval_every=0"] + TINY)
    first = rundir.read_json(f"{root}/std/results.json")
    tf.io.gfile.remove(f"{root}/std/results.json")  # what a kill in the final evaluation leaves
    run(train, [f"--workdir={root}/std", "--epochs=2", "--save_epochs=0,1,2", "--eval_every=0"] + TINY)
    assert rundir.read_json(f"{root}/std/results.json")["benign_accuracy"] == first["benign_accuracy"]
    run(train, [f"--workdir={root}/cen", f"--spawn={root}/std/spawn/epoch_1", "--dynamics=centered",
                "--epochs=1", "--save_epochs=1", "--eval_every=0"] + TINY)
    run(evaluate, [f"--checkpoint={root}/std/spawn/epoch_2", "--attack=protocol", "--attack_steps=2",
                   "--max_examples=16", "--eps=0.2", f"--save_adversarial={root}/adv.npz"])
    run(evaluate, [f"--checkpoint={root}/cen/spawn/epoch_1", "--attack=protocol", "--attack_steps=2",
                   "--max_examples=16", "--eps=0.2", f"--transfer_from={root}/adv.npz"])
    run(compute_kernel, [f"--checkpoint={root}/std/spawn/epoch_2", "--per_class=2"])
    run(kernel_dynamics, [f"--run={root}/std", "--per_class=2", "--test_per_class=1"])
    capsys.readouterr()
    run(results, [f"--root={root}"])
    table = capsys.readouterr().out.split("\n\n")[0].splitlines()[2:]
    return {
        "history": [{k: v for k, v in row.items() if k != "seconds"}  # wall time differs
                    for row in rundir.read_json(f"{root}/std/history.json", expect=list)],
        "flags": rundir.read_json(f"{root}/std/flags.json")["epochs"],
        "train": rundir.read_json(f"{root}/std/results.json")["benign_accuracy"],
        "phase2": rundir.read_json(f"{root}/cen/results.json")["benign_accuracy"],
        "robust": rundir.read_json(f"{root}/std/eval/epoch_2/evaluation.json")["robust_accuracy"],
        "transfer": rundir.read_json(f"{root}/cen/eval/epoch_1/evaluation.json")["transfer_accuracy"],
        "kernel": rundir.read_npz(f"{root}/std/kernels/epoch_2/kernel.npz")["kernel"],
        "dynamics": rundir.read_text(f"{root}/std/kernel_dynamics/kernel_dynamics.csv"),
        "table": [line.split()[0] for line in table],
    }


def test_the_whole_chain_on_an_in_memory_file_system_equals_local_disk(tmp_path, capsys):
    ram = _chain(f"ram://{uuid.uuid4().hex}", capsys)
    local = _chain(str(tmp_path), capsys)
    assert ram["table"] == local["table"] == ["cen", "std"]
    np.testing.assert_array_equal(ram.pop("kernel"), local.pop("kernel"))
    assert ram == local


def test_object_store_checkpoints_commit_by_version_and_readers_skip_uncommitted_ones():
    root = f"ram://{uuid.uuid4().hex}/ckpt"
    model = models.build(models.spec("mlp", 3, (2, 2, 1), width=2))
    checkpoints.write(root, {"n": 1}, model=model)
    checkpoints.write(root, {"n": 2}, model=model)
    assert tf.io.gfile.listdir(root) == ["v-2"] and checkpoints.read_meta(root) == {"n": 2}
    # A writer killed before its commit marker (meta.json) leaves an uncommitted version: ignored.
    tf.train.Checkpoint(model=model).write(f"{root}/v-3/ckpt")
    assert checkpoints.files(root) == f"{root}/v-2" and checkpoints.read_meta(root) == {"n": 2}
    checkpoints.write(root, {"n": 4}, model=model)
    assert tf.io.gfile.listdir(root) == ["v-4"] and checkpoints.read_meta(root) == {"n": 4}
    with pytest.raises(checkpoints.CheckpointError, match="is not a tf_ntk checkpoint"):
        tf.io.gfile.makedirs(f"{root}-empty/v-1")
        checkpoints.read_meta(f"{root}-empty")
    assert os.path.basename(checkpoints.files(root)) == "v-4"


def test_a_sweep_job_log_on_an_object_store_is_appended_job_after_job(tmp_path, capsys):
    log = f"ram://{uuid.uuid4().hex}/logs/job.log"
    with capsys.disabled():  # the real stdout and stderr, as in a sweep worker
        assert common.execute("tf_ntk.cli.results", [f"--root={tmp_path}/none"], log) is not None
        assert common.execute("tf_ntk.cli.results", [f"--root={tmp_path}/none2"], log) is not None
    text = rundir.read_text(log)
    assert text.count("$ python -m tf_ntk.cli.results") == 2
    assert f"results: error: --root={tmp_path}/none2 is not a directory" in text
