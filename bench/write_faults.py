r"""Stops `tf-ntk-train` just before or right after one of its writes: the kills of bench/soak.py,
aimed at the windows between the end-of-epoch writes, and the same faults in-process for the tests.

The writes of a training run, in order, at the end of every epoch e (`tf_ntk.training`):

    spawn    the spawn checkpoint spawn/epoch_e            (when e is a spawn epoch)
    resume   the resume checkpoint resume/                 (the commit point)
             the epoch's events: TensorBoard scalars, its evaluation (several flushes)
    history  history.json
and at the end of the run: the final evaluation's events, then results.json (``results``).
"After resume e" and "before history e" are the two ends of the events' window.

    # a child process that SIGKILLs itself right after its 2nd resume write:
    python -m bench.write_faults --kill=after:resume:2 -- --workdir=runs/x --epochs=3 ...
"""

import os
import signal
import sys

KINDS = ("spawn", "resume", "history", "results")
WHEN = ("before", "after")


def _kind_of_checkpoint(path):
    return "resume" if os.path.basename(str(path).rstrip("/")) == "resume" else "spawn"


def _kind_of_json(path):
    from tf_ntk import rundir  # noqa: PLC0415

    return {rundir.HISTORY: "history", rundir.RESULTS: "results"}.get(os.path.basename(str(path)))


def install(when, kind, count, action):
    """Calls ``action()`` just ``when`` ("before" / "after") the ``count``-th (1-based) write of
    ``kind`` in this process.

    Patches `tf_ntk.checkpoints.write` and `tf_ntk.rundir.write_json`; returns a function that
    undoes the patches.
    """
    from tf_ntk import checkpoints  # noqa: PLC0415  (the child imports TensorFlow after its set-up)
    from tf_ntk import rundir  # noqa: PLC0415

    if when not in WHEN or kind not in KINDS:
        raise ValueError(f"unknown write {when}:{kind}; known: {'/'.join(WHEN)}:{'/'.join(KINDS)}")
    seen = {k: 0 for k in KINDS}
    originals = (checkpoints.write, rundir.write_json)

    def around(what, write):
        if what is None:
            return write()
        seen[what] += 1
        hit = what == kind and seen[what] == int(count)
        if hit and when == "before":
            action()
        result = write()
        if hit and when == "after":
            action()
        return result

    def write_checkpoint(directory, meta, **objects):
        return around(_kind_of_checkpoint(directory), lambda: originals[0](directory, meta, **objects))

    def write_json(path, obj):
        return around(_kind_of_json(path), lambda: originals[1](path, obj))

    checkpoints.write, rundir.write_json = write_checkpoint, write_json

    def undo():
        checkpoints.write, rundir.write_json = originals

    return undo


def _kill_self():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    """``--kill=WHEN:KIND:N -- <tf-ntk-train flags>``: tf-ntk-train, SIGKILLed at that write."""
    args = sys.argv[1:]
    if len(args) < 2 or not args[0].startswith("--kill=") or args[1] != "--":
        sys.exit("usage: python -m bench.write_faults --kill=before|after:KIND:N -- <tf-ntk-train flags>")
    when, kind, count = args[0].split("=", 1)[1].split(":")
    from tf_ntk.cli import train  # noqa: PLC0415  (after the usage check: TensorFlow takes seconds)

    install(when, kind, int(count), _kill_self)
    sys.argv = ["train", *args[2:]]
    train.run()


if __name__ == "__main__":
    main()
