"""Checkpoint directories: a `tf.train.Checkpoint` plus a JSON record of the run that wrote it.

A checkpoint directory holds ``ckpt.index``, ``ckpt.data-*`` and ``meta.json``:

    {"epoch": 0.125, "step": 2, "config": {...the run's TrainConfig...}, "model": {...ModelSpec...}}

Directories are written atomically (to a hidden sibling, then renamed), so a reader never sees a
half-written checkpoint. Spawn checkpoints of a run live in ``<workdir>/spawn/epoch_<e>`` with ``e``
the (possibly fractional) epoch, ``epoch_0`` being the initialisation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any
from typing import cast
import uuid

import numpy as np
import tensorflow as tf

from tf_ntk import rundir

SPAWN_DIR = "spawn"
RESUME_DIR = "resume"
_PREFIX = "ckpt"
_META = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


def spawn_name(epoch: float) -> str:
    """``epoch_0.125`` / ``epoch_3``: the directory name of the spawn checkpoint at ``epoch``."""
    return f"epoch_{float(epoch):g}"


def spawn_path(workdir: str, epoch: float) -> str:
    return os.path.join(workdir, SPAWN_DIR, spawn_name(epoch))


# Checkpoint directories are the other half of a run's storage: written whole into a temporary
# directory, then renamed into place. They use the run directory's file-system handle (local disks,
# gs://, ram://), the one place `tf.io.gfile` is named.
gfile = rundir.gfile


def _abs(directory: str | os.PathLike) -> str:
    return rundir.abspath(str(directory).rstrip("/"))


def _siblings(parent: str, prefix: str) -> list[str]:
    if not gfile.isdir(parent):
        return []
    return [os.path.join(parent, n.rstrip("/")) for n in gfile.listdir(parent) if n.startswith(prefix)]


def write(directory: str | os.PathLike, meta: dict[str, Any], **objects: Any) -> None:
    """Writes ``tf.train.Checkpoint(**objects)`` and ``meta`` (a JSON-able dict) to ``directory``.

    Atomic on local disks: the directory appears complete or not at all. It is written to a hidden
    ``.tmp-`` sibling; an existing one is then renamed to a hidden ``.old-`` sibling and the new one
    renamed into place; a crash between the two renames leaves the old checkpoint, which every
    reader restores (`_recover`). On object stores (gs://, ram://: no atomic rename) each write
    goes to a new version ``directory/v-<n>/`` with ``meta.json`` written last as its commit marker;
    readers use the newest committed version, and a write deletes the older and the uncommitted
    ones (left by a killed writer) only after its own commit. A write that fails (disk full) raises
    `tf_ntk.rundir.WriteError` naming ``directory`` and leaves the previous checkpoint as it was.
    """
    directory = _abs(directory)
    parent, base = os.path.split(directory)
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"not written: checkpoint {directory} would record a non-finite number "
                         f"({e})") from None
    try:
        gfile.makedirs(parent)
        if not rundir.is_local(directory):
            versions = _versions(directory)
            number = max((n for n, _ in versions), default=0) + 1
            _write_files(os.path.join(directory, f"{_VERSION}{number}"), meta_text, objects)
            for _, path in versions:  # older versions and uncommitted leftovers
                rundir.rmtree(path)
            return
        _recover(directory)
        tmp = os.path.join(parent, f".tmp-{base}-{uuid.uuid4().hex}")
        try:
            _write_files(tmp, meta_text, objects)
        except BaseException:
            rundir.rmtree(tmp)
            raise
        if gfile.exists(directory):
            old = os.path.join(parent, f".old-{base}-{uuid.uuid4().hex}")
            gfile.rename(directory, old)
            gfile.rename(tmp, directory)
            rundir.rmtree(old)
        else:
            gfile.rename(tmp, directory)
        for stale in _siblings(parent, f".tmp-{base}-"):  # left by killed writers
            rundir.rmtree(stale)
    except (OSError, tf.errors.OpError) as e:
        raise rundir.WriteError(f"cannot write checkpoint {directory}: {rundir.one_line(e)}") from e


def _write_files(directory: str, meta_text: str, objects: dict[str, Any]) -> None:
    gfile.makedirs(directory)
    tf.train.Checkpoint(**objects).write(os.path.join(directory, _PREFIX))
    with gfile.GFile(os.path.join(directory, _META), "w") as f:
        f.write(meta_text)


_VERSION = "v-"


def _versions(directory: str) -> list[tuple[int, str]]:
    """[(n, path)] of the version directories ``directory/v-<n>`` (object stores), committed or not."""
    if not gfile.isdir(directory):
        return []
    out = []
    for name in gfile.listdir(directory):
        name = name.rstrip("/")
        if name.startswith(_VERSION) and name[len(_VERSION):].isdigit():
            out.append((int(name[len(_VERSION):]), os.path.join(directory, name)))
    return sorted(out)


def files(directory: str | os.PathLike) -> str | None:
    """The directory holding the checkpoint's files (``ckpt.*``, ``meta.json``): ``directory``
    itself on local disks, its newest committed version on object stores (None when none is)."""
    directory = _abs(directory)
    if rundir.is_local(directory):
        _recover(directory)
        return directory if _complete(directory) else None
    committed = [path for _, path in _versions(directory) if _complete(path)]
    return committed[-1] if committed else None


def _complete(directory: str) -> bool:
    return gfile.exists(os.path.join(directory, _META)) and gfile.exists(
        os.path.join(directory, _PREFIX + ".index"))


def _recover(directory: str) -> None:
    """Puts back the previous checkpoint if a writer died between its two renames."""
    if not rundir.is_local(directory) or gfile.exists(directory):
        return
    parent, base = os.path.split(_abs(directory))
    olds = [p for p in _siblings(parent, f".old-{base}-") if _complete(p)]
    if olds:
        gfile.rename(max(olds, key=lambda p: gfile.stat(p).mtime_nsec), directory)


def exists(directory: str | os.PathLike) -> bool:
    return files(directory) is not None


def read_meta(directory: str, require_model: bool = False, require_epoch: bool = False) -> dict[str, Any]:
    """The ``meta.json`` record of a checkpoint directory; `CheckpointError` (one line naming the
    file) if missing, corrupt or of another shape: its "model" a complete `tf_ntk.models.spec`
    (name, num_classes, input_shape, options), its "epoch" a finite number and its "config" a JSON
    object (with a "data" object), each when present; with ``require_model`` / ``require_epoch``
    they must be present (every checkpoint `tf_ntk.training` writes records its model; every spawn
    its epoch: see `read_spawn_meta`)."""
    if rundir.is_local(directory):
        _recover(directory)
    if not gfile.isdir(directory):
        raise CheckpointError(f"no checkpoint at {directory}")
    where = files(directory)
    if where is None:
        raise CheckpointError(f"{directory} is not a tf_ntk checkpoint (no {_META} or {_PREFIX}.index)")
    path = os.path.join(where, _META)
    try:
        meta = rundir.read_json(path, what="checkpoint record")
    except rundir.RecordError as e:
        raise CheckpointError(str(e)) from None
    problem = _record_problem(meta)
    if problem:
        raise CheckpointError(f"corrupt checkpoint record {path}: {problem}")
    if require_model and not meta.get("model"):
        raise CheckpointError(f"checkpoint {directory} does not record its model (no \"model\" in {path})")
    if require_epoch and "epoch" not in meta:
        raise CheckpointError(f"corrupt checkpoint record {path}: no \"epoch\"")
    return meta


def read_spawn_meta(directory: str) -> dict[str, Any]:
    """The record of a spawn checkpoint as every binary that reads one needs it (`read_meta` with
    the model and the epoch required): the one check of train --spawn, evaluate, compute_kernel,
    kernel_dynamics, visualize_features and kernel_machine."""
    return read_meta(directory, require_model=True, require_epoch=True)


def _is_int(value: Any, lower: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lower


def _record_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the keys a checkpoint record holds (None when nothing is)."""
    for key in ("model", "config"):
        if not isinstance(meta.get(key, {}), dict):
            return f"\"{key}\" is not a JSON object"
    spec = meta.get("model")
    if spec:
        shape = spec.get("input_shape")
        if not (isinstance(spec.get("name"), str) and _is_int(spec.get("num_classes"), 1)
                and isinstance(shape, list) and len(shape) == 3 and all(_is_int(d, 1) for d in shape)
                and isinstance(spec.get("options"), dict)):
            return ("\"model\" lacks name, num_classes, input_shape (H, W, C) or options "
                    f"(got {json.dumps(spec)[:80]})")
    epoch = meta.get("epoch", 0.0)
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch) \
            or epoch < 0:
        return f"\"epoch\" is not a number of epochs (got {json.dumps(epoch)[:40]})"
    config = meta.get("config") or {}
    data = config.get("data")
    if data is not None and not isinstance(data, dict):  # None: a library run records no data set
        return "\"config\" has a \"data\" that is not a JSON object"
    return None


