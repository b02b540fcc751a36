r"""Prints the results table of every run under a directory (results.json of binaries.train).

    python -m binaries.results runs
"""

from binaries import quiet  # noqa: F401  (must precede TensorFlow)

# pylint: disable=g-import-not-at-top,g-bad-import-order
import glob
import json
import os

from absl import flags

from binaries import common

flags.DEFINE_string("root", "runs", "Directory holding the run directories.")

FLAGS = flags.FLAGS


def rows(root):
    """One dict per run directory under ``root`` with a results.json, sorted by path."""
    out = []
    for path in sorted(glob.glob(os.path.join(root, "**", "results.json"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        spawn = r.get("spawn")
        out.append({
            "run": os.path.relpath(os.path.dirname(path), root),
            "phase": "2" if spawn else "1",
            "dynamics": r.get("dynamics", "standard"),
            "data": r.get("data_mode", "clean") + ("" if r.get("data_mode") == "clean"
                                                    else f" ({r.get('adv_mode')})"),
            "from": "" if not spawn else os.path.relpath(spawn, root),
            "epochs": r.get("epoch"),
            "benign": r["benign_accuracy"],
            "robust": r["robust_accuracy"],
            "attack": (f"{r['attack']['norm']} eps={r['attack']['eps']:.3g} "
                       f"PGD-{r['attack']['steps']}") if r.get("attack") else "",
        })
    return out


def table(items):
    head = ["run", "phase", "dynamics", "data", "from", "benign", "robust", "attack"]
    cells = [[str(r[k]) if k not in ("benign", "robust") else f"{r[k]:.3f}" for k in head]
             for r in items]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    line = lambda c: "  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(c) for c in cells])


def main(argv):
    del argv
    items = rows(FLAGS.root)
    if not items:
        raise ValueError(f"no results.json under {FLAGS.root}")
    print(table(items))


if __name__ == "__main__":
    common.run(main)
