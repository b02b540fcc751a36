"""One line for an interrupt while a command starts (TensorFlow's import takes seconds).

Imported first by `tf_ntk.cli`, before TensorFlow: when this process is one of the commands
(``tf-ntk-train``, ``python -m binaries.train``, ``python -m tf_ntk.cli.train``), SIGINT and SIGTERM
print ``<program>: interrupted by SIGINT while starting; nothing was written`` and exit with
128 + the signal's number, instead of a KeyboardInterrupt traceback (SIGINT) or a silent death
(SIGTERM). `tf_ntk.cli.common.run` installs the command's own handlers once its flags are parsed.
Nothing happens in other processes (tests, notebooks, a sweep's workers): their signals stay theirs.
"""

import os
import signal
import sys

_PACKAGES = ("binaries.", "tf_ntk.cli.")
_stderr = {"fd": 2}  # a copy of stderr: `tf_ntk.cli.quiet` mutes fd 2 while TensorFlow imports


def command_name(argv=None):
    """The command this process runs (``train``, ``tf-ntk-train``), or None when it runs none."""
    argv = list(sys.orig_argv if argv is None else argv)
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        return module.rsplit(".", 1)[-1] if module.startswith(_PACKAGES) else None
    for arg in argv[:2]:  # the console script, directly or as ``python /path/tf-ntk-train``
        name = os.path.basename(arg)
        if name.startswith("tf-ntk-"):
            return name
    return None


def _stop(signum, frame):
    del frame
    name = command_name() or "tf_ntk"
    os.write(_stderr["fd"], f"{name}: interrupted by {signal.Signals(signum).name} while starting; nothing was "
                "written\n".encode())
    os._exit(128 + signum)  # nothing to clean up yet, and no traceback


def guard():
    """Installs the start-up handlers when this process is a command (see the module's doc)."""
    if command_name() is not None:
        _stderr["fd"] = os.dup(2)
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)


guard()
