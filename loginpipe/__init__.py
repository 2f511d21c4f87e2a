"""loginpipe: a real-time login-event pipeline on Apache Kafka."""

# The one place the version is written: pyproject.toml reads it from here when the package is
# built. A literal rather than importlib.metadata, whose import alone costs every command ~40 ms.
__version__ = "0.2.0"
