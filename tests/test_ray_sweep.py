"""The sweep on a real local Ray cluster (head and workers as processes, `ray start` in a temporary
directory, 2 CPUs): dependencies as task dependencies (checked from the jobs' start and end times),
failures block their dependents, finished jobs are skipped, a killed worker's job is retried and
resumes; and the one-line refusals of --executor=ray."""

import os
import signal
import socket
import threading
import time

import pytest

from tests import helpers
from tf_ntk.cli import reproduce
from tf_ntk.study import ray_sweep
from tf_ntk.study import sweep

pytestmark = pytest.mark.xdist_group("ray")


def ray_job(module, args, log_path):
    """A fake job for Ray workers: records its pid and attempt, sleeps --sleep seconds, then writes
    --out (unless --fail). A job run again after a kill finds its earlier attempt (its "resume
    state") and says so in its log."""
    values = dict(a.split("=", 1) for a in args if "=" in a)
    out = values["--out"]
    attempts = out + ".attempts"
    earlier = open(attempts, encoding="utf-8").read().split() if os.path.exists(attempts) else []  # noqa: SIM115
    with open(attempts, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(f"{module} {args}{' resuming' if earlier else ''}\n")
    time.sleep(float(values.get("--sleep", 0)))
    if "--fail" in args:
        return "asked to fail"
    with open(out, "w", encoding="utf-8") as f:
        f.write(str(len(earlier) + 1))
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    with helpers.ray_head() as address:
        yield address


def _job(tmp_path, name, deps=(), fail=False, sleep=0.0):
    out = str(tmp_path / f"{name}.out")
    args = (f"--out={out}", f"--sleep={sleep}") + (("--fail",) if fail else ())
    return sweep.Job(name, "fake", args, out, deps)


def test_jobs_run_after_their_dependencies_failures_block_and_done_jobs_are_skipped(ray_cluster, tmp_path):
    (tmp_path / "done.out").write_text("earlier")
    jobs = [_job(tmp_path, "done"), _job(tmp_path, "a", ("done",), sleep=0.5), _job(tmp_path, "bad", fail=True),
            _job(tmp_path, "after_bad", ("bad", "a")), _job(tmp_path, "b", ("a",)),
            _job(tmp_path, "c", ("a", "b")), _job(tmp_path, "d")]
    events = []
    outcome = ray_sweep.RayExecutor(ray_cluster).run(
        jobs, ray_job, log_dir=str(tmp_path / "logs"), report=lambda e, job, d: events.append((e, job.name)))
    assert outcome.skipped == ["done"]
    assert sorted(outcome.ran) == ["a", "b", "c", "d"]
    assert outcome.failed == {"bad": "asked to fail"}
    assert outcome.blocked == ["after_bad"] and not outcome.ok
    assert (tmp_path / "done.out").read_text() == "earlier"
    assert not (tmp_path / "after_bad.out").exists() and not (tmp_path / "logs" / "after_bad.log").exists()
    for job in jobs:  # no job started before every dependency it ran with had ended
        for dep in job.deps:
            if job.name in outcome.times and dep in outcome.times:
                assert outcome.times[job.name][0] >= outcome.times[dep][1], (job.name, dep)
    assert (tmp_path / "logs" / "bad.log").exists()


def test_a_killed_worker_s_job_is_retried_and_resumes(ray_cluster, tmp_path):
    jobs = [_job(tmp_path, "slow", sleep=6.0), _job(tmp_path, "next", ("slow",))]
    attempts = tmp_path / "slow.out.attempts"
    killed = []

    def kill_first_attempt():
        deadline = time.time() + 120
        while time.time() < deadline and not attempts.exists():
            time.sleep(0.1)
        time.sleep(0.5)
        pid = int(attempts.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_first_attempt)
    killer.start()
    outcome = ray_sweep.RayExecutor(ray_cluster).run(jobs, ray_job, log_dir=str(tmp_path / "logs"))
    killer.join()
    assert outcome.ok and sorted(outcome.ran) == ["next", "slow"]
    pids = attempts.read_text().split()
    assert len(pids) == 2 and pids[0] == str(killed[0]) != pids[1]  # a second worker ran it again
    assert (tmp_path / "slow.out").read_text() == "2"
    assert "resuming" in (tmp_path / "logs" / "slow.log").read_text().splitlines()[-1]


@pytest.mark.parametrize("argv, message", [
    (["--ray_address=127.0.0.1:{free}"], "no Ray cluster answers at --ray_address=127.0.0.1:"),
    (["--ray_address=10.255.255.1:6379"], "runs jobs on other machines: use a shared directory (gs://"),
    (["--ray_address=nonsense"], "--ray_address=nonsense is not host:port"),
])
def test_bad_ray_input_is_one_line_exit_2_and_writes_nothing(argv, message, tmp_path, capsys):
    argv = [a.replace("{free}", str(_free_port())) for a in argv]
    workdir = tmp_path / "sweep"
    start = time.time()
    code, err = helpers.run_app(reproduce, ["--preset=smoke", f"--workdir={workdir}", "--executor=ray", *argv],
                                capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not workdir.exists()
    assert time.time() - start < 10


def test_without_ray_installed_the_executor_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    real = ray_sweep.importlib.util.find_spec
    monkeypatch.setattr(ray_sweep.importlib.util, "find_spec", lambda name: None if name == "ray" else real(name))
    code, err = helpers.run_app(reproduce, ["--preset=smoke", f"--workdir={tmp_path}/sweep", "--executor=ray"],
                                capsys)
    assert code == 2 and err.strip() == 'reproduce: error: --executor=ray needs Ray: pip install "tf_ntk[ray]"'
    assert not (tmp_path / "sweep").exists()
