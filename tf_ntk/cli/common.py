"""What every binary shares: one-line errors, run directories, resolved flags, progress, probes."""

import contextlib
import errno
import importlib
import os
import re
import signal
import sys
import tempfile
import traceback

from absl import app
from absl import flags
from absl import logging
import keras

from tf_ntk import data
from tf_ntk import dynamics
from tf_ntk import functional
from tf_ntk import rundir
from tf_ntk import training
from tf_ntk.cli import common_flags

# Errors that mean "the user asked for something impossible": reported in one line, exit status 2.
# (CheckpointError and RunConfigMismatchError are ValueErrors.)
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError, rundir.WriteError, data.DatasetNotPreparedError,
               functional.ParamsMismatchError)


def _environment_error(e):
    """A one-line message for an OS-level failure outside the project's own writers (a full disk
    under TensorFlow's event writer, say), or None for anything else (a bug: its traceback shows)."""

    codes = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO)
    if isinstance(e, OSError) and e.errno in codes:
        return f"{e.filename or 'a file'}: {os.strerror(e.errno)}"
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(e, (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError,
                                         tf.errors.DataLossError)):
        return rundir.one_line(e)
    if tf is not None and isinstance(e, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)):
        # A multi-worker job whose peer died: TensorFlow aborts the collectives of the others.
        text = str(getattr(e, "message", "") or e)
        unhealthy = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", text.split("unhealthy", 1)[-1])
        who = f"{unhealthy.group(1)} {unhealthy.group(2)}" if unhealthy else "another worker"
        return (f"{who} of the multi-worker job stopped or is unreachable; restart every worker with the "
                "same command to resume from the last checkpoint")
    return None


def program_name():
    return sys.argv[0].rsplit("/", 1)[-1].removesuffix(".py")


