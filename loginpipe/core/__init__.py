"""The pure core: bytes and state in, output records and counts out. No Kafka client, threads,
clock reads or environment: everything it needs is handed in."""