def verify(directory: str) -> None:
    """Reads every tensor of the checkpoint in ``directory``: `CheckpointError` when a file is
    truncated or damaged. Lets a command refuse a corrupt resume checkpoint before it writes anything."""
    read_meta(directory)
    try:
        where = cast(str, files(directory))  # not None: read_meta raised otherwise
        reader = tf.compat.v1.train.NewCheckpointReader(os.path.join(where, _PREFIX))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (IndexError, ValueError, tf.errors.OpError) as e:
        raise CheckpointError(f"corrupt checkpoint {directory} (truncated or damaged files: "
                              f"{rundir.one_line(e)})") from e


def restore(directory: str, **objects: Any) -> dict[str, Any]:
    """Restores ``objects`` (e.g. ``model=model``) from ``directory``; returns its meta record.

    Raises `CheckpointError` when the checkpoint is missing or corrupt (truncated data or index), or
    when a variable is missing or has another shape (the checkpoint comes from another model).
    """
    meta = read_meta(directory)
    try:
        status = tf.train.Checkpoint(**objects).read(
            os.path.join(cast(str, files(directory)), _PREFIX))  # read_meta: not None
        status.assert_existing_objects_matched()
    except (ValueError, AssertionError) as e:
        raise CheckpointError(f"checkpoint {directory} does not fit this model: {rundir.one_line(e)}") from e
    except (IndexError, tf.errors.OpError) as e:  # IndexError: "Read less bytes than requested"
        if isinstance(e, tf.errors.NotFoundError) and "Key " in str(e):
            raise CheckpointError(f"checkpoint {directory} does not fit this model: {rundir.one_line(e)}") from e
        raise CheckpointError(f"corrupt checkpoint {directory} (truncated or damaged files: "
                              f"{rundir.one_line(e)})") from e
    return meta


