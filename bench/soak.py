r"""Kill -9 soak of a training run: bench/results/soak.json and a table.

    python -m bench.soak                  # N = 20 kills of an adversarial digits run
    python -m bench.soak --n=5 --epochs=2 --aim_at_writes=false
    python -m bench.soak --signal=TERM --aim_at_writes=false --output=bench/results/soak_term.json

First one uninterrupted run of the command gives the reference. Then N trials, each on a fresh work
directory: start the same command, kill it, rerun the command until it exits 0, and compare with the
reference: every checkpoint tensor (spawns and resume state) and results.json bit for bit, and the
records agree: history.json equals the resume state's history (and the reference's, but for the
seconds), and the events hold the reference's summaries, each (tag, step) once, the same scalars.

Where the kills land: with --aim_at_writes (SIGKILL only), the first trials kill the command in
each window between two of its end-of-epoch writes in turn (`bench.write_faults`: after the spawn
checkpoint, after the resume checkpoint, before and after history.json of every epoch, before
results.json); of the other trials, a third land at a
random point of the final-evaluation window (every epoch trained and recorded, results.json not yet
written) and the rest at a uniformly random time within the reference run's duration. Each kill is
classified by the state it left.
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

from bench import measure
from tf_ntk import checkpoints
from tf_ntk import rundir
from tf_ntk import summaries
from tf_ntk.cli import common

flags.DEFINE_integer("n", 20, "Kills (trials).", lower_bound=1)
flags.DEFINE_integer("epochs", 3, "Epochs of the soaked run.", lower_bound=1)
flags.DEFINE_float("window_share", 1 / 3, "Share of the kills aimed at the final-evaluation window.")
flags.DEFINE_enum("signal", "KILL", ["KILL", "TERM", "INT"], "The signal: KILL (no chance to clean "
                  "up) or TERM / INT (the run checkpoints the step it reached).")
flags.DEFINE_bool("aim_at_writes", True, "SIGKILL inside each window between two end-of-epoch "
                  "writes in turn (the first trials).")
flags.DEFINE_integer("seed", 0, "Seed of the kill times (the run's own seed is 0).")
flags.DEFINE_string("workdir", None, "Scratch directory (default: a temporary one, removed after).")
flags.DEFINE_string("output", os.path.join(os.path.dirname(__file__), "results", "soak.json"),
                    "Where to write the JSON results.")
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save_epochs():
    return [e for e in (0, 0.5, 1, 2) if e <= FLAGS.epochs]


def _train_flags(workdir):
    return [f"--workdir={workdir}", "--data_mode=adv", "--eps=0.2", "--attack_steps=5", "--width=8",
            "--batch_size=128", f"--epochs={FLAGS.epochs}",
            f"--save_epochs={','.join(f'{e:g}' for e in _save_epochs())}", "--eval_every=1",
            "--eval_attack_steps=10"]


def _argv(workdir, kill_after=None):
    if kill_after is None:
        return [sys.executable, "-m", "binaries.train", *_train_flags(workdir)]
    return [sys.executable, "-m", "bench.write_faults", f"--kill={':'.join(map(str, kill_after))}",
            "--", *_train_flags(workdir)]


def write_windows():
    """[(when, write, count)]: one kill in each window between two end-of-epoch writes of the
    soaked command, in order (counts over the whole run: spawn 1 is epoch 0's): after the spawn,
    after resume/, before history.json (the events written), after it; before results.json."""
    spawns_before = {e: sum(1 for s in _save_epochs() if s < e) for e in range(1, FLAGS.epochs + 1)}
    windows = []
    for epoch in range(1, FLAGS.epochs + 1):
        if epoch in _save_epochs():
            windows.append(("after", "spawn", spawns_before[epoch] + 1))
        windows += [("after", "resume", epoch), ("before", "history", epoch),
                    ("after", "history", epoch)]
    return windows + [("before", "results", 1)]


def _start(workdir, kill_after=None):
    return subprocess.Popen(_argv(workdir, kill_after), cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
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
    dirs = [os.path.join(workdir, "resume")] + [path for _, path in checkpoints.list_spawns(workdir)]
    return {f"{os.path.relpath(d, workdir)}/{name}": value for d in dirs
            for name, value in checkpoints.read_tensors(d).items()}


def _results(workdir):
    with open(os.path.join(workdir, rundir.RESULTS), encoding="utf-8") as f:
        r = json.load(f)
    return {k: r[k] for k in ("benign_accuracy", "robust_accuracy_quick", "final_train_loss")}


def _without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _records(workdir):
    """(history.json, the events' {(tag, step): [values]})."""
    with open(os.path.join(workdir, rundir.HISTORY), encoding="utf-8") as f:
        history = json.load(f)
    return history, summaries.read_events(workdir)


def records_agree(workdir, reference):
    """[what disagrees]: history.json against the resume state and the reference's; the events
    against the reference's (the same summaries, each once, the same scalars)."""
    history, events = _records(workdir)
    want_history, want_events = reference
    problems = []
    if history != _resume_record(workdir).get("history"):
        problems.append("history.json differs from the resume state")
    if _without_seconds(history) != _without_seconds(want_history):
        problems.append("history.json differs from the reference")
    if events.keys() != want_events.keys():
        problems.append(f"events: {len(events.keys() ^ want_events.keys())} summaries missing or extra")
    twice = [key for key, values in events.items() if len(values) > 1]
    if twice:
        problems.append(f"events: {len(twice)} summaries logged more than once")
    if any(events.get(k) != v for k, v in want_events.items() if isinstance(v[0], float)):
        problems.append("events: scalars differ")
    return problems


def _finish(workdir):
    """Reruns the command until it exits 0 (a rerun may itself be refused only by a bug)."""
    proc = _start(workdir)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the rerun after a kill failed (exit {proc.returncode}): {err.strip()}")


def _trial(workdir, rng, duration, aim):
    """Starts the command, kills it per ``aim`` ((write, count), "window" or "random"), reruns it
    until it finishes; (the state the kill left, seconds to the kill)."""
    proc = _start(workdir, aim if isinstance(aim, tuple) else None)
    started = time.time()
    if isinstance(aim, tuple):
        proc.communicate()  # the child kills itself right after that write
        state = _state(workdir) if proc.returncode == -signal.SIGKILL else "after the run finished"
        t_kill = time.time() - started
        if state != "after the run finished":
            _finish(workdir)
        return f"{aim[0]} {aim[1]} write {aim[2]}: {state}", t_kill
    if aim == "window":
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
        want_records = _records(reference)
        print(f"reference run: {duration:.1f} s, {len(want)} checkpoint tensors, "
              f"{len(want_records[1])} summaries; {want_results}")
        trials = []
        if FLAGS.aim_at_writes and FLAGS.signal != "KILL":
            raise ValueError("--aim_at_writes kills with SIGKILL: pass --signal=KILL or --noaim_at_writes")
        aimed = write_windows()[:FLAGS.n] if FLAGS.aim_at_writes else []
        rest = FLAGS.n - len(aimed)
        n_window = round(rest * FLAGS.window_share)
        others = ["window"] * n_window + ["random"] * (rest - n_window)
        rng.shuffle(others)
        for i, aim in enumerate(aimed + others):
            workdir = os.path.join(scratch, f"trial-{i:02d}")
            shutil.rmtree(workdir, ignore_errors=True)
            state, t_kill = _trial(workdir, rng, duration, aim)
            got = _tensors(workdir)
            same = got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
            same_results = _results(workdir) == want_results
            problems = records_agree(workdir, want_records)
            trials.append({"trial": i, "aim": ":".join(map(str, aim)) if isinstance(aim, tuple) else aim,
                           "killed_at_s": round(t_kill, 2), "state": state,
                           "weights_bit_identical": bool(same), "results_identical": bool(same_results),
                           "records_agree": not problems, "problems": problems})
            print(f"[{i + 1}/{FLAGS.n}] kill at {t_kill:5.1f} s ({state}): weights "
                  f"{'identical' if same else 'DIFFER'}, results "
                  f"{'identical' if same_results else 'DIFFER'}, records "
                  f"{'agree' if not problems else 'DISAGREE: ' + '; '.join(problems)}", flush=True)
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        if not FLAGS.workdir:
            shutil.rmtree(scratch, ignore_errors=True)
    states = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    ok = sum(t["weights_bit_identical"] and t["results_identical"] and t["records_agree"] for t in trials)
    result = {"n": FLAGS.n, "epochs": FLAGS.epochs, "signal": FLAGS.signal,
              "command": " ".join(_argv("WORKDIR")[1:]), "aimed_at_writes": len(aimed),
              "reference_seconds": duration, "identical": ok, "states": states, "trials": trials}
    lines = [f"SIG{FLAGS.signal} soak: {ok}/{FLAGS.n} trials bit-identical to the uninterrupted run "
             f"(weights of every checkpoint and results.json) with every record agreeing "
             f"(history.json, resume state, events: each summary once)",
             f"{len(aimed)} kills in each window between two end-of-epoch writes in turn, {n_window} in the "
             f"final-evaluation window, {rest - n_window} at random times", "",
             f"{'where the kill landed':<60} {'kills':>5}"]
    lines += [f"{s:<60} {c:>5}" for s, c in sorted(states.items())]
    measure.write_results(FLAGS.output, result, "\n".join(lines))
    if ok != FLAGS.n:
        raise ValueError(f"{FLAGS.n - ok} of {FLAGS.n} trials were not bit-identical or their "
                         "records disagree")


if __name__ == "__main__":
    common.run(main)
