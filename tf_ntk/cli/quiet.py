"""Keeps TensorFlow's C++ start-up noise out of the terminal. Import before TensorFlow.

Unless the command line asks for ``--verbosity`` (or ``-v``) at 1 or more, TensorFlow's C++ logging
is limited to errors and stderr is muted while TensorFlow and Keras are imported (CUDA probing,
CPU-feature notices). Python errors raised during the import are still shown.
"""

import os
import sys


def _verbose(argv):
    for i, arg in enumerate(argv):
        for flag in ("--verbosity", "-v"):
            value = None
            if arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
            elif arg == flag and i + 1 < len(argv):
                value = argv[i + 1]
            if value is not None:
                try:
                    return int(value) >= 1
                except ValueError:
                    return value.lower() in ("debug", "info")
    return False


def silence(argv=None):
    """Mutes TensorFlow's C++ logs and imports TensorFlow + Keras with stderr muted."""
    if _verbose(sys.argv if argv is None else argv):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        # The point of this module: TensorFlow's import-time C++ chatter goes to /dev/null.
        import keras  # noqa: F401, PLC0415
        import tensorflow  # noqa: PLC0415

        # TensorFlow's Python warnings (e.g. pfor's "uses a while_loop") only on request too.
        tensorflow.get_logger().setLevel("ERROR")
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


silence()
