"""The run directory: its files, their I/O on any file system, its lock, record and finished marker.

Every binary writes into one work directory. Its life, in one place:

    WORKDIR/.lock         the owner (pid, host, start time) while a process works in it
    WORKDIR/run.json      train's run record: the configuration, written first, checked on every start
    WORKDIR/flags.json    the command's resolved flags, written once every check has passed
    WORKDIR/resume/       train's resume checkpoint, the last whole epoch (`tf_ntk.checkpoints`)
    WORKDIR/history.json  train's per-epoch history, written after resume/ and the epoch's events
    WORKDIR/online_kernels.npz  train's probe kernels the online kernel metrics refer to
    WORKDIR/results.json  train's final record: the run is finished when, and only when, it exists
                          (evaluate, compute_kernel, ... have their own final output file)

I/O goes through ``tf.io.gfile``, so a ``gs://`` work directory works like a local one. Every file is
written atomically: locally to a hidden temporary sibling, then renamed; on object stores (gs://,
s3://), whose single-object writes are atomic, directly. JSON is strict (no NaN or ±inf).

`open_run` is the one entry point of the binaries: it checks the path, creates the directory, takes
the lock, refuses (or with ``overwrite`` clears) a finished run, and removes a directory it created
if the command fails before leaving anything worth keeping; so a refused or failed command changes
nothing, and two processes never work in one directory.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
import contextlib
import io
import json
import os
import re
import socket
import time
from typing import Any
import uuid

import numpy as np
import tensorflow as tf

LOCK = ".lock"
RECORD = "run.json"
FLAGS_FILE = "flags.json"
HISTORY = "history.json"
RESULTS = "results.json"
# The output files of the binaries, named once for the binaries that write them and the study that
# plans, waits for and reads them.
EVALUATION = "evaluation.json"  # tf-ntk-evaluate, in <run>/eval/epoch_<E>/ by default
OUTPUT_TERMS = "output_terms.npz"  # tf-ntk-evaluate --output_terms, beside it
KERNEL_DYNAMICS = "kernel_dynamics.csv"  # tf-ntk-kernel-dynamics: one row per spawn checkpoint
COMPARISON = "comparison.csv"  # tf-ntk-kernel-dynamics --compare_run: distance between two runs by epoch
EIGEN_IMAGES = "eigen_images.npz"  # tf-ntk-visualize-features
KERNEL_MACHINE = "kernel_machine.json"  # tf-ntk-kernel-machine: one row per spawn

gfile = tf.io.gfile


class LockedError(FileExistsError):
    """The work directory is in use by another live process."""


class WriteError(OSError):
    """A file of the run could not be written (disk full, permissions); the previous version of the
    file, if any, is intact."""


class RecordError(ValueError):
    """A record file (JSON) of a run that is missing, unreadable, or not the expected shape."""


def is_local(path: str | os.PathLike) -> bool:
    """Whether ``path`` is on a local file system (rename is atomic there)."""
    return "://" not in str(path) or str(path).startswith("file://")


def join(*parts: str) -> str:
    return os.path.join(*parts)


def abspath(path: str | os.PathLike) -> str:
    """``path`` made absolute when local; URLs (gs://, ram://) as they are."""
    return os.path.abspath(path) if is_local(path) and "://" not in str(path) else str(path)


def exists(path: str | os.PathLike) -> bool:
    return gfile.exists(str(path))


def isdir(path: str | os.PathLike) -> bool:
    return gfile.isdir(str(path))


def glob(pattern: str | os.PathLike) -> list[str]:
    """Paths matching ``pattern`` (``*`` within one directory level), on any file system."""
    return sorted(gfile.glob(str(pattern)))


def listdir(path: str | os.PathLike) -> list[str]:
    """Names of the entries of the directory ``path`` (sub-directories without a trailing slash)."""
    return sorted(n.rstrip("/") for n in gfile.listdir(str(path)))


def remove(path: str | os.PathLike) -> None:
    """Deletes the file ``path``."""
    gfile.remove(str(path))


def walk_files(root: str | os.PathLike, name: str) -> list[str]:
    """Every file called ``name`` under ``root`` (any depth), sorted."""
    found = []
    for directory, _, files in gfile.walk(str(root)):
        if name in files:
            found.append(join(directory, name))
    return sorted(found)


def mtime(path: str | os.PathLike) -> float:
    """Modification time in seconds."""
    return gfile.stat(str(path)).mtime_nsec / 1e9


def read_text(path: str | os.PathLike) -> str:
    with gfile.GFile(str(path), "r") as f:
        return f.read()


def read_bytes(path: str | os.PathLike) -> bytes:
    with gfile.GFile(str(path), "rb") as f:
        return f.read()


def one_line(error: BaseException | str) -> str:
    """The first line of an error's message, without TensorFlow's op decorations."""
    text = str(getattr(error, "message", "") or error).strip()
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\]", "", text)
    text = re.sub(r"^(/|\w+://)\S*; ", "", text)  # "<temporary file>; No space left on device"
    return text.splitlines()[0].strip() if text else type(error).__name__


