"""Checkpoint directories: a `tf.train.Checkpoint` plus a JSON record of the run that wrote it.

A checkpoint directory holds ``ckpt.index``, ``ckpt.data-*`` and ``meta.json``:

    {"epoch": 0.125, "step": 2, "config": {...the run's TrainConfig...}, "model": {...ModelSpec...}}

Directories are written atomically (to a hidden sibling, then renamed), so a reader never sees a
half-written checkpoint. Spawn checkpoints of a run live in ``<workdir>/spawn/epoch_<e>`` with ``e``
the (possibly fractional) epoch, ``epoch_0`` being the initialisation.
"""

import glob
import json
import os
import shutil
import tempfile

import tensorflow as tf

SPAWN_DIR = "spawn"
RESUME_DIR = "resume"
_PREFIX = "ckpt"
_META = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


def spawn_name(epoch):
    """``epoch_0.125`` / ``epoch_3``: the directory name of the spawn checkpoint at ``epoch``."""
    return f"epoch_{float(epoch):g}"


def spawn_path(workdir, epoch):
    return os.path.join(workdir, SPAWN_DIR, spawn_name(epoch))


def write_json(path, obj):
    """Writes ``obj`` as strict JSON (no NaN or ±inf: ValueError naming ``path``) to ``path``
    atomically (temporary file + rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        try:
            text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
        except ValueError as e:
            raise ValueError(f"not written: {path} would hold a non-finite number ({e})") from None
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_npz(path, compressed=False, **arrays):
    """Writes NumPy ``arrays`` to ``path`` (.npz) atomically (temporary file + rename)."""
    import numpy as np  # noqa: PLC0415

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_json(path):
    """The JSON object in ``path``; `CheckpointError` when unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt run record {path}: {e}") from e


def write(directory, meta, **objects):
    """Writes ``tf.train.Checkpoint(**objects)`` and ``meta`` (a JSON-able dict) to ``directory``.

    Atomic: the directory appears complete or not at all. An existing one is first renamed to a
    hidden ``.old-`` sibling, then the new one renamed into place; a crash between the two renames
    leaves the old checkpoint, which every reader restores (`_recover`).
    """
    directory = os.path.abspath(directory)
    parent, base = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    _recover(directory)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{base}-")
    try:
        tf.train.Checkpoint(**objects).write(os.path.join(tmp, _PREFIX))
        with open(os.path.join(tmp, _META), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(directory):
        old = tempfile.mkdtemp(dir=parent, prefix=f".old-{base}-")
        os.rmdir(old)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    for stale in glob.glob(os.path.join(parent, f".tmp-{base}-*")):  # left by killed writers
        shutil.rmtree(stale, ignore_errors=True)


def _complete(directory):
    return os.path.isfile(os.path.join(directory, _META)) and os.path.isfile(
        os.path.join(directory, _PREFIX + ".index"))


def _recover(directory):
    """Puts back the previous checkpoint if a writer died between its two renames."""
    if os.path.exists(directory):
        return
    parent, base = os.path.split(os.path.abspath(directory))
    olds = [p for p in glob.glob(os.path.join(parent, f".old-{base}-*")) if _complete(p)]
    if olds:
        os.replace(max(olds, key=os.path.getmtime), directory)


def exists(directory):
    _recover(directory)
    return _complete(directory)


def read_meta(directory):
    """The ``meta.json`` record of a checkpoint directory; `CheckpointError` if missing or corrupt."""
    path = os.path.join(directory, _META)
    _recover(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoint at {directory}")
    if not exists(directory):
        raise CheckpointError(f"{directory} is not a tf_ntk checkpoint (no {_META} or {_PREFIX}.index)")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt checkpoint record {path}: {e}") from e


def restore(directory, **objects):
    """Restores ``objects`` (e.g. ``model=model``) from ``directory``; returns its meta record.

    Raises `CheckpointError` when the checkpoint is missing or corrupt, or when a variable is missing
    or has another shape (the checkpoint comes from another model).
    """
    meta = read_meta(directory)
    try:
        status = tf.train.Checkpoint(**objects).read(os.path.join(directory, _PREFIX))
        status.assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {directory} does not fit this model: {first}") from e
    return meta


def list_spawns(workdir):
    """[(epoch, path)] of the spawn checkpoints of run ``workdir``, in epoch order."""
    root = os.path.join(workdir, SPAWN_DIR)
    found = []
    if os.path.isdir(root):
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if name.startswith("epoch_") and exists(path):
                try:
                    found.append((float(name[len("epoch_"):]), path))
                except ValueError:
                    continue
    return sorted(found)


def load_model(directory, *, dynamics=None, batchnorm="frozen", expected_model=None):
    """The model a checkpoint holds, rebuilt from its recorded spec, under its or the given dynamics.

    Args:
      directory: a spawn (or resume) checkpoint directory.
      dynamics: for a phase-1 (standard) checkpoint, the phase-2 dynamics to wrap it in:
        None/``"standard"`` (the network), ``"linearized"`` or ``"centered"`` (`tf_ntk.linearize`
        around the checkpoint's weights). A phase-2 checkpoint is always rebuilt under the dynamics
        that trained it; asking for another is an error.
      batchnorm: phase-2 BN policy for ``linearize`` (``"frozen"`` or ``"batch"``).
      expected_model: a `tf_ntk.models.spec` the checkpoint must hold (e.g. the one the flags ask for).

    Returns:
      (model, meta): a Keras model (a `LinearizedModel` for linearized/centered dynamics) and the
      checkpoint's record. Build it under ``strategy.scope()`` for distributed training.
    """
    from tf_ntk import dynamics as dynamics_lib  # local: dynamics imports the NTK machinery
    from tf_ntk import models

    meta = read_meta(directory)
    spec = meta.get("model")
    if not spec:
        raise CheckpointError(f"checkpoint {directory} does not record its model")
    if expected_model is not None and dict(expected_model) != spec:
        raise CheckpointError(f"checkpoint {directory} holds {_describe(spec)}, not {_describe(expected_model)}")
    config = meta.get("config", {})
    recorded = config.get("dynamics", "standard")
    base = models.build(spec)
    if recorded != "standard":
        if dynamics not in (None, recorded):
            raise CheckpointError(f"checkpoint {directory} was trained with {recorded} dynamics, "
                                  f"not {dynamics}")
        model = dynamics_lib.linearize(base, centered=recorded == "centered",
                                       batchnorm=config.get("batchnorm", "frozen"))
        restore(directory, model=model)
        return model, meta
    restore(directory, model=base)
    if dynamics in (None, "standard"):
        return base, meta
    if dynamics not in ("linearized", "centered"):
        raise ValueError(f"unknown dynamics {dynamics!r}; known: standard, linearized, centered")
    return dynamics_lib.linearize(base, centered=dynamics == "centered", batchnorm=batchnorm), meta


def _describe(spec):
    opts = ", ".join(f"{k}={v}" for k, v in sorted(spec.get("options", {}).items()))
    return (f"{spec.get('name')}({opts}) for {spec.get('num_classes')} classes on "
            f"{tuple(spec.get('input_shape', ()))} inputs")
