"""``python -m loginpipe``: the same as the ``loginpipe`` command."""

import sys

from loginpipe.commands import main

if __name__ == "__main__":
    sys.exit(main())
