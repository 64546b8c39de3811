"""``python -m hierps``: the command line."""

import sys

from hierps.workflow.cli import app

sys.exit(app())
