"""Which Kafka client the pipeline runs on (``--client``): kafka-python, always installed and the
default, or confluent-kafka (librdkafka), the faster one, from the ``confluent`` extra. Each is
imported only when chosen: neither loads the other."""

from __future__ import annotations

from loginpipe.errors import UserError
from loginpipe.kafka.base import Backend

KAFKA_PYTHON, CONFLUENT = "kafka-python", "confluent"
CLIENTS = (KAFKA_PYTHON, CONFLUENT)
# --client's value -> the distribution that provides it (the build_info metric's label)
DISTRIBUTIONS = {KAFKA_PYTHON: "kafka-python", CONFLUENT: "confluent-kafka"}
MISSING_CONFLUENT = "--client confluent needs confluent-kafka: pip install 'loginpipe[confluent]'"


def make_backend(name: str) -> Backend:
    """The backend of client ``name``; a one-line UserError when its library is not installed."""
    if name == CONFLUENT:
        try:
            from loginpipe.kafka.confluent import ConfluentBackend
        except ImportError as exc:
            if exc.name not in ("confluent_kafka", "confluent_kafka.cimpl"):
                raise  # a broken install of our own code: shown in full
            raise UserError(MISSING_CONFLUENT) from None
        return ConfluentBackend()
    if name == KAFKA_PYTHON:
        from loginpipe.kafka.kafka_python import KafkaPythonBackend

        return KafkaPythonBackend()
    raise UserError(f"unknown Kafka client {name!r} (one of {', '.join(CLIENTS)})")