def fingerprint(directory: str | os.PathLike) -> str:
    """A digest of a checkpoint's record and index (which holds every tensor's checksum): names the
    very checkpoint a derived result (a cached kernel, kernel tiles) was computed from."""
    where = files(directory)
    if where is None:
        raise CheckpointError(f"{directory} is not a tf_ntk checkpoint (no {_META} or {_PREFIX}.index)")
    digest = hashlib.sha256()
    for name in (_META, _PREFIX + ".index"):
        digest.update(rundir.read_bytes(os.path.join(where, name)))
    return digest.hexdigest()[:16]


def read_tensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """{variable name: array} of every value the checkpoint at ``directory`` saved (its object
    graph left out): what two checkpoints are compared by, bit for bit."""
    where = files(directory)
    if where is None:
        raise CheckpointError(f"{directory} is not a tf_ntk checkpoint (no {_META} or {_PREFIX}.index)")
    reader = tf.train.load_checkpoint(os.path.join(where, _PREFIX))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def list_spawns(workdir: str) -> list[tuple[float, str]]:
    """[(epoch, path)] of the spawn checkpoints of run ``workdir``, in epoch order."""
    root = os.path.join(workdir, SPAWN_DIR)
    found = []
    if gfile.isdir(root):
        for name in gfile.listdir(root):
            name = name.rstrip("/")
            path = os.path.join(root, name)
            if name.startswith("epoch_") and exists(path):
                try:
                    found.append((float(name[len("epoch_"):]), path))
                except ValueError:
                    continue
    return sorted(found)
