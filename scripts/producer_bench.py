"""The kafka-python producer's CPU per record, as the pipeline drives it (``send_batch``).

    BOOTSTRAP_SERVERS=127.0.0.1:29092 .venv/bin/python scripts/producer_bench.py --records 400000

Sends the pipeline's own outputs (processed records and dead letters from generated events, on 4
partitions) in polls of ``--batch`` records, waits for every acknowledgement, and prints CPU
seconds per million records: the whole process's and the producer's I/O thread's (from
/proc), with the same producer settings as the pipeline. Timings are noisy on a shared machine:
compare medians of several ``--rounds``, versions taking turns.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import types
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kafka import KafkaProducer  # noqa: E402

from loginpipe.kafka.admin import ensure_topics  # noqa: E402
from loginpipe.kafka.kafka_python import KafkaPythonProducer, _producer_settings  # noqa: E402
from loginpipe.topics import TopicSpec  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
import callgrind_core  # noqa: E402

PARTITIONS = callgrind_core.PARTITIONS


def outputs(count: int) -> list:
    """The pipeline's outputs for ``count`` generated events, with their topic renamed below."""
    records = callgrind_core.raw_records(callgrind_core.generate(count))
    state = callgrind_core.LocalState()
    result = callgrind_core.process_batch(records, state, callgrind_core.TOPOLOGY, 1_700_000_100.0)
    return result.outputs


def thread_cpu_s(native_id: int) -> float:
    """User + system CPU seconds of one thread of this process."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(bootstrap: str, topic: str, records: list, total: int, batch: int
              ) -> tuple[float, float, float]:
    """(process CPU s, I/O thread CPU s, wall s) to send ``total`` records and have them acknowledged."""
    config = types.SimpleNamespace(connection=bootstrap, linger_ms=5, batch_size=256 * 1024,
                                   delivery_timeout_ms=30_000)
    producer = KafkaPythonProducer(KafkaProducer(**_producer_settings(config), client_id="producer-bench"))
    try:
        producer.send_batch(records[:1])[0].get(timeout=30)  # connected, metadata known
        sender = producer._producer._sender
        io_before, cpu_before = thread_cpu_s(sender.native_id), time.process_time()
        wall_before = time.monotonic()
        futures = []
        sent = 0
        while sent < total:
            chunk = [records[(sent + i) % len(records)] for i in range(min(batch, total - sent))]
            futures = producer.send_batch(chunk)
            sent += len(chunk)
        producer.flush(60)
        if not all(f.succeeded() for f in futures):
            raise SystemExit("some records were not acknowledged")
        return (time.process_time() - cpu_before, thread_cpu_s(sender.native_id) - io_before,
                time.monotonic() - wall_before)
    finally:
        producer.close(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=4_000, help="records per send_batch call")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bootstrap = os.environ.get("BOOTSTRAP_SERVERS", "127.0.0.1:29092")
    topic = f"producer-bench-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(topic, "producer benchmark")], PARTITIONS)
    records = [types.SimpleNamespace(topic=topic, key=r.key, value=r.value, headers=r.headers,
                                     partition=r.partition, timestamp_ms=r.timestamp_ms)
               for r in outputs(20_000)]
    rows = [one_round(bootstrap, topic, records, args.records, args.batch) for _ in range(args.rounds)]
    per_million = 1e6 / args.records
    for cpu, io, wall in rows:
        print(f"process CPU {cpu * per_million:6.2f} s/1M, I/O thread {io * per_million:6.2f} s/1M, "
              f"wall {wall * per_million:6.2f} s/1M ({args.records / wall:,.0f} records/s)")
    cpu, io = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    print(f"medians: process CPU {cpu * per_million:.2f} s per 1M records, I/O thread {io * per_million:.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
