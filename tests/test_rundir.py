"""The run directory: atomic strict writes, records read back or refused naming the file, open_run
(refuse or clear a finished run, clean up what a failed command created), the lock (a live owner
refuses, a dead one on this host is taken over, one from another host never is), and two real
processes on one work directory."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests import helpers
from tf_ntk import rundir
from tf_ntk.cli import train


def _hold(directory, pid, host=None):
    (directory / rundir.LOCK).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_live_owner_refuses_and_the_lock_is_released_after_use(tmp_path):
    with rundir.lock(str(tmp_path)):
        owner = json.loads((tmp_path / rundir.LOCK).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(rundir.LockedError, match=f"in use by process {os.getpid()} on"), \
                rundir.lock(str(tmp_path)):
            pass
        assert (tmp_path / rundir.LOCK).exists()  # the refused one did not remove it
    assert not (tmp_path / rundir.LOCK).exists()


def test_a_stale_lock_is_taken_over_and_a_foreign_host_is_not(tmp_path):
    _hold(tmp_path, _dead_pid())
    with rundir.lock(str(tmp_path)):
        assert json.loads((tmp_path / rundir.LOCK).read_text())["pid"] == os.getpid()
    _hold(tmp_path, _dead_pid(), host="another-host")
    with pytest.raises(rundir.LockedError, match="on another-host"), rundir.lock(str(tmp_path)):
        pass


def test_train_refused_by_a_lock_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    _hold(workdir, os.getppid())  # a live process
    code, err = helpers.run_app(train, [f"--workdir={workdir}", "--epochs=1", "--width=4"], capsys)
    assert code == 2 and "is in use by process" in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(workdir)) == [rundir.LOCK]


def test_two_processes_on_one_workdir_one_trains_the_other_is_refused_untouched(tmp_path):
    """Two identical train commands started together: one runs to the end, the other is refused with
    one line (the directory is in use, or by then holds a finished run) and disturbs nothing: the
    finished run equals one trained alone."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = ["--width=4", "--epochs=2", "--save_epochs=2", "--eval_every=0", "--batch_size=256",
            "--data_mode=adv", "--eps=0.2", "--attack_steps=2", "--eval_attack_steps=2"]
    command = [sys.executable, "-m", "binaries.train", f"--workdir={tmp_path}/shared"] + argv
    env = dict(os.environ, PYTHONPATH=root)
    procs = [subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    (ok, _), (refused, err) = outcomes
    assert (ok, refused) == (0, 2), outcomes
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "is in use by process" in err or "holds a finished run" in err, err
    helpers.run_binary(train, [f"--workdir={tmp_path}/alone"] + argv)
    a = json.loads((tmp_path / "shared" / "results.json").read_text())
    b = json.loads((tmp_path / "alone" / "results.json").read_text())
    assert a["benign_accuracy"] == b["benign_accuracy"]
    assert a["robust_accuracy_quick"] == b["robust_accuracy_quick"]
    assert not (tmp_path / "shared" / rundir.LOCK).exists()


def test_writes_are_strict_and_atomic_and_bad_records_name_their_file(tmp_path):
    path = tmp_path / "sub" / "r.json"
    rundir.write_json(str(path), {"a": [1, 2.5]})
    assert json.loads(path.read_text()) == {"a": [1, 2.5]}
    with pytest.raises(ValueError, match="would hold a non-finite number"):
        rundir.write_json(str(path), {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": [1, 2.5]}  # the old file is intact
    assert sorted(os.listdir(tmp_path / "sub")) == ["r.json"]  # no temporary left
    path.write_text("[1]")
    with pytest.raises(rundir.RecordError, match=f"corrupt run record {path}: expected a JSON dict, got list"):
        rundir.read_json(str(path))
    path.write_text('{"a": ')
    with pytest.raises(rundir.RecordError, match=f"corrupt run record {path}: "):
        rundir.read_json(str(path))


def test_open_run_refuses_or_clears_a_finished_run_and_removes_what_a_failure_created(tmp_path):
    run = tmp_path / "run"
    with rundir.open_run(str(run)):
        rundir.write_json(str(run / rundir.RESULTS), {"done": 1})
    assert sorted(os.listdir(run)) == [rundir.RESULTS]  # the lock is gone
    with pytest.raises(FileExistsError, match="holds a finished run; pass --overwrite"), \
            rundir.open_run(str(run), finished=rundir.is_finished):
        pass
    assert sorted(os.listdir(run)) == [rundir.RESULTS]
    with rundir.open_run(str(run), overwrite=True, finished=rundir.is_finished):
        assert os.listdir(run) == [rundir.LOCK]  # cleared, under the lock
    new = tmp_path / "new"
    with pytest.raises(RuntimeError), rundir.open_run(str(new)):
        (new / "partial").write_text("x")
        raise RuntimeError("the command failed")
    assert not new.exists()
    keep = lambda d: os.path.exists(os.path.join(d, "keep"))  # noqa: E731
    with pytest.raises(RuntimeError), rundir.open_run(str(new), keep_if=keep):
        (new / "keep").write_text("x")
        raise RuntimeError("the command failed after a resumable checkpoint")
    assert sorted(os.listdir(new)) == ["keep"]
    (tmp_path / "afile").write_text("x")
    for bad, message in [(tmp_path / "afile", "is a file, not a directory"),
                         (tmp_path / "afile" / "sub", f"{tmp_path}/afile is a file")]:
        with pytest.raises(ValueError, match=message), rundir.open_run(str(bad)):
            pass
