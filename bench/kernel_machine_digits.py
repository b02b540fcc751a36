r"""The kernel machine's robustness against the spawn epoch on digits: bench/results/kernel_machine_digits.json
and a table.

    python -m bench.kernel_machine_digits                    # 3 seeds, ~15 minutes on 2 cores
    python -m bench.kernel_machine_digits --bench_seeds=5 --bench_train_per_class=50

Phase-1 runs as the `quick` preset trains them (MLP 64-256-256-10, 10 epochs, lr 0.05, batch 128;
adversarial: PGD-10 clean-then-adversarial at ε = 0.2), standard and adversarial, one per seed; then
tf-ntk-kernel-machine on each run's spawns at --bench_spawn_epochs: the kernel machine k(x, X)(K + λI)⁻¹Y of
the spawn's full NTK on --bench_train_per_class training images per class (λ = 10⁻³ × mean eigenvalue),
its benign accuracy and its robust accuracy at ε = 0.2 (worst case of PGD-100 and the strong ensemble
at the quick preset's 2 restarts and 250 Square queries) on the first --bench_test_examples test images.
Runs live in --bench_dir (a rerun reuses finished runs and spawn results).
"""

import os
import sys
import tempfile
import time

from absl import app
from absl import flags

from tf_ntk import rundir
from tf_ntk.cli import common
from tf_ntk.study import plan
from tf_ntk.study import presets
from tf_ntk.study import stats

# Names of their own: the binaries run in this process define theirs (and reset every flag).
flags.DEFINE_integer("bench_seeds", 3, "Seeds (one standard and one adversarial run each).")
flags.DEFINE_list("bench_spawn_epochs", ["0", "0.25", "2", "10"], "Spawn epochs.")
flags.DEFINE_integer("bench_train_per_class", 20, "Training images per class of the kernel machine.")
flags.DEFINE_integer("bench_test_examples", 180, "Test images evaluated.")
flags.DEFINE_string("bench_dir", os.path.join(tempfile.gettempdir(), "tf_ntk-kernel-machine-digits"),
                    "Where the runs go.")
flags.DEFINE_string("bench_output", os.path.join(os.path.dirname(__file__), "results", "kernel_machine_digits.json"),
                    "Where to write the JSON results.")

FLAGS = flags.FLAGS


def _execute(module, args, log):
    error = common.execute(module, args, log_path=log)
    if error is not None:
        raise SystemExit(f"{module} {' '.join(args)} failed: {error} (log {log})")


def main(argv):
    del argv
    # Read once: tf_ntk.cli.common.execute resets every flag after each command.
    seeds, workdir, output = FLAGS.bench_seeds, FLAGS.bench_dir, FLAGS.bench_output
    train_per_class, test_examples = FLAGS.bench_train_per_class, FLAGS.bench_test_examples
    preset = presets.PRESETS["quick"]
    spawns = [float(e) for e in FLAGS.bench_spawn_epochs]
    save = sorted(set(spawns) | {float(preset.phase1_epochs)})
    start = time.time()
    rows = []
    for seed in range(seeds):
        for source in presets.SOURCES:
            name = plan.phase1_name(source, seed)
            run = os.path.join(workdir, name)
            log = os.path.join(workdir, "logs", f"{name}.log")
            if not rundir.is_finished(run):
                args = [f"--workdir={run}", "--dataset=digits", "--model=mlp", f"--width={preset.width}",
                        f"--eps={preset.eps!r}", f"--batch_size={preset.batch_size}", f"--seed={seed}",
                        f"--epochs={preset.phase1_epochs}", f"--lr={preset.phase1_lr!r}",
                        f"--save_epochs={','.join(f'{e:g}' for e in save)}", "--eval_every=0",
                        f"--data_mode={'adv' if source == 'adversarial' else 'clean'}"]
                if source == "adversarial":
                    args += [f"--adv_mode={preset.adv_mode}", f"--attack_steps={preset.train_attack_steps}"]
                _execute("tf_ntk.cli.train", args, log)
            out = os.path.join(run, "kernel_machine")
            if not rundir.exists(os.path.join(out, rundir.KERNEL_MACHINE)):
                _execute("tf_ntk.cli.kernel_machine", [
                    f"--phase1_run={run}", f"--workdir={out}", f"--at_epochs={','.join(f'{e:g}' for e in spawns)}",
                    f"--train_per_class={train_per_class}", f"--test_examples={test_examples}",
                    f"--eps={preset.eps!r}", f"--attack_steps={preset.eval_steps}",
                    f"--strong_restarts={preset.strong_restarts}", f"--square_queries={preset.square_queries}",
                    f"--batch_size={preset.batch_size}"], log)
            for row in rundir.read_json(os.path.join(out, rundir.KERNEL_MACHINE))["rows"]:
                rows.append({"source": source, "seed": seed, **row})
            print(f"{name} done ({time.time() - start:.0f} s)", flush=True)
    table = []
    for source in presets.SOURCES:
        for epoch in spawns:
            found = [r for r in rows if r["source"] == source and r["epoch"] == epoch]
            table.append({"source": source, "epoch": epoch, "n": len(found), **{
                m: [r[m] for r in found] for m in ("benign_accuracy", "robust_accuracy",
                                                    "robust_accuracy_protocol", "train_accuracy")}})
    result = {"settings": {"seeds": seeds, "spawn_epochs": spawns, "train_per_class": train_per_class,
                           "test_examples": test_examples, "eps": preset.eps, "model": "mlp-256",
                           "phase1_epochs": preset.phase1_epochs, "eval_steps": preset.eval_steps,
                           "strong_restarts": preset.strong_restarts, "square_queries": preset.square_queries},
              "rows": rows, "table": table, "seconds": time.time() - start}
    rundir.write_json(output, result)
    print(f"{'source':<12}{'epoch':>6}  {'train':<14}{'benign':<14}{'robust (PGD)':<14}{'robust':<14}")
    for t in table:
        cells = [str(stats.summary(t[m])) if t[m] else "–" for m in
                 ("train_accuracy", "benign_accuracy", "robust_accuracy_protocol", "robust_accuracy")]
        print(f"{t['source']:<12}{t['epoch']:>6g}  " + "".join(f"{c:<14}" for c in cells))
    print(f"mean ± sd over {seeds} seeds; {time.time() - start:.0f} s; {output}")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)

