r"""Reproduces the paper's claims: phase-1 runs over seeds (and their matched-floor replicas, and the
flip run), phase-2 runs from their spawns, kernel dynamics, transfer attacks, strong evaluations, then
each claim's pre-registered primary endpoint (tf_ntk/study/claims.py), descriptive statistics, figures and a
report.

    tf-ntk-reproduce --preset=quick                  # make run: ≤ 10 minutes on 2 cores
    tf-ntk-reproduce --preset=digits --jobs=2        # the full digits study
    tf-ntk-reproduce --preset=cifar10 --dry_run      # the paper's figures: plan, device-hours
    tf-ntk-reproduce --preset=cifar10 --executor=ray --ray_address=HEAD:6379 \
        --workdir=gs://bucket/sweep --data_dir=gs://bucket/tfds   # on a Ray cluster
    tf-ntk-reproduce --preset=cifar10 --print_commands > jobs.sh   # for another scheduler

Presets (tf_ntk.study.presets.PRESETS): smoke (the tests' plumbing check), quick, digits, digits-resnet,
cifar10 (focused spawn grid), cifar10-full (every spawn); the flags below override a preset's
settings. Jobs run on a pool of --jobs worker processes (default: one per core), each with its share
of the cores, or with --executor=ray as Ray tasks (tf_ntk/study/ray_sweep.py); a rerun skips finished jobs
and resumes interrupted ones. Writes WORKDIR/report.md, results.csv, figures/*.png|pdf, the
TensorBoard log directory WORKDIR/tensorboard, and every run, kernel walk and evaluation under
WORKDIR (see tf_ntk/study/plan.py for the layout); each job's output goes to WORKDIR/logs/.
"""

import json
import os
import sys
import time

from absl import flags

from tf_ntk import data
from tf_ntk import rundir
from tf_ntk.cli import common
from tf_ntk.cli import common_flags
from tf_ntk.study import board
from tf_ntk.study import plan
from tf_ntk.study import presets
from tf_ntk.study import ray_sweep
from tf_ntk.study import report
from tf_ntk.study import sweep

common_flags.define_run_flags()
common_flags.define_data_flags()
common_flags.define_model_flags()
common_flags.define_eps_flag()
common_flags.define_strong_flags()
common_flags.define_jit_flag()
flags.DEFINE_enum("job_strategy", None, list(presets.Preset.JOB_STRATEGIES), "Override: the tf.distribute "
                  "strategy of the training and kernel jobs (tpu: each job on the TPU VM it runs on; "
                  "mirrored: the host's GPUs). Shapes how the sweep runs, not its numbers.")
flags.DEFINE_string("job_resources", None, "Override: Ray task options per job family as JSON, e.g. "
                    "'{\"*\": {\"num_cpus\": 1, \"resources\": {\"TPU\": 4}}, \"report\": {\"num_cpus\": 1}}' "
                    "(families: phase1, phase2, eval, transfer, kernels, features, kernel_machine, report; "
                    "\"*\" for the rest). Shapes how the sweep runs, not its numbers.")
flags.DEFINE_enum("preset", "quick", list(presets.PRESETS), "The study's configuration: smoke (plumbing "
                  "only), quick (make run), digits (the full digits study), digits-resnet (ResNet-18 "
                  "on digits), cifar10 (the paper's figures on a focused spawn grid), cifar10-full "
                  "(every spawn of the protocol).")
flags.DEFINE_integer("jobs", None, "Worker processes (default: the number of cores).", lower_bound=1)
flags.DEFINE_bool("dry_run", False, "Print the job plan and its cost; run nothing, load no data.")
flags.DEFINE_bool("print_commands", False, "Print every job as a shell command, in dependency order.")
flags.DEFINE_enum("executor", "local", ["local", "ray"], "What runs the jobs: local (a pool of --jobs "
                  "worker processes on this machine) or ray (one Ray task per job on the cluster at "
                  "--ray_address, or on a local Ray started for the sweep; pip install \"tf_ntk[ray]\").")
flags.DEFINE_string("ray_address", None, "--executor=ray: the Ray head's address host:port (default: "
                    "start a local Ray with --jobs CPUs). A cluster on other machines needs a shared "
                    "--workdir (gs://…).")
flags.DEFINE_bool("report_only", False, "Only (re)write the report from what the sweep holds.")
flags.DEFINE_integer("seeds", None, "Override: number of seeds.", lower_bound=1)
flags.DEFINE_integer("phase1_epochs", None, "Override: phase-1 epochs.", lower_bound=1)
flags.DEFINE_integer("phase2_epochs", None, "Override: phase-2 epochs.", lower_bound=1)
common_flags.define_float_list("spawn_epochs", None, "Override: phase-1 epochs phase 2 starts from.")
common_flags.define_float_list("kernel_epochs", None, "Override: phase-1 epochs at which kernels are "
                               "measured.")
