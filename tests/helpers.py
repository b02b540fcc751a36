"""Shared test utilities."""

import contextlib
import csv
import json
import socket
import subprocess
import sys
import time
import urllib.request

from absl import flags
import keras
import numpy as np
import pytest

from tf_ntk import data
from tf_ntk import models
from tf_ntk import training
from tf_ntk.cli import common
from tf_ntk.robust import ensembles


def randomize_bn_statistics(model, seed=0):
    """Sets every BN moving mean to N(0, 0.1²) and moving variance to U(0.5, 1.5), so that inference-mode
    BN differs from an identity and from batch statistics."""
    rng = np.random.default_rng(seed)
    for v in model.non_trainable_variables:
        if "moving_mean" in v.path:
            v.assign(rng.normal(0.0, 0.1, v.shape).astype(v.dtype))
        elif "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype(v.dtype))


def relative_error(a, b):
    """Normwise relative error ‖a − b‖ / ‖b‖."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def trained_digits_mlp(test_examples, width=32, epochs=4):
    """An MLP trained ``epochs`` clean epochs on digits (benign ≈ 0.9), and the first
    ``test_examples`` test images (x (N, 8, 8, 1), y (N,))."""


    training.set_seed(0)
    model = models.get("mlp", 10, (8, 8, 1), width=width)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data.load_arrays("digits", "train")
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, shuffle=False)
    xt, yt = data.load_arrays("digits", "test")
    return model, xt[:test_examples], yt[:test_examples]


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_csv(path):
    """The rows of a CSV file, as dicts."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def run_binary(module, argv):
    """Parses ``argv`` with absl (in this process) and calls the binary ``module``'s main."""
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["prog"] + argv)
    try:
        module.main(["prog"])
    finally:
        flags.FLAGS.unparse_flags()


def run_app(module, argv, capsys, stdout=False):
    """Runs a binary like the command line does (absl app, one-line errors); returns (exit code,
    stderr), or (exit code, stderr, stdout) with ``stdout``."""

    flags.FLAGS.unparse_flags()
    saved = sys.argv
    sys.argv = [module.__name__.rsplit(".", 1)[-1]] + argv
    try:
        with pytest.raises(SystemExit) as exit_info:
            common.run(module.main)
    finally:
        sys.argv = saved
        flags.FLAGS.unparse_flags()
    captured = capsys.readouterr()
    return (exit_info.value.code, captured.err) + ((captured.out,) if stdout else ())


def linear_digits_model(seed=0, d=64, o=10):
    """A linear Keras model on 8x8 digits with N(0, 1) weights and biases; (model, w (d, o), b (o,))."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, o)).astype(np.float32)
    b = rng.normal(size=(o,)).astype(np.float32)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(o)])
    model.layers[-1].kernel.assign(w)
    model.layers[-1].bias.assign(b)
    return model, w, b


def closed_form_linf_robust(w, b, x, y, eps):
    """(N,) bool: no L∞ perturbation of size ≤ eps inside [0, 1] changes the linear model's label.

    For each wrong class j the largest achievable margin is
    (w_j − w_y)·x + b_j − b_y + Σ_i max(c_i·lo_i, c_i·hi_i), c = w_j − w_y, with the box-clipped
    per-pixel range lo = max(−eps, −x), hi = min(eps, 1 − x)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    lo, hi = np.maximum(-eps, -flat), np.minimum(eps, 1.0 - flat)
    robust = np.ones(len(x), bool)
    for n in range(len(x)):
        logits = flat[n] @ w + b
        if np.argmax(logits) != y[n]:
            robust[n] = False
            continue
        for j in range(w.shape[1]):
            if j == y[n]:
                continue
            c = w[:, j].astype(np.float64) - w[:, y[n]]
            best = logits[j] - logits[y[n]] + np.maximum(c * lo[n], c * hi[n]).sum()
            robust[n] &= best < 0
    return robust


@contextlib.contextmanager
def tensorboard(logdir, *flags_):
    """Serves ``logdir`` with TensorBoard (``flags_`` added, e.g. the README's) on a free local
    port; yields ``get(route, body=None)`` -> the decoded JSON (or bytes) of an HTTP API route.
    --reload_task=blocking: TensorBoard reads every event file before it serves, so the first
    answer is complete; the only wait is for the server to start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}", *flags_, "--host=127.0.0.1",
         f"--port={port}", "--reload_task=blocking", "--reload_interval=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def get(route, body=None):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{route}", headers={"Content-Type": "application/json"},
            data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=60) as r:
            raw = r.read()
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return raw

    try:
        for _ in range(600):  # up to ~5 min on a loaded machine; typically ~5 s
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited with status {proc.returncode}")
            try:
                get("/data/runs")
                break
            except OSError:
                time.sleep(0.5)
        yield get
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def ray_head(cpus=2):
    """A real local Ray cluster: `ray start --head --block` with ``cpus`` CPUs in its own short
    temporary directory (Unix socket paths are limited); yields its address host:port; then stops
    only the processes it started."""
    import os  # noqa: PLC0415
    import shutil  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    import psutil  # noqa: PLC0415

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=root, RAY_USAGE_STATS_ENABLED="0")
    head = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", f"--port={port}",
         f"--num-cpus={cpus}", f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats",
         "--block"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if head.poll() is not None:
                pytest.fail(f"ray start exited with status {head.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        started = psutil.Process(head.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        for p in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def record_crafts(monkeypatch, stop_after=None):
    """Wraps every attack `tf_ntk.robust.ensembles.evaluate` crafts: returns the list the attacks go
    into, in order; with ``stop_after``, the next craft raises KeyboardInterrupt (a killed process)."""
    crafted = []
    craft = ensembles._Runner.craft  # noqa: SLF001 - the one place every attack passes

    def recording(self, attack, indices):
        if stop_after is not None and len(crafted) == stop_after:
            raise KeyboardInterrupt
        crafted.append(attack)
        return craft(self, attack, indices)

    monkeypatch.setattr(ensembles._Runner, "craft", recording)  # noqa: SLF001
    return crafted
