#!/usr/bin/env python3
"""Create every Kafka topic the login pipeline uses (see loginpipe/topics.py)."""

import sys

from loginpipe.cli import run_cli
from loginpipe.topics import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
