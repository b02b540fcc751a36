r"""How long phase 1 must run on digits for the kernel to reach its lazy phase: velocity curves of
candidate schedules, written to bench/results/phase1_convergence.json and .txt (a table).

    python -m bench.phase1_convergence                      # 2 seeds x 4 schedules, ~4 minutes on 2 cores
    python -m bench.phase1_convergence --bench_schedules=10:,10:8   # epochs:boundaries, / between

For each schedule (epochs, learning-rate boundaries) and source (standard, PGD-10
clean-then-adversarial at ε = 0.2, the digits preset's MLP 64-256-256-10, lr 0.05, batch 128), one
run per seed with checkpoints on a grid, then tf-ntk-kernel-dynamics on 100 probe images: the kernel's
velocity d(K_t, K_t+dt) / dt between grid epochs. Reported: the final velocity over the peak (the
study's convergence check wants < 0.1), and the share of the adversarial kernel's way to its final
kernel covered at 10% of phase 1 (C1b's endpoint). Seeds 900… (outside every preset's range).
"""

import csv
import io
import os
import sys
import tempfile
import time

from absl import app
from absl import flags

from tf_ntk import rundir
from tf_ntk.cli import common
from tf_ntk.study import presets
from tf_ntk.study import stats

flags.DEFINE_integer("bench_seeds", 2, "Seeds per schedule and source.")
flags.DEFINE_list("bench_schedules", ["20:", "40:30", "50:", "60:40/50"],
                  "Schedules as epochs:boundaries, boundaries separated by / (lr x 0.1 at each).")
flags.DEFINE_string("bench_dir", os.path.join(tempfile.gettempdir(), "tf_ntk-phase1-convergence"),
                    "Where the runs go (a rerun reuses finished ones).")
flags.DEFINE_string("bench_output", os.path.join(os.path.dirname(__file__), "results",
                                                 "phase1_convergence.json"), "JSON results.")

FLAGS = flags.FLAGS
SEED_BASE = 900


def _execute(module, args, log):
    error = common.execute(module, args, log_path=log)
    if error is not None:
        raise SystemExit(f"{module} {' '.join(args)} failed: {error} (log {log})")


def _grid(epochs):
    """Checkpoint epochs: the early fractions, then every 10% of phase 1."""
    tenth = epochs / 10
    return sorted({0.0, 0.125, 0.25, 0.5, 1.0, 2.0, tenth, *[tenth * i for i in range(1, 11)]})


def main(argv):
    del argv
    seeds, workdir, output = FLAGS.bench_seeds, FLAGS.bench_dir, FLAGS.bench_output
    schedules = []
    for text in FLAGS.bench_schedules:
        epochs, _, boundaries = text.partition(":")
        schedules.append((int(epochs), tuple(float(b) for b in boundaries.split("/") if b)))
    preset = presets.PRESETS["digits"]
    start = time.time()
    rows = []
    for epochs, boundaries in schedules:
        label = f"{epochs} epochs, lr x0.1 at {','.join(f'{b:g}' for b in boundaries) or 'never'}"
        grid = _grid(epochs)
        for source in presets.SOURCES:
            for seed in range(SEED_BASE, SEED_BASE + seeds):
                name = f"e{epochs}-b{'-'.join(f'{b:g}' for b in boundaries)}-{source}-s{seed}"
                run = os.path.join(workdir, name)
                log = os.path.join(workdir, "logs", f"{name}.log")
                if not rundir.is_finished(run):
                    args = [f"--workdir={run}", "--dataset=digits", "--model=mlp",
                            f"--width={preset.width}", f"--eps={preset.eps!r}",
                            f"--batch_size={preset.batch_size}", f"--seed={seed}", f"--epochs={epochs}",
                            f"--lr={preset.phase1_lr!r}",
                            f"--lr_boundaries={','.join(f'{b:g}' for b in boundaries)}",
                            f"--save_epochs={','.join(f'{e:g}' for e in grid)}", "--eval_every=0",
                            f"--data_mode={'adv' if source == 'adversarial' else 'clean'}"]
                    if source == "adversarial":
                        args += [f"--adv_mode={preset.adv_mode}",
                                 f"--attack_steps={preset.train_attack_steps}"]
                    _execute("tf_ntk.cli.train", args, log)
                out = os.path.join(run, "kernels")
                csv_path = os.path.join(out, rundir.KERNEL_DYNAMICS)
                if not rundir.exists(csv_path):
                    _execute("tf_ntk.cli.kernel_dynamics",
                             [f"--run={run}", f"--workdir={out}", f"--per_class={preset.per_class}",
                              f"--test_per_class={preset.test_per_class}", "--dataset=digits"], log)
                krows = list(csv.DictReader(io.StringIO(rundir.read_text(csv_path))))
                by_epoch = {float(r["epoch"]): r for r in krows}
                velocity = [(e, float(r["velocity"])) for e, r in sorted(by_epoch.items())
                            if r.get("velocity") not in (None, "")]
                peak = max(v for _, v in velocity)
                final = epochs
                early = min((e for e in by_epoch if e > 0), key=lambda e: (abs(e - epochs / 10), e))
                covered = 1 - float(by_epoch[early]["distance_to_final"]) / float(
                    by_epoch[float(final)]["distance_to_init"])
                rows.append({"schedule": label, "epochs": epochs, "boundaries": list(boundaries),
                             "source": source, "seed": seed, "velocity": velocity,
                             "final_over_peak": velocity[-1][1] / peak, "early_epoch": early,
                             "covered_at_10pct": covered})
                print(f"{name}: final/peak velocity {velocity[-1][1] / peak:.3f}, covered at epoch "
                      f"{early:g}: {covered:.3f} ({time.time() - start:.0f} s)", flush=True)
    table = []
    for epochs, boundaries in schedules:
        for source in presets.SOURCES:
            found = [r for r in rows if r["epochs"] == epochs and r["boundaries"] == list(boundaries)
                     and r["source"] == source]
            table.append({"schedule": found[0]["schedule"], "source": source, "n": len(found),
                          "final_over_peak": [r["final_over_peak"] for r in found],
                          "covered_at_10pct": [r["covered_at_10pct"] for r in found]})
    result = {"settings": {"seeds": seeds, "model": "mlp-256", "eps": preset.eps, "lr": preset.phase1_lr,
                           "attack_steps": preset.train_attack_steps, "per_class": preset.per_class},
              "rows": rows, "table": table, "seconds": time.time() - start}
    rundir.write_json(output, result)
    lines = [f"{'schedule':<34}{'source':<13}{'final/peak velocity':<22}{'covered at 10%':<16}"]
    for t in table:
        lines.append(f"{t['schedule']:<34}{t['source']:<13}"
                     f"{str(stats.summary(t['final_over_peak'])):<22}"
                     f"{str(stats.summary(t['covered_at_10pct'])):<16}")
    lines.append(f"mean ± sd over {seeds} seeds; {time.time() - start:.0f} s")
    rundir.write_text(output[:-5] + ".txt", "\n".join(lines) + "\n")
    print("\n".join(lines) + f"; {output}")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
