"""A training run killed between any two of its end-of-epoch writes ends, once the same command is
run again, with records that agree: the checkpoints, history.json, results.json and the events of
an uninterrupted run, each summary once (bench/soak.py does the same with real SIGKILLs)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench import write_faults
from tests import helpers
from tf_ntk import checkpoints
from tf_ntk import summaries
from tf_ntk.cli import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARGS = ["--width=4", "--eps=0.2", "--attack_steps=2", "--eval_attack_steps=2", "--batch_size=256",
        "--epochs=2", "--save_epochs=0,0.5,1,2", "--eval_every=1", "--kernel_every=1",
        "--kernel_at_spawns", "--per_class=2"]


class Killed(BaseException):
    """What a SIGKILL does to the command, in-process: it stops at once."""


def _raise():
    raise Killed


def _tensors(workdir):
    """{checkpoint/variable: array} of the run's spawn and resume checkpoints."""
    dirs = [path for _, path in checkpoints.list_spawns(workdir)] + [os.path.join(workdir, "resume")]
    return {f"{os.path.relpath(d, workdir)}/{name}": value for d in dirs
            for name, value in checkpoints.read_tensors(d).items()}


def _without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _records(workdir):
    resume = helpers.read_json(os.path.join(workdir, "resume", "meta.json"))
    history = helpers.read_json(os.path.join(workdir, "history.json"))
    results = helpers.read_json(os.path.join(workdir, "results.json"))
    results = {k: results[k] for k in ("benign_accuracy", "robust_accuracy_quick", "final_train_loss")}
    return resume["history"], history, results, summaries.read_events(workdir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference") / "run"
    helpers.run_binary(train, [f"--workdir={workdir}"] + ARGS)
    return _tensors(workdir), _records(workdir)


# (when, write, count), counts over the run: spawns 0, 0.5, 1, 2 are spawn writes 1-4. After the
# epoch-0.5 spawn (no resume state yet), after the first epoch's resume (its events not written),
# and every window of the last epoch: after its spawn, after resume/, before history.json (events
# written), after history.json, before results.json (the final evaluation's events written).
WINDOWS = [("after", "spawn", 2), ("after", "resume", 1), ("after", "spawn", 4), ("after", "resume", 2),
           ("before", "history", 2), ("after", "history", 2), ("before", "results", 1)]


@pytest.mark.parametrize("window", WINDOWS, ids=[f"{w}_{k}_{n}" for w, k, n in WINDOWS])
def test_a_kill_after_any_end_of_epoch_write_is_repaired_by_the_rerun(window, reference, tmp_path):
    workdir = tmp_path / "run"
    undo = write_faults.install(*window, _raise)
    try:
        with pytest.raises(Killed):
            helpers.run_binary(train, [f"--workdir={workdir}"] + ARGS)
    finally:
        undo()
    assert not (workdir / "results.json").exists()
    helpers.run_binary(train, [f"--workdir={workdir}"] + ARGS)
    want_tensors, (want_resume, want_history, want_results, want_events) = reference
    got = _tensors(workdir)
    assert got.keys() == want_tensors.keys()
    assert all(np.array_equal(got[k], want_tensors[k]) for k in got)
    resume, history, results, events = _records(workdir)
    assert history == resume, "history.json disagrees with the resume state"
    assert _without_seconds(history) == _without_seconds(want_history)
    assert results == want_results
    assert events.keys() == want_events.keys()
    twice = sorted(key for key, values in events.items() if len(values) > 1)
    assert not twice, f"logged more than once: {twice}"
    scalars = {k: v for k, v in want_events.items() if isinstance(v[0], float)}
    assert {k: events[k] for k in scalars} == scalars


def test_history_json_lags_the_resume_state_only_inside_the_window(tmp_path):
    """The state a kill between the last resume write and history.json leaves, and its repair by
    an evaluate-only rerun (nothing retrained: the resume checkpoint is untouched)."""
    workdir = tmp_path / "run"
    undo = write_faults.install("after", "resume", 2, _raise)  # the last epoch's
    try:
        with pytest.raises(Killed):
            helpers.run_binary(train, [f"--workdir={workdir}"] + ARGS)
    finally:
        undo()
    resume = helpers.read_json(os.path.join(workdir, "resume", "meta.json"))["history"]
    assert [r["epoch"] for r in helpers.read_json(os.path.join(workdir, "history.json"))] == [1]
    assert [r["epoch"] for r in resume] == [1, 2]
    before = (workdir / "resume" / "meta.json").read_bytes()
    helpers.run_binary(train, [f"--workdir={workdir}"] + ARGS)
    assert (workdir / "resume" / "meta.json").read_bytes() == before
    assert json.loads((workdir / "history.json").read_text()) == resume


_RECORDED = """
import json, sys
from tf_ntk.cli import common
for name in sys.argv[1].split(","):
    __import__(f"tf_ntk.cli.{name}")
print(json.dumps({n: sorted(common.resolved_flags(f"tf_ntk.cli.{n}")) for n in sys.argv[1].split(",")}))
"""


@pytest.mark.parametrize("order", ["train,evaluate,reproduce", "reproduce,train,evaluate"])
def test_a_binarys_recorded_flags_are_the_ones_it_defines(order):
    # Binaries imported into one process in either order (a sweep worker imports the command first):
    # each records the flags it defines, nested groups included (--eps through the attack flags), and
    # no other binary's.
    out = subprocess.run([sys.executable, "-c", _RECORDED, order], capture_output=True, text=True,
                         check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    recorded = {k: set(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    assert {"model", "lr", "save_epochs", "eps", "workdir"} <= recorded["train"]
    assert {"checkpoint", "eps", "strong_restarts", "workdir", "dataset", "seed"} <= recorded["evaluate"]
    assert not {"model", "width", "lr", "save_epochs", "jit_compile"} & recorded["evaluate"]
    assert {"preset", "spawn_epochs", "model", "jit_compile", "eps"} <= recorded["reproduce"]
    assert not {"checkpoint", "lr", "attack_steps"} & recorded["reproduce"]


def test_a_binary_run_as_a_module_records_its_shared_flags(tmp_path):
    # python -m tf_ntk.cli.train: the module is __main__, whose key flags absl files under sys.argv[0].
    subprocess.run([sys.executable, "-m", "tf_ntk.cli.train", f"--workdir={tmp_path}/run", "--model=mlp",
                    "--width=4", "--epochs=1", "--save_epochs=1", "--eval_every=0", "--eval_attack_steps=1",
                    "--batch_size=512", "--lr=1/20"],
                   capture_output=True, text=True, check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    with open(tmp_path / "run" / "flags.json", encoding="utf-8") as f:
        recorded = json.load(f)
    assert recorded["model"] == "mlp" and recorded["lr"] == 0.05 and recorded["save_epochs"] == [1.0]
    assert {"dataset", "eps", "seed", "attack_steps", "strategy", "jit_compile", "per_class"} <= set(recorded)
