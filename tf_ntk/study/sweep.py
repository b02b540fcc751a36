"""A sweep: a graph of jobs, each one invocation of a tf_ntk binary, run by an `Executor`: the local
pool of worker processes (`LocalPool`, the default), a Ray cluster (`tf_ntk.study.ray_sweep.RayExecutor`),
or printed as shell commands for a scheduler (`PrintCommands`).

A job is done when its output file exists: every binary writes that file last and atomically, so a
rerun skips finished jobs, and an interrupted one runs again and resumes from its own state (a
training run from its resume checkpoint, a kernel walk from its cached kernels). Workers are
long-lived processes that import TensorFlow once and run job after job in-process (the same absl
parsing and main as the shell command), each with its share of the cores.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
import concurrent.futures
import dataclasses
import multiprocessing
import os
import shlex
import threading
import time
from typing import Any
from typing import TextIO

import tensorflow as tf

from tf_ntk import rundir


class WorkerDiedError(RuntimeError):
    """A worker process ended without reporting its job (killed, out of memory)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One binary invocation.

    Attributes:
      name: unique, path-like name ("phase1/adversarial-s0"); also names its log file.
      module: the binary's module ("tf_ntk.cli.train").
      args: its command-line arguments, e.g. ("--workdir=...", "--epochs=20").
      output: the file whose existence means the job is done (None: never done, always runs).
      deps: names of the jobs that must finish first.
      cost: estimated cost in train-step equivalents (one SGD step of the standard network on one
        batch), for plans and progress.
    """

    name: str
    module: str
    args: tuple
    output: str | None
    deps: tuple = ()
    cost: float = 0.0

    def command(self, python: str = "python") -> str:
        """The job as one shell command line."""
        return " ".join(shlex.quote(a) for a in (python, "-m", self.module, *self.args))

    def done(self) -> bool:
        return self.output is not None and rundir.exists(self.output)


def order(jobs: Iterable[Job]) -> list[Job]:
    """``jobs`` in dependency order (stable: a job keeps its place unless a dependency comes later).
    Raises ValueError on a duplicate name, an unknown dependency or a cycle."""
    by_name = {}
    for job in jobs:
        if job.name in by_name:
            raise ValueError(f"two jobs named {job.name}")
        by_name[job.name] = job
    for job in jobs:
        for dep in job.deps:
            if dep not in by_name:
                raise ValueError(f"job {job.name} depends on unknown job {dep}")
    ordered, placed, visiting = [], set(), set()

    def visit(job: Job) -> None:
        if job.name in placed:
            return
        if job.name in visiting:
            raise ValueError(f"dependency cycle through {job.name}")
        visiting.add(job.name)
        for dep in job.deps:
            visit(by_name[dep])
        visiting.discard(job.name)
        placed.add(job.name)
        ordered.append(job)

    for job in jobs:
        visit(job)
    return ordered


@dataclasses.dataclass
class Outcome:
    """What a sweep did: names of the jobs run, skipped as done, failed ({name: error}), and not run
    because a dependency failed; its wall time, and when each job ran (Unix seconds)."""

    ran: list
    skipped: list
    failed: dict
    blocked: list
    seconds: float
    times: dict = dataclasses.field(default_factory=dict)  # {job name: (start, end)} of the jobs run

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def _exit_with(parent: int) -> None:
    """Ends this worker as soon as the sweep process ``parent`` is gone (killed, or crashed), so that
    no orphan keeps running jobs into the sweep directory."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(threads: int, parent: int) -> None:
    """Gives a worker process its share of the cores (before TensorFlow's runtime starts) and a
    watchdog that ends it with its parent."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    for gpu in tf.config.list_physical_devices("GPU"):  # workers share the GPUs: grow, not grab
        tf.config.experimental.set_memory_growth(gpu, True)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _timed(execute: Callable[[str, list[str], str], str | None], job: Job,
           log_path: str) -> tuple[str | None, float, float]:
    """Runs ``job``; (error or None, start, end) in Unix seconds."""
    start = time.time()
    rundir.makedirs(os.path.dirname(log_path))
    error = execute(job.module, list(job.args), log_path)
    return error, start, time.time()


# Jobs a worker process runs before it is replaced by a fresh one. TensorFlow and Keras keep some
# memory of every job (traced functions, graphs): ~18 MiB per job on digits (measured over 24 quick
# preset jobs, evaluations reusing their models), 23 GB after 200 jobs per worker before models were
# reused and without recycling. A fresh worker costs one TensorFlow import (~5 s) and traces its
# attacks again.
JOBS_PER_WORKER = 40


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """TensorFlow threads for each of ``workers`` processes so that together they fill ``cores``."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def run_local(jobs: Sequence[Job], execute: Callable[[str, list[str], str], str | None], *, workers: int, log_dir: str,
              report: Callable[[str, Job, Any], Any] | None = None, jobs_per_worker: int = JOBS_PER_WORKER) -> Outcome:
    """Runs the unfinished ``jobs`` on a pool of ``workers`` processes, each job once its
    dependencies are done; a failed job blocks only the jobs that depend on it.

    Args:
      jobs: `Job`s (any order).
      execute: a module-level function ``(module, args, log_path) -> None or error line`` run in
        the workers (tf_ntk.cli.common.execute).
      workers: number of worker processes (≥ 1).
      log_dir: each job's output goes to ``log_dir/<job name>.log``.
      report: optional callback ``(event, job, detail)`` with event "start", "done", "failed" or
        "blocked" (for progress lines).
      jobs_per_worker: a worker process is replaced after this many jobs (bounds its memory).
    Returns:
      an `Outcome`.
    """
    report = report or (lambda *a: None)
    start = time.time()
    ordered = order(jobs)
    finished = {j.name for j in ordered if j.done()}
    skipped = [j.name for j in ordered if j.name in finished]
    pending = [j for j in ordered if j.name not in finished]
    ran, failed, blocked, times = [], {}, [], {}
    threads = threads_per_worker(workers)
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(threads)
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                  initargs=(threads, os.getpid()),
                                                  max_tasks_per_child=jobs_per_worker)
    try:
        running: dict[concurrent.futures.Future, Job] = {}
        while pending or running:
            for job in list(pending):
                if any(d in failed or d in blocked for d in job.deps):
                    pending.remove(job)
                    blocked.append(job.name)
                    report("blocked", job, None)
                elif len(running) < workers and all(d in finished for d in job.deps):
                    pending.remove(job)
                    log_path = os.path.join(log_dir, job.name + ".log")
                    running[pool.submit(_timed, execute, job, log_path)] = job
                    report("start", job, log_path)
            if not running:
                continue
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    error, started, ended = future.result()
                except concurrent.futures.process.BrokenProcessPool as e:
                    raise WorkerDiedError(f"a worker process died while running {job.name} (out of "
                                          "memory?); rerun to resume the sweep") from e
                if error is None and job.output is not None and not job.done():
                    error = f"finished without writing {job.output}"
                times[job.name] = (started, ended)
                if error is None:
                    finished.add(job.name)
                    ran.append(job.name)
                    report("done", job, ended - started)
                else:
                    failed[job.name] = error
                    report("failed", job, error)
    except BaseException:
        # Interrupted (a signal) or broken: stop the workers now rather than wait for their jobs;
        # each job resumes from its own state when the sweep is rerun.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return Outcome(ran=ran, skipped=skipped, failed=failed, blocked=blocked,
                   seconds=time.time() - start, times=times)


