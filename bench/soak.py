r"""Kill -9 soak of a training run: bench/results/soak.json and a table.

    python -m bench.soak                  # N = 20 kills of an adversarial digits run
    python -m bench.soak --n=5 --epochs=2
    python -m bench.soak --signal=TERM --output=bench/results/soak_term.json

First one uninterrupted run of the command gives the reference. Then N trials, each on a fresh work
directory: start the same command, SIGKILL it at a random point, rerun the command until it exits 0,
and compare every checkpoint tensor (spawns and resume state) and results.json with the reference,
bit for bit. A third of the kills are aimed at the final-evaluation window (every epoch trained and
recorded, results.json not yet written): the kill lands at a random point inside it; the others at
a uniformly random time within the reference run's duration (so some land before the first
checkpoint, some inside checkpoint writes). Each kill is classified by the state it left.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import flags
import numpy as np
import tensorflow as tf

from bench import measure
from tf_ntk.cli import common
from tf_ntk import rundir

flags.DEFINE_integer("n", 20, "Kills (trials).", lower_bound=1)
flags.DEFINE_integer("epochs", 3, "Epochs of the soaked run.", lower_bound=1)
flags.DEFINE_float("window_share", 1 / 3, "Share of the kills aimed at the final-evaluation window.")
flags.DEFINE_enum("signal", "KILL", ["KILL", "TERM", "INT"], "The signal: KILL (no chance to clean "
                  "up) or TERM / INT (the run checkpoints the step it reached).")
flags.DEFINE_integer("seed", 0, "Seed of the kill times (the run's own seed is 0).")
flags.DEFINE_string("workdir", None, "Scratch directory (default: a temporary one, removed after).")
flags.DEFINE_string("output", os.path.join(os.path.dirname(__file__), "results", "soak.json"),
                    "Where to write the JSON results.")
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _argv(workdir):
    return [sys.executable, "-m", "binaries.train", f"--workdir={workdir}", "--data_mode=adv",
            "--eps=0.2", "--attack_steps=5", "--width=8", "--batch_size=128",
            f"--epochs={FLAGS.epochs}", "--save_epochs=0,0.5,1,2", "--eval_every=1",
            "--eval_attack_steps=10"]


def _start(workdir):
    return subprocess.Popen(_argv(workdir), cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _resume_record(workdir):
    try:
        with open(os.path.join(workdir, "resume", "meta.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _epochs_recorded(workdir):
    return len(_resume_record(workdir).get("history", []))


def _in_window(workdir):
    return (_epochs_recorded(workdir) >= FLAGS.epochs
            and not os.path.exists(os.path.join(workdir, rundir.RESULTS)))


def _state(workdir):
    """Where a kill landed, judged by what it left."""
    if os.path.exists(os.path.join(workdir, rundir.RESULTS)):
        return "after the run finished"
    epochs = _epochs_recorded(workdir)
    if epochs >= FLAGS.epochs:
        return "final-evaluation window"
    partial = _resume_record(workdir).get("partial")
    if partial:  # a SIGTERM / SIGINT checkpointed the step it reached
        return f"training, checkpointed mid-epoch {partial['epoch'] + 1}"
    if epochs:
        return f"training, {epochs} epoch(s) recorded"
    if os.path.isdir(os.path.join(workdir, "spawn")):
        return "training, before the first resume record"
    return "start-up (nothing written yet)"


def _tensors(workdir):
    """{checkpoint/variable: array} of every checkpoint in the run, tracking-only values skipped."""
    out = {}
    dirs = [os.path.join(workdir, "resume")] + [
        os.path.join(workdir, "spawn", d) for d in sorted(os.listdir(os.path.join(workdir, "spawn")))]
    for d in dirs:
        reader = tf.train.load_checkpoint(os.path.join(d, "ckpt"))
        for name in reader.get_variable_to_shape_map():
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
                out[f"{os.path.relpath(d, workdir)}/{name}"] = reader.get_tensor(name)
    return out


def _results(workdir):
    with open(os.path.join(workdir, rundir.RESULTS), encoding="utf-8") as f:
        r = json.load(f)
    return {k: r[k] for k in ("benign_accuracy", "robust_accuracy_quick", "final_train_loss")}


def _finish(workdir):
    """Reruns the command until it exits 0 (a rerun may itself be refused only by a bug)."""
    proc = _start(workdir)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the rerun after a kill failed (exit {proc.returncode}): {err.strip()}")


def _trial(workdir, rng, duration, aim_window):
    proc = _start(workdir)
    started = time.time()
    if aim_window:
        while proc.poll() is None and not _in_window(workdir):
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3))  # somewhere inside the window, which lasts ~1 s here
    else:
        deadline = started + rng.uniform(0.5, duration)
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
    landed = proc.poll() is None
    if landed:
        proc.send_signal(getattr(signal, f"SIG{FLAGS.signal}"))
    proc.communicate()
    state = _state(workdir) if landed else "after the run finished"
    t_kill = time.time() - started
    if state != "after the run finished":
        _finish(workdir)
    return state, t_kill


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    rng = random.Random(FLAGS.seed)
    scratch = FLAGS.workdir or tempfile.mkdtemp(prefix="soak-")
    os.makedirs(scratch, exist_ok=True)
    try:
        reference = os.path.join(scratch, "reference")
        shutil.rmtree(reference, ignore_errors=True)
        start = time.time()
        _finish(reference)
        duration = time.time() - start
        want, want_results = _tensors(reference), _results(reference)
        print(f"reference run: {duration:.1f} s, {len(want)} checkpoint tensors; {want_results}")
        trials = []
        n_window = round(FLAGS.n * FLAGS.window_share)
        aims = [True] * n_window + [False] * (FLAGS.n - n_window)
        rng.shuffle(aims)
        for i, aim in enumerate(aims):
            workdir = os.path.join(scratch, f"trial-{i:02d}")
            shutil.rmtree(workdir, ignore_errors=True)
            state, t_kill = _trial(workdir, rng, duration, aim)
            got = _tensors(workdir)
            same = got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
            same_results = _results(workdir) == want_results
            trials.append({"trial": i, "aimed_at_window": aim, "killed_at_s": round(t_kill, 2),
                           "state": state, "weights_bit_identical": bool(same),
                           "results_identical": bool(same_results)})
            print(f"[{i + 1}/{FLAGS.n}] kill at {t_kill:5.1f} s ({state}): weights "
                  f"{'identical' if same else 'DIFFER'}, results "
                  f"{'identical' if same_results else 'DIFFER'}", flush=True)
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        if not FLAGS.workdir:
            shutil.rmtree(scratch, ignore_errors=True)
    states = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    ok = sum(t["weights_bit_identical"] and t["results_identical"] for t in trials)
    result = {"n": FLAGS.n, "epochs": FLAGS.epochs, "signal": FLAGS.signal, "command": " ".join(_argv("WORKDIR")[1:]),
              "reference_seconds": duration, "identical": ok, "states": states, "trials": trials}
    lines = [f"SIG{FLAGS.signal} soak: {ok}/{FLAGS.n} trials bit-identical to the uninterrupted run "
             f"(weights of every checkpoint and results.json)", "",
             f"{'where the kill landed':<45} {'kills':>5}"]
    lines += [f"{s:<45} {c:>5}" for s, c in sorted(states.items())]
    measure.write_results(FLAGS.output, result, "\n".join(lines))
    if ok != FLAGS.n:
        raise ValueError(f"{FLAGS.n - ok} of {FLAGS.n} trials were not bit-identical")


if __name__ == "__main__":
    common.run(main)
