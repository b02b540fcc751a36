"""`train --strategy=multi_worker`: two worker processes on localhost (TF_CONFIG), against the
one-process run with the same global batch, and a worker killed mid-run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tf_ntk import distribute
from tf_ntk.cli import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--model=mlp", "--width=4", "--eps=0.2", "--attack_steps=2", "--eval_every=0",
        "--eval_attack_steps=2"]
pytestmark = pytest.mark.xdist_group("multi_worker")  # two processes of their own: not beside others


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class _Cluster:
    """Two `binaries.train` workers on localhost; killed (with their process groups) on exit."""

    def __init__(self, workdir, argv, log_dir):
        ports = _free_ports(2)
        self.procs, self.logs = [], []
        for index in range(2):
            env = dict(os.environ, TF_CONFIG=json.dumps({
                "cluster": {"worker": [f"localhost:{p}" for p in ports]},
                "task": {"type": "worker", "index": index}}))
            log = os.path.join(log_dir, f"worker{index}-{time.monotonic_ns()}.log")
            self.logs.append(log)
            with open(log, "w") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "binaries.train", f"--workdir={workdir}",
                     "--strategy=multi_worker", *argv], cwd=ROOT, env=env, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True))

    def wait(self, timeout=240):
        codes = [p.wait(timeout=timeout) for p in self.procs]
        return codes, [open(log).read() for log in self.logs]

    def kill(self, index):
        os.killpg(self.procs[index].pid, signal.SIGKILL)
        self.procs[index].wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _weights(workdir):
    reader = tf.train.load_checkpoint(os.path.join(workdir, "resume", "ckpt"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()  # weights, momenta, step
            if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _assert_same_training(workdir, reference, atol):
    ours, theirs = _weights(workdir), _weights(reference)
    assert ours.keys() == theirs.keys() and len(ours) >= 12
    for name in ours:  # gradients summed over two workers instead of one batch: float rounding only
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=atol, err_msg=name)
    ours_h, theirs_h = helpers.read_json(f"{workdir}/history.json"), helpers.read_json(f"{reference}/history.json")
    assert [round(r["loss"], 5) for r in ours_h] == [round(r["loss"], 5) for r in theirs_h]


def test_two_workers_train_like_one_process(tmp_path, capsys):
    """Clean data here; adversarial training over two workers is compared with one process at the end
    of the stop-and-kill test below."""
    argv = ARGS + ["--batch_size=256", "--epochs=2", "--save_epochs=1,2", "--data_mode=clean"]
    with _Cluster(tmp_path / "two", argv, tmp_path) as cluster:
        codes, logs = cluster.wait()
    assert codes == [0, 0], logs
    assert "worker 1: trained 2 epochs" in logs[1]
    code, err = helpers.run_app(train, [f"--workdir={tmp_path}/one"] + argv, capsys)
    assert not code, err
    _assert_same_training(tmp_path / "two", tmp_path / "one", atol=5e-7)  # 12 steps
    # Only the chief writes: the run directory has what a one-process run has, and no worker leftovers.
    assert sorted(p for p in os.listdir(tmp_path / "two") if not p.startswith("events")) == \
        sorted(p for p in os.listdir(tmp_path / "one") if not p.startswith("events"))
    assert sorted(os.listdir(tmp_path / "two" / "spawn")) == ["epoch_1", "epoch_2"]


def _wait_for(condition, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def _epochs_done(workdir):
    path = workdir / "history.json"
    return len(helpers.read_json(path)) if path.exists() else 0


def test_stopped_and_killed_workers_resume_together(tmp_path, capsys):
    """SIGTERM to the non-chief only: both stop at one step, exit 143 with one line, the chief keeps
    a resumable checkpoint; then SIGKILL of the non-chief a later epoch: the chief fails or hangs and
    is killed; restarting both finishes with the weights of one uninterrupted process."""
    argv = ARGS + ["--batch_size=64", "--epochs=4", "--save_epochs=", "--data_mode=adv"]
    workdir = tmp_path / "two"
    with _Cluster(workdir, argv, tmp_path) as cluster:
        _wait_for(lambda: _epochs_done(workdir) >= 1)
        os.kill(cluster.procs[1].pid, signal.SIGTERM)
        codes, logs = cluster.wait()
    assert codes == [143, 143], logs
    for log in logs:
        assert "train: interrupted by SIGTERM" in log.strip().splitlines()[-1], log  # after a progress bar
    stopped_at = helpers.read_json(workdir / "resume" / "meta.json")
    assert 1 <= len(stopped_at["history"]) < 4
    with _Cluster(workdir, argv, tmp_path) as cluster:
        _wait_for(lambda: _epochs_done(workdir) > len(stopped_at["history"]))
        cluster.kill(1)
        cluster.kill(0)
    assert _epochs_done(workdir) < 4 and not os.path.exists(workdir / "results.json")
    with _Cluster(workdir, argv, tmp_path) as cluster:
        codes, logs = cluster.wait()
    assert codes == [0, 0], logs
    assert "resuming" in logs[0]
    code, err = helpers.run_app(train, [f"--workdir={tmp_path}/one"] + argv, capsys)
    assert not code, err
    _assert_same_training(workdir, tmp_path / "one", atol=5e-6)  # 92 steps: rounding grows


def test_workers_that_disagree_fail_with_one_line(tmp_path):
    """Another configuration on one worker: both refuse at start-up, neither hangs."""
    ports = _free_ports(2)
    procs = []
    for index, lr in enumerate(["0.1", "0.2"]):
        env = dict(os.environ, TF_CONFIG=json.dumps({
            "cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "binaries.train", f"--workdir={tmp_path}/run", "--strategy=multi_worker",
             f"--lr={lr}", "--epochs=1", *ARGS], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, start_new_session=True))
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    for p, err in zip(procs, errors):
        assert p.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "the workers disagree on the run's configuration" in lines[0], err


def _cluster(*addresses, index=0):
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"cluster": {"worker": ["localhost:1"]}}', 'TF_CONFIG needs "cluster" and "task"'),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}', "is not in its cluster"),
    (_cluster("localhost:1", "not a host"), "TF_CONFIG worker 1: address 'not a host' is not host:port "
     '(e.g. "host1:12345" or "[::1]:12345")'),
    (_cluster("localhost:1", ""), "TF_CONFIG worker 1: address '' is not host:port"),
    (_cluster("localhost:0", "localhost:1"), "TF_CONFIG worker 0: address 'localhost:0': port 0 is not in 1-65535"),
    (_cluster("localhost:1", "localhost:99999"), "address 'localhost:99999': port 99999 is not in 1-65535"),
    (_cluster("localhost:1", "host"), "TF_CONFIG worker 1: address 'host' is not host:port"),
    (_cluster("localhost:1", "::1:5000"), "address '::1:5000' is not host:port"),  # IPv6 needs [ ]
    (_cluster("localhost:1", 12345), "TF_CONFIG worker 1: address 12345 is not a string host:port"),
    (_cluster("localhost:1", "nohost.invalid:12345"),
     "TF_CONFIG worker 1: address 'nohost.invalid:12345': cannot resolve host 'nohost.invalid' ("),
])
def test_a_malformed_tf_config_is_one_line(tf_config, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    monkeypatch.setattr(distribute, "RESOLVE_TIMEOUT_S", 2.0)  # quick even where DNS never answers
    start = time.monotonic()
    code, err = helpers.run_app(train, [f"--workdir={tmp_path}/run", "--strategy=multi_worker"] + ARGS, capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert err.startswith("train: error: ") and time.monotonic() - start < 10
    assert not (tmp_path / "run").exists()


def test_a_host_that_does_not_resolve_in_time_is_one_line(tmp_path, capsys, monkeypatch):
    """A resolver that never answers (the look-up sleeps) costs RESOLVE_TIMEOUT_S, not a hang."""
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: time.sleep(30) if host == "slow.example"
                        else real(host, *a, **k))
    monkeypatch.setattr(distribute, "RESOLVE_TIMEOUT_S", 0.5)
    monkeypatch.setenv("TF_CONFIG", _cluster("localhost:1", "slow.example:2"))
    start = time.monotonic()
    code, err = helpers.run_app(train, [f"--workdir={tmp_path}/run", "--strategy=multi_worker"] + ARGS, capsys)
    assert time.monotonic() - start < 5, "the look-up was not bounded"
    assert code == 2 and err.count("\n") == 1, err
    assert "TF_CONFIG worker 1: address 'slow.example:2': cannot resolve host 'slow.example' (no answer " \
        "within 0.5 s)" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("address, host_port", [
    ("localhost:12345", ("localhost", 12345)), ("[::1]:5000", ("::1", 5000)),
    ("10.0.0.2:65535", ("10.0.0.2", 65535)), ("host-1.example.com:1", ("host-1.example.com", 1))])
def test_well_formed_addresses_are_accepted(address, host_port):
    assert distribute.split_address(address) == host_port


def test_a_worker_whose_peer_never_starts_stops_with_one_line_within_the_timeout(tmp_path):
    """Worker 0 of two, worker 1 never started: TensorFlow would wait for ever (deaf to SIGTERM);
    --cluster_timeout=6 ends it with one line naming worker 1, and no run directory."""
    ports = _free_ports(2)
    env = dict(os.environ, TF_CONFIG=_cluster(*(f"localhost:{p}" for p in ports)))
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "binaries.train", f"--workdir={tmp_path}/run",
                             "--strategy=multi_worker", "--cluster_timeout=6", "--epochs=1", *ARGS],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        err = proc.communicate(timeout=90)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0 and 6 <= elapsed < 60, (proc.returncode, elapsed, err)
    assert err.strip().splitlines() == [
        "train: error: worker 1 of the multi-worker job did not answer within 6 s; start every worker "
        "with the same command"], err
    assert not (tmp_path / "run").exists()