class Executor:
    """Runs a sweep's jobs, each once its dependencies are done, skipping finished ones; another
    engine is one subclass with ``run``.

    ``run(jobs, execute, *, log_dir, report=None) -> Outcome``: ``execute`` is the module-level
    ``(module, args, log_path) -> None or error line`` that runs a job in a process
    (tf_ntk.cli.common.execute); each job's output goes to ``log_dir/<job name>.log``; ``report`` is
    called with ("start" | "done" | "failed" | "blocked", job, detail).
    """

    name = ""
    workers = 1

    def run(self, jobs: Sequence[Job], execute: Callable[[str, list[str], str], str | None], *, log_dir: str,
            report: Callable[[str, Job, Any], Any] | None = None) -> Outcome:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the sweep's first message."""
        return self.name


class LocalPool(Executor):
    """`run_local`: a pool of ``workers`` processes on this machine, each with its share of the
    cores."""

    name = "local"

    def __init__(self, workers: int, jobs_per_worker: int = JOBS_PER_WORKER) -> None:
        self.workers = workers
        self.jobs_per_worker = jobs_per_worker

    def run(self, jobs: Sequence[Job], execute: Callable[[str, list[str], str], str | None], *, log_dir: str,
            report: Callable[[str, Job, Any], Any] | None = None) -> Outcome:
        return run_local(jobs, execute, workers=self.workers, log_dir=log_dir, report=report,
                         jobs_per_worker=self.jobs_per_worker)

    def describe(self) -> str:
        return (f"{self.workers} worker{'s' if self.workers > 1 else ''} × "
                f"{threads_per_worker(self.workers)} thread(s)")


class PrintCommands(Executor):
    """Prints every job as a shell command in dependency order (for any scheduler); runs nothing."""

    name = "print"

    def __init__(self, python: str = "python", out: TextIO | None = None) -> None:
        self.python = python
        self.out = out

    def run(self, jobs: Sequence[Job], execute: Callable[[str, list[str], str], str | None] | None = None, *,
            log_dir: str | None = None, report: Callable[[str, Job, Any], Any] | None = None) -> Outcome:
        import sys  # noqa: PLC0415  (stdout at call time: tests capture it)

        out = self.out or sys.stdout
        for job in order(jobs):
            print(job.command(self.python), file=out)
        return Outcome(ran=[], skipped=[], failed={}, blocked=[], seconds=0.0)
