"""Entry point of ``python -m loginpipe.benchmark``, for the benchmark and its child subcommands alike."""

import sys

from loginpipe.benchmark.cli import main
from loginpipe.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
