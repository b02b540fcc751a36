"""The sweep on a Ray cluster: one Ray task per job, its dependencies as task dependencies.

    tf-ntk-reproduce --preset=quick --executor=ray                        # a local Ray, started here
    tf-ntk-reproduce --preset=cifar10 --executor=ray --ray_address=HEAD:6379 --workdir=gs://b/sweep

Each job runs in a Ray worker process the way the local pool runs it (`tf_ntk.cli.common.execute`:
the binary's flag parsing and main, in-process, its output to its log file). A task starts only
when the tasks of its dependencies have finished; a job whose dependency failed is not run. A task
whose worker dies (preempted, killed, out of memory) is retried by Ray, and the job resumes from its
own state (a training run from its resume checkpoint), so the numbers equal an uninterrupted run's.
Resources per job family come from the preset (`tf_ntk.study.presets.Preset.resources`: CPUs, GPUs, TPU
chips, memory). Every job reads and writes the sweep directory through `tf.io.gfile`: with a
cluster on other machines the sweep directory must be on a shared file system (gs://).

Ray is an optional dependency (``pip install "tf_ntk[ray]"``); nothing here imports it until a
sweep runs on it.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import importlib.util
import os
import socket
import time
from typing import Any

from tf_ntk import rundir
from tf_ntk.study import sweep

RETRIES = 3  # task retries after its worker process died
JOBS_PER_WORKER = sweep.JOBS_PER_WORKER  # a Ray worker process is replaced after this many jobs
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray_address={address} is not host:port (the head's GCS address, e.g. "
                         "10.0.0.2:6379)")
    return host.strip("[]"), int(port)


def is_local_address(address: str) -> bool:
    """Whether ``address`` (host:port) is this machine."""
    host, _ = _split_address(address)
    return host in LOCAL_HOSTS or host in {socket.gethostname(), socket.getfqdn()}


def check(address: str | None, sweep_dir: str) -> None:
    """Refuses, with one line each, what cannot work, before anything is written: Ray not
    installed, an address that is not host:port or does not answer within 2 s, a local sweep
    directory with a cluster on other machines."""
    if importlib.util.find_spec("ray") is None:
        raise ValueError('--executor=ray needs Ray: pip install "tf_ntk[ray]"')
    if address is None:
        return
    host, port = _split_address(address)
    if not is_local_address(address) and rundir.is_local(sweep_dir):
        raise ValueError(f"--workdir={sweep_dir} is on this machine's disk, but the Ray cluster at "
                         f"{address} runs jobs on other machines: use a shared directory (gs://…)")
    try:
        with socket.create_connection((host, port), timeout=2.0):
            pass
    except OSError as e:
        raise ValueError(f"no Ray cluster answers at --ray_address={address} ({e.strerror or e}); "
                              "start one with `ray start --head` or correct the address") from None


def _token_auth_for(address: str | None) -> None:
    """Ray's own rule for a cluster it finds by itself, applied to an explicit address: with
    RAY_AUTH_MODE unset and an authentication token at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH
    or ~/.ray/auth_token, where `ray start` keeps it), connect with token authentication."""
    if address is None or "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.exists(path):
        os.environ["RAY_AUTH_MODE"] = "token"


def _configure_worker(threads: int) -> None:
    """A Ray worker's TensorFlow threads, once, before its runtime starts (as the local pool's)."""
    import tensorflow as tf  # noqa: PLC0415  (in the worker process)

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:  # this worker already ran a job: its runtime keeps its settings
        pass


def _run_job(execute: Callable[[str, list[str], str], str | None], module: str, args: Sequence[str], log_path: str,
             threads: int, *dependencies: tuple[Any, ...]) -> tuple[str, str | None, float, float]:
    """The Ray task of one job: ("ok" | "failed" | "blocked", error, start, end)."""
    if any(status != "ok" for status, *_ in dependencies):
        return "blocked", None, 0.0, 0.0
    _configure_worker(threads)

    start = time.time()
    rundir.makedirs(os.path.dirname(log_path))
    error = execute(module, list(args), log_path)
    return ("ok" if error is None else "failed"), error, start, time.time()


class RayExecutor(sweep.Executor):
    """Runs a sweep's jobs as Ray tasks on the cluster at ``address`` (None: a local Ray started for
    this sweep with ``workers`` CPUs and shut down at its end; an existing cluster is left running).

    Args:
      address: the head's address host:port, or None.
      workers: CPUs of the local Ray (ignored with an address).
      resources: {job family ("phase1", "eval", …; "*" for the rest): Ray task options
        (num_cpus, num_gpus, memory, resources={"TPU": n})}.
      costs: optional progress callback's unit: each job's `sweep.Job.cost`.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None,
                 resources: dict[str, dict[str, Any]] | None = None) -> None:
        self.address = address
        self.workers = workers or os.cpu_count() or 1
        self.resources = resources or {"*": {"num_cpus": 1}}

    def describe(self) -> str:
        return f"Ray at {self.address}" if self.address else f"a local Ray with {self.workers} CPUs"

    def _options(self, job: sweep.Job) -> dict[str, Any]:
        family = job.name.split("/", 1)[0]
        options = dict(self.resources.get(family, self.resources.get("*", {"num_cpus": 1})))
        options.setdefault("num_cpus", 1)
        return options

    def run(self, jobs: Sequence[sweep.Job], execute: Callable[[str, list[str], str], str | None], *, log_dir: str,
            report: Callable[[str, sweep.Job, Any], Any] | None = None) -> sweep.Outcome:
        _token_auth_for(self.address)  # before Ray is imported: it reads RAY_AUTH_MODE once
        import ray  # noqa: PLC0415  (optional dependency)

        report = report or (lambda *a: None)
        start = time.time()
        ordered = sweep.order(jobs)
        finished = {j.name for j in ordered if j.done()}
        skipped = [j.name for j in ordered if j.name in finished]
        pending = [j for j in ordered if j.name not in finished]
        started_here = not ray.is_initialized()
        if started_here:
            if self.address:
                ray.init(address=self.address, logging_level="ERROR",  # type: ignore[arg-type]  # a level name
                         log_to_driver=False)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False,
                         logging_level="ERROR",  # type: ignore[arg-type]  # a level name, as logging takes
                         log_to_driver=False)
        try:
            remote = ray.remote(max_calls=JOBS_PER_WORKER)(_run_job)
            refs: dict[str, Any] = {}
            by_ref: dict[Any, sweep.Job] = {}
            for job in pending:
                options = self._options(job)
                threads = max(1, int(options.get("num_cpus", 1)))
                ref = remote.options(max_retries=RETRIES, retry_exceptions=False, **options).remote(
                    execute, job.module, tuple(job.args), os.path.join(log_dir, job.name + ".log"), threads,
                    *[refs[d] for d in job.deps if d in refs])
                refs[job.name] = ref
                by_ref[ref] = job
                report("start", job, None)
            ran, failed, blocked, times = [], {}, [], {}
            waiting = list(by_ref)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                job = by_ref[done[0]]
                try:
                    status, error, started, ended = ray.get(done[0])
                except ray.exceptions.RayError as e:  # retries exhausted, or the task was lost
                    status, error, started, ended = "failed", rundir.one_line(e), 0.0, 0.0
                if status == "ok" and job.output is not None and not job.done():
                    status, error = "failed", f"finished without writing {job.output}"
                if status == "ok":
                    ran.append(job.name)
                    times[job.name] = (started, ended)
                    report("done", job, ended - started)
                elif status == "blocked":
                    blocked.append(job.name)
                    report("blocked", job, None)
                else:
                    failed[job.name] = error
                    times[job.name] = (started, ended)
                    report("failed", job, error)
        finally:
            if started_here:
                ray.shutdown()
        return sweep.Outcome(ran=ran, skipped=skipped, failed=failed, blocked=blocked,
                             seconds=time.time() - start, times=times)
