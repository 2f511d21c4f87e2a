#!/usr/bin/env python3
"""Run the login-event pipeline: a threaded consumer group from user-login to
processed-user-login (see loginpipe/runtime/app.py; `--help` lists every flag)."""

import sys

from loginpipe.cli import run_cli
from loginpipe.runtime.app import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
