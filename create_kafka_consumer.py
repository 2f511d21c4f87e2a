#!/usr/bin/env python3
"""Run the login-event pipeline: a threaded consumer group from user-login to
processed-user-login (see loginpipe/app.py; `--help` lists every flag)."""

import sys

from loginpipe.app import main
from loginpipe.config import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
