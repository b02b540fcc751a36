"""Runs an absl main with one-line errors: bad input never ends in a traceback wall."""

import sys

from absl import app
from absl import flags
from absl import logging

from tf_ntk import data
from tf_ntk import functional

# Errors that mean "the user asked for something impossible": reported in one line, exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, data.DatasetNotPreparedError,
               functional.ParamsMismatchError)


def run(main):
    """`absl.app.run(main)`, turning user errors into ``<program>: error: <message>`` and exit 2."""

    def guarded(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.ERROR)  # library INFO/WARNING chatter only on request
        try:
            return main(argv)
        except USER_ERRORS as e:
            program = sys.argv[0].rsplit("/", 1)[-1].removesuffix(".py")
            print(f"{program}: error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)
