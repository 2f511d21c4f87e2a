import sys

from loginpipe.cli import run_cli
from loginpipe.dashboard.cli import main

sys.exit(run_cli(main))