flags.DEFINE_list("phase2_dynamics", None, "Override: centered, linearized and/or standard.")
flags.DEFINE_list("phase2_data", None, "Override: clean and/or adv.")
flags.DEFINE_integer("eval_examples", None, "Override: test examples evaluated.", lower_bound=1)

FLAGS = flags.FLAGS
SWEEP_RECORD = "sweep.json"


def preset_from_flags():
    """The preset --preset names, with the override flags applied (validated)."""
    changes = {}
    for name in ("seeds", "phase1_epochs", "phase2_epochs", "eval_examples", "strong_restarts",
                 "square_queries", "dataset", "model", "width", "eps", "jit_compile", "job_strategy"):
        if name in FLAGS and FLAGS[name].present:
            changes[name] = FLAGS[name].value
    for name in ("spawn_epochs", "kernel_epochs"):
        if FLAGS[name].present:
            changes[name] = tuple(FLAGS[name].value)
    for name in ("phase2_dynamics", "phase2_data"):
        if FLAGS[name].present:
            changes[name] = tuple(FLAGS[name].value)
    if FLAGS.job_resources is not None:
        try:
            changes["resources"] = json.loads(FLAGS.job_resources)
        except json.JSONDecodeError as e:
            raise ValueError(f"--job_resources is not JSON: {e.msg} at character {e.pos}") from e
        if not isinstance(changes["resources"], dict):
            raise ValueError("--job_resources must be a JSON object {family: Ray task options}")
    if "model" in changes and "width" not in changes:
        changes["width"] = None
    return presets.PRESETS[FLAGS.preset].replace(**changes)


def _data_args():
    args = []
    if FLAGS.data_dir:
        args.append(f"--data_dir={FLAGS.data_dir}")
    if FLAGS.download:
        args.append("--download")
    return args


def _check_record(workdir, preset, replace=True):
    """Refuses a work directory that holds a sweep of other settings (unless --overwrite and
    ``replace``)."""
    path = rundir.join(workdir, SWEEP_RECORD)
    if not rundir.exists(path):
        return
    recorded = {k: v for k, v in rundir.read_json(path, what="sweep record").get("preset").items()
                if k not in presets.Preset.RUN_ONLY}
    wanted = json.loads(json.dumps(preset.numbers_dict()))
    if recorded != wanted:
        if FLAGS.overwrite and replace:
            rundir.rmtree(workdir)
            return
        changed = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
        raise FileExistsError(f"{workdir} holds a sweep with other settings ({', '.join(changed)}); "
                              "pass --overwrite to replace it or choose another --workdir")


def _recorded_preset(workdir):
    path = rundir.join(workdir, SWEEP_RECORD)
    if not rundir.exists(path):
        raise FileNotFoundError(f"{path} not found: --report_only needs a sweep directory (or the "
                                "--preset and override flags the sweep ran with)")
    return presets.Preset.from_dict(rundir.read_json(path, what="sweep record").get("preset"))


def _print_plan(preset, jobs):
    print(f"preset {preset.name}: {preset.description}")
    table = plan.cost_table(jobs)
    total = sum(cost for _, _, cost in table)
    print(f"{'jobs':<10}{'count':>8}{'train-step equivalents':>26}{'share':>8}")
    for kind, count, cost in table:
        print(f"{kind:<10}{count:>8}{cost:>26,.0f}{cost / max(total, 1e-9):>8.1%}")
    print(f"{'total':<10}{len(jobs):>8}{total:>26,.0f}")
    print("(one train-step equivalent: one SGD step of the standard network on one batch of "
          f"{preset.batch_size}; an evaluation counts the strong ensemble's first attack on every image "
          f"and the others on {plan.SURVIVING_SHARE:.0%} of them)")
    devices = plan.step_seconds(preset)
    if devices:
        print(f"{'device':<8}{'s/step':>8}{'device-hours':>14}  source")
        for kind, (seconds, source) in devices.items():
            print(f"{kind:<8}{seconds:>8.3g}{total * seconds / 3600:>14,.0f}  {source}")
        print("(device-hours: the plan on one device of the kind, or the sum over a cluster's devices; "
              "python -m bench.accelerator on a device measures its step)")


def _report(preset, workdir, outcome_line=""):

    verdicts, paths = report.write(preset, workdir, outcome_line)
    print()
    print("\n".join(report.summary_lines(verdicts)))
    print()
    print(f"report:  {paths['report']}")
    print(f"numbers: {paths['results']}")
    print(f"figures: {os.path.join(workdir, 'figures')}/ ({len(paths['figures'])} PNG + PDF)")
    print(f"TensorBoard:  {board.command(workdir)}")
    print(f"              {board.URL_HINT}")


def _preset_flags():
    """The flags given that shape the preset (serialized), for the report job's command."""
    skip = {"workdir", "jobs", "dry_run", "print_commands", "report_only", "overwrite", "executor",
            "ray_address"}
    module = sys.modules[__name__]
    return [FLAGS[f.name].serialize() for f in FLAGS.get_key_flags_for_module(module)
            if f.present and f.name not in skip]