def check_directory_path(path: str | os.PathLike, what: str = "--workdir") -> None:
    """Raises ValueError (one line naming ``what``) when ``path`` cannot be a directory: it is a file,
    or one of its parents is."""
    path = str(path)
    if gfile.exists(path) and not gfile.isdir(path):
        raise ValueError(f"{what}={path} is a file, not a directory")
    parent = os.path.dirname(path.rstrip("/"))
    while parent and parent not in ("/",) and not parent.endswith(":/") and not gfile.exists(parent):
        parent = os.path.dirname(parent)
    if parent and gfile.exists(parent) and not gfile.isdir(parent):
        raise ValueError(f"{what}={path}: {parent} is a file, not a directory")


def makedirs(path: str) -> None:
    check_directory_path(path, "directory")
    gfile.makedirs(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` (bytes) to ``path`` atomically; `WriteError` naming ``path`` when it cannot
    (disk full, permissions)."""
    path = str(path)
    directory = os.path.dirname(path) or "."
    try:
        if not gfile.isdir(directory):
            makedirs(directory)
        if not is_local(path):
            if path.startswith("ram://") and gfile.exists(path):
                gfile.remove(path)  # TensorFlow's in-memory file system appends instead of truncating
            with gfile.GFile(path, "wb") as f:
                f.write(data)
            return
        tmp = join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        try:
            with gfile.GFile(tmp, "wb") as f:
                f.write(data)
            gfile.rename(tmp, path, overwrite=True)
        except BaseException:
            if gfile.exists(tmp):
                gfile.remove(tmp)
            raise
    except (OSError, tf.errors.OpError) as e:
        raise WriteError(f"cannot write {path}: {one_line(e)}") from e


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as strict JSON (no NaN or ±inf: ValueError naming ``path``) atomically."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"not written: {path} would hold a non-finite number ({e})") from None
    write_text(path, text)


def read_json(path: str | os.PathLike, what: str = "run record", expect: type | None = dict) -> Any:
    """The JSON value in ``path``, of type ``expect``; `RecordError` naming the file when it is
    missing, unreadable, not JSON, or another shape."""
    try:
        with gfile.GFile(str(path), "r") as f:
            value = json.loads(f.read())
    except (OSError, tf.errors.OpError, ValueError, UnicodeDecodeError) as e:
        raise RecordError(f"corrupt {what} {path}: {one_line(e)}") from None
    if expect is not None and not isinstance(value, expect):
        raise RecordError(f"corrupt {what} {path}: expected a JSON {expect.__name__}, got "
                          f"{type(value).__name__}")
    return value


def write_npz(path: str | os.PathLike, compressed: bool = False, **arrays: Any) -> None:
    """Writes NumPy ``arrays`` to ``path`` (.npz) atomically."""

    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{name: array} of the .npz file at ``path`` (any file system)."""
    with gfile.GFile(str(path), "rb") as f, np.load(io.BytesIO(f.read())) as z:
        return {k: z[k] for k in z.files}


def rmtree(path: str) -> None:
    if gfile.exists(path):
        gfile.rmtree(path)


# --- the lock ----------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: str) -> dict[str, Any] | None:
    try:
        with gfile.GFile(path, "r") as f:
            owner = json.loads(f.read())
        return owner if isinstance(owner, dict) else None
    except (OSError, tf.errors.OpError, ValueError):
        return None


def _take(path: str) -> None:
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
    if not is_local(path):  # object stores: no exclusive create; check, then write (best effort)
        if gfile.exists(path):
            raise FileExistsError(path)
        with gfile.GFile(path, "w") as f:
            f.write(record)
        return
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(record)
    except OSError as e:
        os.remove(path)
        raise WriteError(f"cannot write the lock {path}: {one_line(e)}") from e


def _mtime(path: str) -> float:
    try:
        return mtime(path)
    except (OSError, tf.errors.OpError):
        return time.time()


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
    """Holds ``workdir``'s lock for the body (``workdir`` must exist). Raises `LockedError` (one
    line naming the owner) when a live process holds it.

    The lock file is created exclusively (O_EXCL), so of two processes starting together exactly
    one gets it. A lock whose owner ran on this host and is gone is stale and is taken over: renamed
    away atomically first, so two processes cannot both take it over. A lock from another host is
    never judged stale (its process cannot be checked from here).
    """
    path = join(workdir, LOCK)
    for _ in range(3):
        try:
            _take(path)
            break
        except FileExistsError:
            owner = _owner(path)
            here = owner is not None and owner.get("host") == socket.gethostname()
            if owner is not None and (not here or _alive(int(owner.get("pid", -1)))):
                raise LockedError(f"{workdir} is in use by process {owner.get('pid')} on "
                                  f"{owner.get('host')} (lock {path}); wait for it to finish, or "
                                  "remove the lock if that process is gone") from None
            if owner is None and time.time() - _mtime(path) < 5:
                time.sleep(0.2)  # another process is writing its lock right now
                continue
            stale = f"{path}.stale-{os.getpid()}"
            try:
                gfile.rename(path, stale)  # atomic locally: one process takes a stale lock over
                gfile.remove(stale)
            except (FileNotFoundError, tf.errors.NotFoundError):
                pass  # another process took it over first; try again
    else:
        raise LockedError(f"{workdir}: could not take the lock {path}")
    try:
        yield
    finally:
        owner = _owner(path)
        if owner is not None and owner.get("pid") == os.getpid():
            gfile.remove(path)


# --- records and the finished marker ------------------------------------------------------------


def is_finished(workdir: str) -> bool:
    """Whether ``workdir`` holds a finished training run (its final record, results.json)."""
    return gfile.exists(join(workdir, RESULTS))


def read_record(workdir: str) -> dict[str, Any] | None:
    """The run record (run.json) of ``workdir``, or None when there is none."""
    path = join(workdir, RECORD)
    return read_json(path) if gfile.exists(path) else None


def write_record(workdir: str, record: dict[str, Any]) -> None:
    write_json(join(workdir, RECORD), record)


def write_flags(workdir: str, resolved: dict[str, Any]) -> None:
    write_json(join(workdir, FLAGS_FILE), resolved)


def _contents(workdir: str) -> list[str]:
    return [name for name in gfile.listdir(workdir) if name.rstrip("/") != LOCK]


@contextlib.contextmanager
def open_run(workdir: str | os.PathLike, *, overwrite: bool = False, finished: Callable[[str], bool] | None = None,
             keep_if: Callable[[str], bool] | None = None) -> Iterator[str]:
    """The body's work directory ``workdir``: checked, created, locked; on failure, cleaned up.

    Args:
      workdir: the run directory (any file system `tf.io.gfile` reads).
      overwrite: when ``finished(workdir)``, clear it (under the lock) instead of refusing.
      finished: ``workdir -> bool``, whether the directory already holds a finished run; then the
        command is refused with FileExistsError (before anything is written) unless ``overwrite``.
      keep_if: ``workdir -> bool``; when the body fails in a directory this call created, it is
        removed again unless ``keep_if`` says it holds something worth keeping (e.g. a resumable
        checkpoint), so a bad invocation leaves no directory behind.
    """
    workdir = str(workdir)
    check_directory_path(workdir)
    created = not gfile.exists(workdir)
    try:
        gfile.makedirs(workdir)
    except (OSError, tf.errors.OpError) as e:
        raise WriteError(f"cannot create --workdir={workdir}: {one_line(e)}") from e
    try:
        with lock(workdir):
            if finished is not None and finished(workdir):
                if not overwrite:
                    raise FileExistsError(f"{workdir} holds a finished run; pass --overwrite to "
                                          "replace it or choose another --workdir")
                for name in _contents(workdir):
                    path = join(workdir, name.rstrip("/"))
                    gfile.rmtree(path) if gfile.isdir(path) else gfile.remove(path)
                created = True  # nothing of the old run is left to keep
            yield workdir
    except BaseException as e:
        if created and not isinstance(e, LockedError) and not (keep_if is not None and keep_if(workdir)):
            rmtree(workdir)
        raise
