import sys

from loginpipe.config import run_cli
from loginpipe.dashboard.cli import main

sys.exit(run_cli(main))
