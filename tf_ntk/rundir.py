"""The run directory's lock: one process at a time in a work directory.

A lock file ``WORKDIR/.lock`` holds its owner's pid, host and start time (JSON). It is created with
O_EXCL, so of two processes starting together exactly one gets it; the other is refused before it
writes anything. A lock whose owner ran on this host and is gone (killed, crashed) is stale and is
taken over: renamed away atomically first, so two processes cannot both take it over. A lock from
another host is never judged stale (its process cannot be checked from here).
"""

import contextlib
import json
import os
import socket
import time

LOCK = ".lock"


class LockedError(FileExistsError):
    """The work directory is in use by another live process."""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _take(path):
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, f)


@contextlib.contextmanager
def lock(workdir):
    """Holds ``workdir``'s lock for the body (``workdir`` must exist). Raises `LockedError` (one
    line naming the owner) when a live process holds it."""
    path = os.path.join(workdir, LOCK)
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
            if owner is None and time.time() - os.path.getmtime(path) < 5:
                time.sleep(0.2)  # another process is writing its lock right now
                continue
            stale = f"{path}.stale-{os.getpid()}"
            try:
                os.rename(path, stale)  # atomic: one process takes a stale lock over
                os.remove(stale)
            except FileNotFoundError:
                pass  # another process took it over first; try again
    else:
        raise LockedError(f"{workdir}: could not take the lock {path}")
    try:
        yield
    finally:
        owner = _owner(path)
        if owner is not None and owner.get("pid") == os.getpid():
            os.remove(path)