def _fail(message):
    print(f"{program_name()}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _flag_error(error):
    """absl's flag error in one line ("--checkpoint is required" for a missing required flag)."""
    text = rundir.one_line(error)
    missing = re.search(r"Flag --(\w+) must have a value other than None", text)
    return f"--{missing.group(1)} is required" if missing else text


def _parse_flags(argv):
    """absl flag parsing with one-line errors (absl's own parser prints usage and exits 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(_flag_error(e))


@contextlib.contextmanager
def _requiring(module_name):
    """`flags.mark_flags_as_required` for the flags the binary lists in ``REQUIRED_FLAGS``, for one
    command: the validators are removed afterwards, since binaries imported into one process (the
    tests, a sweep worker) share their flags, and another binary may not require them."""
    names = getattr(sys.modules.get(module_name), "REQUIRED_FLAGS", ())
    added = {}
    for name in names:
        before = list(flags.FLAGS[name].validators)
        flags.mark_flag_as_required(name)
        added[name] = [v for v in flags.FLAGS[name].validators if v not in before]
    try:
        yield
    finally:
        for name, validators in added.items():
            flags.FLAGS[name].validators = [v for v in flags.FLAGS[name].validators
                                            if v not in validators]


class Interrupted(Exception):  # noqa: N818  (a signal, not an error)
    """SIGTERM (the preemption signal of Cloud TPU and most schedulers) or SIGINT arrived."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_deferred = {"depth": 0, "signum": None}


def _interrupt(signum, frame):
    del frame
    if _deferred["depth"] and _deferred["signum"] is None:
        _deferred["signum"] = signum  # the training loop stops at its next step boundary
        return
    raise Interrupted(signum)  # not deferred, or a second signal: at once


def catch_interrupts():
    """Makes SIGTERM and SIGINT this module's: `run` does; call it again after creating a
    multi-worker strategy, whose coordination service installs its own SIGTERM handler in C++
    (Python's `signal.getsignal` does not see that)."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def stop_requested():
    """Whether SIGTERM or SIGINT arrived inside `deferred_interrupts` (pass it to
    `tf_ntk.training.train` as ``stop_requested``)."""
    return _deferred["signum"] is not None


@contextlib.contextmanager
def deferred_interrupts():
    """Inside the body, a first SIGTERM / SIGINT does not interrupt at once: it is recorded for
    `stop_requested`, so training can finish its step and write a resumable checkpoint there. A
    `tf_ntk.training.StopRequested` from the body, or a signal recorded by its end, becomes
    `Interrupted`; a second signal interrupts at once."""

    _deferred["depth"] += 1
    try:
        yield
    except training.StopRequested:
        raise Interrupted(_deferred["signum"] or signal.SIGTERM) from None
    finally:
        _deferred["depth"] -= 1
        signum, _deferred["signum"] = _deferred["signum"], None
    if signum is not None:
        raise Interrupted(signum)


def run(main):
    """`absl.app.run(main)`, turning flag and user errors into ``<program>: error: <message>`` on
    stderr and exit status 2, and SIGTERM / SIGINT into one line and exit status 128 + the signal's
    number. Training (inside `deferred_interrupts`) finishes its step and checkpoints there; anywhere
    else the command stops at once, keeping what it wrote (every write is atomic), so the same
    command resumes."""

    def guarded(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.ERROR)  # library INFO/WARNING chatter only on request
        catch_interrupts()
        try:
            if len(argv) > 1:
                raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
            return main(argv)
        except USER_ERRORS as e:
            _fail(rundir.one_line(e))
        except Interrupted as e:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one line, however many signals follow
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            print(f"{program_name()}: interrupted by {e}; the work done is kept (train checkpoints the "
                  "step it reached): rerun the same command to resume", file=sys.stderr)
            sys.stderr.flush()
            sys.exit(128 + e.signum)
        except Exception as e:
            message = _environment_error(e)
            if message is None:
                raise
            _fail(message)

    with _requiring(getattr(main, "__module__", None)):
        app.run(guarded, flags_parser=_parse_flags)


def command(main):
    """`run` for a console command (``tf-ntk-train``) or a thin ``binaries/<name>.py`` entry module:
    absl's ``--help`` describes the ``__main__`` module (its docstring and key flags), which there is
    the entry script, not the binary's module, so the binary's docstring and key flags are lent to it."""
    module = sys.modules[main.__module__]
    entry = sys.modules["__main__"]
    if entry is not module:
        entry.__doc__ = module.__doc__
        for flag in flags.FLAGS.get_key_flags_for_module(module):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    run(main)


def resolved_flags(module_name):
    """{flag: value} of the flags a binary module defines or adopts (its key flags)."""
    module = sys.modules[module_name]
    return {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(module)}


def write_flags(workdir, module_name, **extra):
    """Writes the resolved flags (and ``extra`` resolved values) to ``workdir/flags.json``; call it
    inside `tf_ntk.rundir.open_run`, once every check has passed."""
    resolved = {**resolved_flags(module_name), **extra}
    rundir.write_flags(workdir, resolved)
    return resolved


def check_new_output(path, overwrite):
    """Refuses to replace an existing output file unless ``overwrite``."""
    if rundir.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")


def probe_set(FLAGS, split=None, per_class=None):  # noqa: N803
    """The class-balanced probe set (x (P, H, W, C), y (P,)) the kernel flags describe, class by class."""

    x, y = data.load_arrays(FLAGS.dataset, split or FLAGS.probe_split,
                            **common_flags.data_options(FLAGS))
    info = data.info(FLAGS.dataset)
    return data.class_balanced_sample(x, y, per_class or FLAGS.per_class, seed=FLAGS.probe_seed,
                                      num_classes=info.num_classes)


def default_workdir(checkpoint, kind):
    """RUN/<kind>/<checkpoint name> for a checkpoint RUN/spawn/<checkpoint name>."""
    ckpt = rundir.abspath(checkpoint).rstrip("/")
    return os.path.join(os.path.dirname(os.path.dirname(ckpt)), kind, os.path.basename(ckpt))


def check_input_shape(source, model_spec, image_shape, dataset):
    """A clear error when ``dataset``'s images do not fit the model ``source`` holds."""
    if list(model_spec["input_shape"]) != list(image_shape):
        raise ValueError(f"{source} takes inputs {tuple(model_spec['input_shape'])}, but "
                         f"--dataset={dataset} gives {tuple(image_shape)}")


def check_logit(logit, num_classes):
    if logit is not None and logit >= num_classes:
        raise ValueError(f"--logit={logit} out of range for {num_classes} classes")


def recorded_data(FLAGS, meta):  # noqa: N803
    """(data set name, `tf_ntk.data.load` options) for a command on a checkpoint: the data set it
    was trained on (its record), unless --dataset, --image_size or --channels say otherwise. Sets
    FLAGS.dataset, so flags.json records what was used."""
    opts = common_flags.data_options(FLAGS)
    recorded = (meta.get("config") or {}).get("data") or {}
    if not FLAGS["dataset"].present and recorded.get("dataset"):
        FLAGS.dataset = recorded["dataset"]
        for key in ("image_size", "channels"):
            if not FLAGS[key].present and recorded.get(key) is not None:
                opts[key] = recorded[key]
    return FLAGS.dataset, opts


def checkpoint_probe(FLAGS, meta):  # noqa: N803
    """The probe set (x, y, indices) the kernel flags describe, on the checkpoint's data set (see
    `recorded_data`), checked against its model."""
    dataset, opts = recorded_data(FLAGS, meta)
    x_all, y_all = data.load_arrays(dataset, FLAGS.probe_split, **opts)
    check_input_shape(f"checkpoint {FLAGS.checkpoint}", meta["model"], x_all.shape[1:], FLAGS.dataset)
    idx = data.class_balanced_indices(y_all, FLAGS.per_class, seed=FLAGS.probe_seed,
                                      num_classes=meta["model"]["num_classes"])
    return x_all[idx], y_all[idx], idx


def progress(total, unit="block"):
    """A progress callback ``(done, total)`` drawing a Keras progress bar on stdout."""

    bar = keras.utils.Progbar(total, unit_name=unit)

    def update(done, total_=None):
        bar.update(done)

    return update


def execute(module_name, args, log_path=None):
    """Runs the binary ``module_name`` (e.g. "tf_ntk.cli.train") with command-line ``args`` in this
    process, as its shell command would: absl flag parsing, then its main. With ``log_path`` its
    stdout and stderr (TensorFlow's C++ output included) go to that file. Returns None on success,
    else the one-line error the command line would print. Used by the sweep's worker processes, which
    import TensorFlow once and run many jobs. A log on an object store (gs://) is written locally and
    appended there when the job ends."""
    module = importlib.import_module(module_name)
    program = module_name.rsplit(".", 1)[-1]
    saved_fds = None
    local_log = log_path
    if log_path:
        if rundir.is_local(log_path):
            os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        else:
            local_log = tempfile.mkstemp(prefix="tf_ntk-log-", suffix=".log")[1]
        sys.stdout.flush()
        sys.stderr.flush()
        log = open(local_log, "a", encoding="utf-8")  # noqa: SIM115  (closed in the finally below)
        saved_fds = (os.dup(1), os.dup(2))
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        print(f"$ python -m {module_name} {' '.join(args)}", flush=True)
        flags.FLAGS.unparse_flags()
        try:
            with _requiring(module_name):
                flags.FLAGS([program, *args])
        except flags.Error as e:
            return _flag_error(e)
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.ERROR)
        try:
            with dynamics.reuse_models():  # later jobs reuse this job's models and their traces
                module.main([program])
        except USER_ERRORS as e:
            message = rundir.one_line(e)
            print(f"{program}: error: {message}", file=sys.stderr)
            return message
        except Exception as e:
            message = _environment_error(e)
            if message is not None:
                print(f"{program}: error: {message}", file=sys.stderr)
                return message
            traceback.print_exc()  # a bug: its traceback goes to the log
            return f"{type(e).__name__}: {rundir.one_line(e) if str(e).strip() else ''}"
        return None
    finally:
        flags.FLAGS.unparse_flags()
        keras.backend.clear_session()
        if saved_fds is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            os.close(saved_fds[0])
            os.close(saved_fds[1])
            log.close()
            if local_log != log_path:  # object stores cannot append: rewrite with the new lines
                old = rundir.read_bytes(log_path) if rundir.exists(log_path) else b""
                with open(local_log, "rb") as f:
                    rundir.write_bytes(log_path, old + f.read())
                os.remove(local_log)
