r"""The strong ensemble's compiled members against the ART members they replaced, on every model a
sweep evaluated: bench/results/ensemble_agreement.json and a table.

    python -m bench.ensemble_agreement --sweep=runs/reproduce-quick

For each evaluation of a finished sweep (its checkpoint, test images and strong ensemble, as its
evaluation.json records them), the strong ensemble two ways, per example:

- now: APGD-CE and APGD-DLR from `tf_ntk.robust.apgd` with the ensemble's restarts, Square from
  `tf_ntk.robust.square` (``--strong_implementation=tf``, the default);
- before issue 23: ART's APGD with 5 starts whatever the restarts, and ART's Square.

The PGD members are the same in both. Reported: each robust accuracy, the examples only one of the
two breaks, and the worst case of both, per model and in all. A sound replacement breaks what the
old members broke; an example only the old members break is a model where the new ones are weaker.
"""

import glob
import os

from absl import flags
import numpy as np

from bench import measure
from tf_ntk import data
from tf_ntk import dynamics
from tf_ntk import rundir
from tf_ntk.cli import common
from tf_ntk.robust import ensembles
from tf_ntk.robust import evaluation

flags.DEFINE_string("sweep", None, "A finished sweep directory (tf-ntk-reproduce --workdir).")
flags.DEFINE_string("output", os.path.join(os.path.dirname(__file__), "results",
                                           "ensemble_agreement.json"), "The JSON results.")
flags.mark_flag_as_required("sweep")
FLAGS = flags.FLAGS


def _compare(record):
    """{model, examples, now, before, only_now, only_before, both} for one evaluation.json record."""
    f = record["flags"]
    x, y = data.load_arrays(f["dataset"], f["split"])
    if f["max_examples"]:
        x, y = x[:f["max_examples"]], y[:f["max_examples"]]
    model, _ = dynamics.load_model(record["checkpoint"], dynamics=f["eval_dynamics"])
    fn = evaluation.inference_fn(model)
    options = dict(steps=f["attack_steps"] or 100, restarts=f["strong_restarts"],
                   square_queries=f["square_queries"])
    results = {}
    for name, extra in (("now", {"implementation": "tf"}),
                        ("before", {"implementation": "art", "apgd_restarts": 5})):
        ensemble = ensembles.strong(f["eps"], f["attack_norm"], **options, **extra)
        results[name] = ensembles.evaluate(fn, x, y, ensemble, seed=f["seed"],
                                            batch_size=f["batch_size"]).correct
    now, before = results["now"], results["before"]
    return {"checkpoint": record["checkpoint"], "examples": int(len(y)), "now": float(now.mean()),
            "before": float(before.mean()), "only_now": int(np.sum(~now & before)),
            "only_before": int(np.sum(~before & now)), "both": float(np.mean(now & before))}


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    paths = sorted(glob.glob(os.path.join(FLAGS.sweep, "*", "*", "eval", "*", rundir.EVALUATION)))
    if not paths:
        raise ValueError(f"no evaluation.json under {FLAGS.sweep}/*/*/eval/: not a finished sweep")
    rows = []
    for path in paths:
        row = _compare(evaluation.read_evaluation(path))
        row["model"] = os.path.relpath(path, FLAGS.sweep).split(os.sep + "eval" + os.sep)[0]
        rows.append(row)
        print(f"  {row['model']:<48} now {row['now']:.3f} before {row['before']:.3f} "
              f"(only now {row['only_now']}, only before {row['only_before']})", flush=True)
    total = sum(r["examples"] for r in rows)
    summary = {"models": len(rows), "examples": total,
               "only_now": sum(r["only_now"] for r in rows),
               "only_before": sum(r["only_before"] for r in rows),
               "models_where_before_broke_more": sum(r["only_before"] > r["only_now"] for r in rows),
               "mean_now": float(np.mean([r["now"] for r in rows])),
               "mean_before": float(np.mean([r["before"] for r in rows]))}
    lines = [f"The strong ensemble now (TF APGD and Square) and before issue 23 (ART's, APGD x5) on "
             f"the {len(rows)} models of {FLAGS.sweep}",
             f"{'model':<48} {'examples':>8} {'now':>6} {'before':>6} {'only now':>9} {'only before':>12}"]
    for r in rows:
        lines.append(f"{r['model']:<48} {r['examples']:>8} {r['now']:>6.3f} {r['before']:>6.3f} "
                     f"{r['only_now']:>9} {r['only_before']:>12}")
    lines.append(f"in all: {summary['only_now']} of {total} examples broken only now, "
                 f"{summary['only_before']} only before; mean robust accuracy now "
                 f"{summary['mean_now']:.4f}, before {summary['mean_before']:.4f}")
    measure.write_results(FLAGS.output, {"sweep": os.path.abspath(FLAGS.sweep), "rows": rows,
                                         "summary": summary}, "\n".join(lines))


if __name__ == "__main__":
    common.run(main)
