"""The one place the pipeline talks to a Kafka client."""
