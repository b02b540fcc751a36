r"""Stops `tf-ntk-train` right after one of its writes: the kills of bench/soak.py, aimed at the
windows between the end-of-epoch writes, and the same faults in-process for the tests.

The writes of a training run, in order, at the end of every epoch e (`tf_ntk.training`):

    spawn    the spawn checkpoint spawn/epoch_e            (when e is a spawn epoch)
    resume   the resume checkpoint resume/                 (the commit point)
    events   the event file flushed (TensorBoard scalars, the epoch's evaluation)
    history  history.json
and at the end of the run: events (the final evaluation), then results.json (``results``).

    # a child process that SIGKILLs itself right after its 2nd resume write:
    python -m bench.write_faults --kill_after=resume:2 -- --workdir=runs/x --epochs=3 ...
"""

import os
import signal
import sys

KINDS = ("spawn", "resume", "events", "history", "results")


def _kind_of_checkpoint(path):
    return "resume" if os.path.basename(str(path).rstrip("/")) == "resume" else "spawn"


def install(kind, count, action):
    """Calls ``action()`` right after the ``count``-th (1-based) write of ``kind`` in this process.

    Patches `tf_ntk.checkpoints.write`, `tf_ntk.rundir.write_json` and the flush of the summary
    writers that `tf.summary.create_file_writer` creates from now on. Returns a function that
    undoes the patches.
    """
    import tensorflow as tf  # noqa: PLC0415  (the child imports TensorFlow after its own set-up)

    from tf_ntk import checkpoints  # noqa: PLC0415
    from tf_ntk import rundir  # noqa: PLC0415

    if kind not in KINDS:
        raise ValueError(f"unknown write {kind!r}; known: {', '.join(KINDS)}")
    seen = {k: 0 for k in KINDS}

    def wrote(what):
        seen[what] += 1
        if what == kind and seen[what] == int(count):
            action()

    originals = (checkpoints.write, rundir.write_json, tf.summary.create_file_writer)

    def write_checkpoint(directory, meta, **objects):
        originals[0](directory, meta, **objects)
        wrote(_kind_of_checkpoint(directory))

    def write_json(path, obj):
        originals[1](path, obj)
        name = os.path.basename(str(path))
        if name in (rundir.HISTORY, rundir.RESULTS):
            wrote("history" if name == rundir.HISTORY else "results")

    def create_file_writer(*args, **kwargs):
        writer = originals[2](*args, **kwargs)
        flush = writer.flush

        def flushed():
            flush()
            wrote("events")

        writer.flush = flushed
        return writer

    checkpoints.write, rundir.write_json, tf.summary.create_file_writer = (
        write_checkpoint, write_json, create_file_writer)

    def undo():
        checkpoints.write, rundir.write_json, tf.summary.create_file_writer = originals

    return undo


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    """``--kill_after=KIND:N -- <tf-ntk-train flags>``: tf-ntk-train, SIGKILLed after that write."""
    args = sys.argv[1:]
    if len(args) < 2 or not args[0].startswith("--kill_after=") or args[1] != "--":
        sys.exit("usage: python -m bench.write_faults --kill_after=KIND:N -- <tf-ntk-train flags>")
    kind, count = args[0].split("=", 1)[1].split(":")
    from tf_ntk.cli import train  # noqa: PLC0415  (after the usage check: TensorFlow takes seconds)

    install(kind, int(count), _kill_self)
    sys.argv = ["train", *args[2:]]
    train.run()


if __name__ == "__main__":
    main()
