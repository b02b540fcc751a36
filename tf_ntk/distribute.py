"""The only place that knows about devices and workers: a `tf.distribute.Strategy` by name, and
which worker of a multi-worker job this process is.

Multi-worker jobs (``multi_worker``: GPU clusters; ``tpu``: Cloud TPU pods) run the same program in
every worker. Only the chief (`is_chief`) writes the run directory's records, summaries and final
checkpoints; every worker takes part in each collective step, so the others write their share of a
checkpoint to a temporary directory that they delete (`tf_ntk.training`).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import json
import os
import socket
import subprocess
import sys
import threading
from typing import IO
from typing import Any
from typing import cast

import numpy as np
import tensorflow as tf

from tf_ntk import rundir

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
RESOLVE_TIMEOUT_S = 5.0  # the longest a TF_CONFIG host name may take to resolve, in seconds


def _check_tf_config() -> None:
    """Raises ValueError (one line) when TF_CONFIG is set but not a usable cluster description."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ValueError(f"TF_CONFIG is not JSON ({e})") from None
    cluster, task = (config.get("cluster"), config.get("task")) if isinstance(config, dict) else (None, None)
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError('TF_CONFIG needs "cluster" and "task", e.g. {"cluster": {"worker": '
                         '["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}')
    kind, index = task.get("type"), task.get("index")
    members = cluster.get(kind)
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        raise ValueError(f"TF_CONFIG task {task} is not in its cluster {cluster}")
    for job, addresses in cluster.items():
        for i, address in _tasks(addresses):
            _check_address(f"TF_CONFIG {job} {i}", address)


def _tasks(addresses: Any) -> list[tuple[Any, Any]]:
    """[(index, address)] of one job of a TF_CONFIG cluster: a list, or a dict {index: address}."""
    if isinstance(addresses, dict):
        return sorted(addresses.items(), key=lambda item: str(item[0]))
    return list(enumerate(addresses if isinstance(addresses, list) else [addresses]))


def split_address(address: Any) -> tuple[str, int]:
    """(host, port) of ``host:port`` or ``[ipv6]:port``; ValueError (one line) when it is neither
    or the port is not in 1-65535."""
    if not isinstance(address, str):
        raise ValueError(f"address {json.dumps(address)} is not a string host:port")
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    bare_ipv6 = ":" in host and not address.startswith("[")  # [::1]:12345, not ::1:12345
    if not sep or not host or bare_ipv6 or not (port.isascii() and port.isdigit()) \
            or any(c.isspace() or c in "[]/" for c in host):
        raise ValueError(f"address {address!r} is not host:port (e.g. \"host1:12345\" or \"[::1]:12345\")")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"address {address!r}: port {int(port)} is not in 1-65535")
    return host, int(port)


def _resolve(host: str, port: int, timeout: float) -> str | None:
    """None when ``host`` resolves within ``timeout`` seconds, else why not (a daemon thread does the
    look-up, so a resolver that never answers cannot hold the process)."""
    outcome: list[str | None] = []

    def look_up() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            outcome.append(None)
        except (OSError, UnicodeError) as e:
            outcome.append(str(e.args[-1] if isinstance(e, socket.gaierror) else e))

    thread = threading.Thread(target=look_up, daemon=True, name="tf_ntk-resolve")
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def _check_address(what: str, address: Any) -> None:
    """Raises ValueError (one line naming ``what``, the task) unless ``address`` is host:port with a
    port in 1-65535 and a host that resolves within `RESOLVE_TIMEOUT_S` seconds."""
    try:
        host, port = split_address(address)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    problem = _resolve(host, port, RESOLVE_TIMEOUT_S)
    if problem:
        raise ValueError(f"{what}: address {address!r}: cannot resolve host {host!r} ({problem})")


# The watcher of `_watchdog`: a separate process, since TensorFlow holds the GIL while it waits.
# argv: seconds, the parent's pid, the one-line message's start and end, then "name=host:port" of
# each peer; stdin: closed by the parent once the wait is over (or by its death).
_WATCHER = r"""
import os, select, signal, socket, sys
seconds, parent, start, end = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if select.select([sys.stdin], [], [], seconds)[0]:
    sys.exit(0)
silent = []
for peer in sys.argv[5:]:
    name, host, port = peer.split("=", 1)[0], *peer.split("=", 1)[1].rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
    except OSError:
        silent.append(name)
if select.select([sys.stdin], [], [], 0)[0]:  # the wait ended while the peers were tried
    sys.exit(0)
sys.stderr.write(f"{start}{', '.join(silent) or 'a worker'}{end}\n")
sys.stderr.flush()
os.kill(parent, signal.SIGKILL)
"""


def _peers() -> list[str]:
    """["worker 1=host1:12345", …]: the chief and workers of TF_CONFIG's cluster, this one aside."""
    config = json.loads(os.environ["TF_CONFIG"])
    me = (config["task"]["type"], config["task"]["index"])
    return [f"{job} {i}={address}" for job, addresses in config["cluster"].items()
            if job in ("chief", "worker")  # the tasks MultiWorkerMirroredStrategy waits for
            for i, address in _tasks(addresses) if (job, int(i)) != me]


