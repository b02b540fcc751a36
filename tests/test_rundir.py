"""The work-directory lock: a live owner refuses, a dead one on this host is taken over, one from
another host is never judged stale; train refused by a lock writes nothing."""

import json
import os
import socket
import subprocess
import sys

import pytest

from binaries import train
from tests import helpers
from tf_ntk import rundir


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
        with pytest.raises(rundir.LockedError, match=f"in use by process {os.getpid()} on"):
            with rundir.lock(str(tmp_path)):
                pass
        assert (tmp_path / rundir.LOCK).exists()  # the refused one did not remove it
    assert not (tmp_path / rundir.LOCK).exists()


def test_a_stale_lock_is_taken_over_and_a_foreign_host_is_not(tmp_path):
    _hold(tmp_path, _dead_pid())
    with rundir.lock(str(tmp_path)):
        assert json.loads((tmp_path / rundir.LOCK).read_text())["pid"] == os.getpid()
    _hold(tmp_path, _dead_pid(), host="another-host")
    with pytest.raises(rundir.LockedError, match="on another-host"):
        with rundir.lock(str(tmp_path)):
            pass


def test_train_refused_by_a_lock_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    _hold(workdir, os.getppid())  # a live process
    code, err = helpers.run_app(train, [f"--workdir={workdir}", "--epochs=1", "--width=4"], capsys)
    assert code == 2 and "is in use by process" in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(workdir)) == [rundir.LOCK]
