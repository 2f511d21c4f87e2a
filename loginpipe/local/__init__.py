"""Local tools: a Kafka broker from Maven Central, the event generator, and `make run`'s stack."""
