"""``python -m loginpipe.broker ...``: a shorter name for ``python -m loginpipe.local.broker ...``."""

import sys

from loginpipe.cli import run_cli
from loginpipe.local.broker import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
