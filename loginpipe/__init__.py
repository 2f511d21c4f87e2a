"""loginpipe: a real-time login-event pipeline on Apache Kafka."""

from importlib import metadata

try:
    __version__ = metadata.version("loginpipe")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.2.0"