def _report_preset(workdir):
    """--report_only's preset: the sweep's record, checked against the flags when they shape one."""
    if not rundir.isdir(workdir):
        raise FileNotFoundError(f"{workdir} is not a sweep directory")
    if not _preset_flags():
        return _recorded_preset(workdir)
    preset = preset_from_flags()
    _check_record(workdir, preset, replace=False)
    return preset


def main(argv):
    del argv
    workdir = FLAGS.workdir or os.path.join("runs", f"reproduce-{FLAGS.preset}")
    if FLAGS.report_only:
        _report(_report_preset(workdir), workdir)
        return
    preset = preset_from_flags()
    jobs = plan.plan(preset, workdir,
                      report_args=[f"--workdir={workdir}", *_preset_flags(), "--report_only"])
    extra = _data_args()
    if extra:
        jobs = [sweep.Job(j.name, j.module, j.args + tuple(extra), j.output, j.deps, j.cost)
                if j.module != "tf_ntk.cli.reproduce" else j for j in jobs]
    if FLAGS.dry_run:
        _print_plan(preset, jobs)
        return
    if FLAGS.print_commands:
        sweep.PrintCommands().run(jobs)
        return
    if FLAGS.executor == "ray":
        ray_sweep.check(FLAGS.ray_address, workdir)
    if rundir.isdir(workdir) and rundir.listdir(workdir) and not rundir.exists(
            rundir.join(workdir, SWEEP_RECORD)):
        raise FileExistsError(f"{workdir} exists and holds no sweep ({SWEEP_RECORD}); choose another "
                              "--workdir")
    data.check_prepared(preset.dataset, data_dir=FLAGS.data_dir, download=FLAGS.download)
    if FLAGS.overwrite and rundir.exists(rundir.join(workdir, SWEEP_RECORD)):
        rundir.rmtree(workdir)  # start over
    _check_record(workdir, preset)
    rundir.makedirs(workdir)
    with rundir.lock(workdir):
        _sweep(preset, jobs, workdir)


JOB_TIMES = "job_times.json"  # in WORKDIR/logs: {job name: [start, end]} (Unix s), latest run of each


def _record_job_times(workdir, times):
    path = os.path.join(workdir, "logs", JOB_TIMES)
    recorded = rundir.read_json(path) if rundir.exists(path) else {}
    recorded.update({name: [round(a, 3), round(b, 3)] for name, (a, b) in times.items()})
    rundir.write_json(path, recorded)


def _sweep(preset, jobs, workdir):
    """Runs the unfinished ``jobs`` on the local pool, then writes the report."""
    common.write_flags(workdir, __name__)
    rundir.write_json(os.path.join(workdir, SWEEP_RECORD), {"preset": preset.to_dict()})
    workers = FLAGS.jobs or os.cpu_count() or 1
    executor = (ray_sweep.RayExecutor(FLAGS.ray_address, workers, preset.job_resources())
                if FLAGS.executor == "ray" else sweep.LocalPool(workers))
    runnable = [j for j in jobs if j.output is not None]
    todo = sum(not j.done() for j in runnable)
    total_cost = sum(j.cost for j in runnable if not j.done()) or 1.0
    print(f"preset {preset.name}: {len(runnable)} jobs ({len(runnable) - todo} already done), "
          f"{executor.describe()} → {workdir}")
    start = time.time()
    count = [len(runnable) - todo, 0.0]

    def progress(event, job, detail):
        if event == "done":
            count[0] += 1
            count[1] += job.cost
            print(f"[{count[0]}/{len(runnable)}, {count[1] / total_cost:.0%} of the estimated cost] "
                  f"{job.name} ({detail:.1f} s)", flush=True)
        elif event == "failed":
            print(f"FAILED {job.name}: {detail} (log: {os.path.join(workdir, 'logs', job.name)}.log)",
                  flush=True)
        elif event == "blocked":
            print(f"not run: {job.name} (a job it needs failed)", flush=True)

    try:
        outcome = executor.run(runnable, common.execute, log_dir=os.path.join(workdir, "logs"),
                               report=progress)
    except sweep.WorkerDiedError as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        sys.exit(1)
    line = (f"Sweep: {len(outcome.ran)} jobs run, {len(outcome.skipped)} already done, "
            f"{len(outcome.failed)} failed, {len(outcome.blocked)} not run; "
            f"{time.time() - start:.0f} s with {workers} worker{'s' if workers > 1 else ''}.")
    print(line)
    report.record_time(workdir, outcome.seconds, len(outcome.ran), workers)
    _record_job_times(workdir, outcome.times)
    _report(preset, workdir, line)
    if not outcome.ok:
        print(f"reproduce: error: {len(outcome.failed)} jobs failed ({', '.join(outcome.failed)}); "
              f"their logs are in {os.path.join(workdir, 'logs')}; rerun to resume", file=sys.stderr)
        sys.exit(1)


def run():
    """The `tf-ntk-reproduce` console command (`python -m binaries.reproduce` in a checkout)."""
    common.command(main)


if __name__ == "__main__":
    run()
