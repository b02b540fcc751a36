"""What the benchmarks (and the memory test) measure with: wall time and resident memory."""

import os
import statistics
import time

from tf_ntk import rundir


def median_seconds(fn, repeats):
    """The median wall time of ``repeats`` calls of ``fn`` after one warm-up call (traces, compiles)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def vm_kib(field):
    """A field of /proc/self/status in KiB (VmRSS, VmHWM), 0 when absent."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak():
    """Resets the process's peak resident set size, VmHWM (Linux ≥ 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def write_results(output, result, table):
    """A benchmark's record: ``result`` as JSON at ``output`` and its ``table`` (text) beside it as
    .txt, both written atomically; prints the table."""
    rundir.write_json(output, result)
    rundir.write_text(os.path.splitext(output)[0] + ".txt", table + "\n")
    print(table)
