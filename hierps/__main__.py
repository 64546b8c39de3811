"""``python -m hierps``: the command line."""

import os
import signal
import sys


def _exit_interrupted(signum: int, frame: object) -> None:
    # Before a command starts nothing has been written: one line, exit 130, no traceback.
    os.write(2, b"interrupted before the command started; nothing was written\n")
    os._exit(130)


signal.signal(signal.SIGINT, _exit_interrupted)
signal.signal(signal.SIGTERM, _exit_interrupted)

from hierps.workflow.cli import app  # noqa: E402  (after the handlers, to cover the import)

sys.exit(app())