def _watchdog(seconds: float | None) -> Callable[[], None]:
    """Starts a watcher process that, unless the returned function is called within ``seconds``
    (None or 0, or no TF_CONFIG peers: no watcher), writes one line on stderr naming the workers
    that accept no connection and kills this process (SIGKILL: exit status 137). It bounds
    TensorFlow's multi-worker start-up, which waits in C++ for every worker to connect, for ever,
    holding the GIL (no Python thread or signal handler runs) and deaf to SIGTERM; TensorFlow's
    coordination-service register timeout (``cluster_register_timeout_in_ms``) does not end that
    wait."""
    peers = _peers() if seconds and os.environ.get("TF_CONFIG") else []
    if not peers:
        return lambda: None
    program = os.path.basename(sys.argv[0]).removesuffix(".py")
    watcher = subprocess.Popen(
        [sys.executable, "-I", "-c", _WATCHER, f"{seconds:g}", str(os.getpid()), f"{program}: error: ",
         f" of the multi-worker job did not answer within {seconds:g} s; start every worker with "
         "the same command", *peers], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)

    def done() -> None:
        cast(IO[bytes], watcher.stdin).close()  # stdin=PIPE: never None
        watcher.wait()

    return done


def get_strategy(name: str = "default", *, tpu: str | None = None,
                 cluster_timeout: float | None = None) -> tf.distribute.Strategy:
    """A strategy by name.

    Args:
      name: ``default`` (one device: the first GPU, else the CPU), ``mirrored`` (all local GPUs, or
        the logical CPU devices), ``multi_worker`` (MultiWorkerMirroredStrategy over the cluster of the TF_CONFIG
        environment variable; one local worker without it), ``tpu`` (TPUStrategy).
      tpu: for ``tpu``: the TPU name or grpc:// address ("" or "local" for a TPU VM).
      cluster_timeout: for ``multi_worker``: seconds to wait for every worker of the cluster to
        start and connect; past them the process ends with one line naming the workers that did not
        answer, killed (exit status 137; None or 0: wait for ever).

    ``multi_worker`` must be created before any other TensorFlow operation runs in the process
    (TensorFlow configures collective operations at start-up).

    Raises:
      ValueError: unknown name, ``tpu`` given for another strategy, a malformed TF_CONFIG, no TPU, or
        a multi-worker strategy asked for after TensorFlow started.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    if tpu is not None and name != "tpu":
        raise ValueError(f"--tpu is only for --strategy=tpu, not {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":  # the local GPUs; without any, every logical CPU device (usually one)
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy(None if gpus else [
            d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "multi_worker":
        _check_tf_config()
        started = _watchdog(cluster_timeout)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"cannot start the multi-worker strategy: {rundir.one_line(e)} "
                             "(it must be created before any other TensorFlow operation)") from e
        finally:
            started()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ValueError(f"cannot reach TPU {tpu or 'local'!r}: {rundir.one_line(e)}") from e
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run directory: True except on the non-chief workers of a
    multi-worker strategy."""
    strategy = strategy or tf.distribute.get_strategy()
    return bool(strategy.extended.should_checkpoint)


def is_multi_worker(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether the strategy spans more than one worker process (steps must then stay in lockstep)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return False
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in spec.jobs) > 1


def worker_name(strategy: tf.distribute.Strategy | None = None) -> str | None:
    """``worker 1`` / ``chief 0``: this process' task in its cluster (``None`` outside one)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None
    return f"{resolver.task_type} {resolver.task_id}"


def _sum_over_replicas(strategy: tf.distribute.Strategy, values: Sequence[float]) -> np.ndarray:
    """The sums over all replicas of all workers of the float64 vector ``values`` (1-D)."""
    local = tf.constant(values, tf.float64)

    @tf.function
    def total() -> tf.Tensor:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(local)),
                               axis=None)

    return total().numpy()


def any_worker(strategy: tf.distribute.Strategy | None, flag: Any) -> bool:
    """Whether ``flag`` is true on any worker (one collective; every worker gets the same answer)."""
    strategy = strategy or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync == 1:
        return bool(flag)
    return bool(_sum_over_replicas(strategy, [float(bool(flag))])[0] > 0)


def agree(strategy: tf.distribute.Strategy | None, value: float, what: str) -> None:
    """Checks, with one collective, that every replica of every worker holds the same int ``value``
    (0 <= value < 2**24, so the float64 sums are exact); raises ValueError naming ``what`` when they
    do not (every worker raises, none is left waiting). Doubles as a barrier: it returns once all
    workers have reached it."""
    strategy = strategy or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync == 1:
        return
    value = float(value)
    n, total, squares = (float(v) for v in _sum_over_replicas(strategy, [1.0, value, value * value]))
    if squares * n != total * total:  # exact for the small integers compared here
        raise ValueError(f"the workers disagree on {what} (this worker: {value}, mean {total / n:g}); "
                         "restart all workers together on the same run directory")
