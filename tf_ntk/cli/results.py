r"""Prints the results table of every run under a directory: benign accuracy and the quick robust
estimate of tf-ntk-train (results.json), and the robust accuracies tf-ntk-evaluate measured on the
run's final checkpoint (RUN/eval/*/evaluation.json): protocol, strong, autoattack, and the worst
case per example over those that ran ("worst").

    tf-ntk-results --root=runs
"""

import os

from absl import flags

from tf_ntk import rundir
from tf_ntk.cli import common
from tf_ntk.robust import evaluation

flags.DEFINE_string("root", "runs", "Directory holding the run directories.")

FLAGS = flags.FLAGS


def _read(path):
    r = rundir.read_json(path, what="results file")
    if "benign_accuracy" not in r:
        raise rundir.RecordError(f"corrupt results file {path}: no benign_accuracy")
    return r


def evaluations(run_dir, epoch, skipped):
    """{attack name: robust accuracy, "worst": their worst case} of the newest tf-ntk-evaluate
    result for the run's checkpoint at ``epoch`` (RUN/eval/*/evaluation.json); one file, so the
    numbers share their ε and data. Unreadable files are skipped, their one-line errors appended
    to ``skipped``."""
    paths = rundir.glob(os.path.join(run_dir, "eval", "*", rundir.EVALUATION))
    for path in sorted(paths, key=rundir.mtime, reverse=True):
        try:
            r = evaluation.read_evaluation(path)
        except rundir.RecordError as e:
            skipped.append(str(e))
            continue
        if r.get("epoch") != epoch or not r.get("robust"):
            continue
        out = {name: value["accuracy"] for name, value in r["robust"].items()}
        if len(out) > 1:
            out["worst"] = r["robust_accuracy"]
        return out
    return {}


def rows(root, skipped=None):
    """One dict per run directory under ``root`` with a readable results.json, sorted by path; the
    one-line errors of unreadable results or evaluation files are appended to ``skipped``."""
    skipped = [] if skipped is None else skipped
    out = []
    for path in rundir.walk_files(root, rundir.RESULTS):
        try:
            r = _read(path)
        except rundir.RecordError as e:
            skipped.append(str(e))
            continue
        spawn = r.get("spawn")
        quick = r.get("quick_attack") or {}
        out.append({
            "run": os.path.relpath(os.path.dirname(path), root),
            "phase": "2" if spawn else "1",
            "dynamics": r.get("dynamics", "standard"),
            "data": r.get("data_mode", "clean") + ("" if r.get("data_mode") == "clean"
                                                    else f" ({r.get('adv_mode')})"),
            "from": "" if not spawn else os.path.relpath(spawn, root),
            "epochs": r.get("epoch"),
            "benign": r["benign_accuracy"],
            "quick": r.get("robust_accuracy_quick"),
            "quick_steps": quick.get("steps"),
            **evaluations(os.path.dirname(path), r.get("epoch"), skipped),
        })
    return out


def table(items):
    """A plain-text table: the runs, benign accuracy and every robust accuracy measured."""
    fixed = ["run", "phase", "dynamics", "data", "from", "benign"]
    order = {"protocol": 0, "strong": 1, "autoattack": 2, "worst": 3}
    extra = sorted({k for r in items for k in r if k not in fixed and k not in ("epochs", "quick_steps")},
                   key=lambda k: (order.get(k, -1), k))
    head = fixed + extra
    numeric = set(head[5:])
    cells = [[("-" if r.get(k) is None else f"{r[k]:.3f}") if k in numeric else str(r.get(k, ""))
              for k in head] for r in items]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    line = lambda c: "  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(c) for c in cells])


def main(argv):
    del argv
    if not rundir.isdir(FLAGS.root):
        raise ValueError(f"--root={FLAGS.root} is not a directory")
    skipped = []
    items = rows(FLAGS.root, skipped)
    if not items and not skipped:
        raise ValueError(f"no results.json under {FLAGS.root}")
    if items:
        print(table(items))
    steps = sorted({r["quick_steps"] for r in items if r.get("quick_steps")})
    print(f"\nquick: the estimate logged during training (PGD-{'/'.join(map(str, steps)) or '?'}, one start), "
          "not a reported number.")
    if any(k in r for r in items for k in ("protocol", "strong")):
        print("protocol, strong, autoattack: tf-ntk-evaluate on the final checkpoint; worst: the "
              "worst case per example over them.")
    else:
        print("Robust accuracy: run tf-ntk-evaluate on each final checkpoint (protocol and strong).")
    if skipped:  # the readable runs are listed; the command still fails, naming the first bad file
        more = f" (and {len(skipped) - 1} more unreadable files)" if len(skipped) > 1 else ""
        raise ValueError(f"skipped {skipped[0]}{more}")


def run():
    """The `tf-ntk-results` console command (`python -m binaries.results` in a checkout)."""
    common.command(main)


if __name__ == "__main__":
    run()
