r"""The sweep through Ray against the local pool, on one machine, in one run: wall-time ratios.

    python -m bench.ray_overhead                         # smoke and quick, 2 workers / 2 Ray CPUs
    python -m bench.ray_overhead --presets=smoke --repeats=2

For each preset, alternately (pool, Ray, pool, Ray, …, so that drifts of a shared machine fall on
both), a fresh sweep directory: `tf-ntk-reproduce --preset=P --jobs=W` on the local pool, then
`--executor=ray` with a local Ray of W CPUs started by the command (its start-up and shut-down
included); each timed from the command's start to its exit, the report included. Writes
bench/results/ray_overhead.json and a table with the ratio Ray / pool (goal: ≤ 1.15). Both
sweeps must give the same results.csv, which is checked.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from bench import measure
from tf_ntk.cli import common

flags.DEFINE_list("presets", ["smoke", "quick"], "Presets to time.")
flags.DEFINE_integer("workers", 2, "Pool workers, and the local Ray's CPUs.", lower_bound=1)
flags.DEFINE_integer("repeats", 1, "Sweeps per executor and preset.", lower_bound=1)
flags.DEFINE_string("output", None, "JSON path (default bench/results/ray_overhead.json).")
flags.DEFINE_string("keep_results", None, "Also copy each preset's results.csv (the pool's, equal to Ray's) "
                    "into this directory as <preset>.csv, e.g. to compare with an earlier sweep.")
FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep(preset, executor, workdir):
    """Seconds of one fresh sweep, and its results.csv."""
    argv = [sys.executable, "-m", "binaries.reproduce", f"--preset={preset}", f"--workdir={workdir}",
            f"--jobs={FLAGS.workers}", f"--executor={executor}"]
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=ROOT, RAY_USAGE_STATS_ENABLED="0"))
    seconds = time.perf_counter() - start
    with open(os.path.join(workdir, "results.csv"), "rb") as f:
        return seconds, f.read()


def main(argv):
    del argv
    result = {"workers": FLAGS.workers, "cores": os.cpu_count(), "presets": {}}
    lines = [f"sweep wall time, {FLAGS.workers} pool workers vs a local Ray of {FLAGS.workers} CPUs "
             f"({os.cpu_count()} cores), median of {FLAGS.repeats}",
             f"{'preset':<8}{'pool s':>9}{'ray s':>9}{'ray / pool':>12}"]
    for preset in FLAGS.presets:
        times = {"local": [], "ray": []}
        outputs = {}
        for _ in range(FLAGS.repeats):
            for executor in ("local", "ray"):
                workdir = tempfile.mkdtemp(prefix=f"ray_overhead_{preset}_{executor}_")
                try:
                    seconds, outputs[executor] = _sweep(preset, executor, workdir)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
                times[executor].append(seconds)
        if outputs["local"] != outputs["ray"]:
            raise AssertionError(f"{preset}: Ray's results.csv differs from the pool's")
        if FLAGS.keep_results:
            os.makedirs(FLAGS.keep_results, exist_ok=True)
            with open(os.path.join(FLAGS.keep_results, f"{preset}.csv"), "wb") as f:
                f.write(outputs["local"])
        pool, ray = statistics.median(times["local"]), statistics.median(times["ray"])
        result["presets"][preset] = {"pool_seconds": times["local"], "ray_seconds": times["ray"],
                                     "ratio": ray / pool, "same_results": True}
        lines.append(f"{preset:<8}{pool:>9.1f}{ray:>9.1f}{ray / pool:>12.2f}")
    output = FLAGS.output or os.path.join(os.path.dirname(__file__), "results", "ray_overhead.json")
    measure.write_results(output, result, "\n".join(lines))


if __name__ == "__main__":
    common.run(main)
