"""Sending output records through the shared producer and knowing when the broker has them.

A record whose delivery failed (broker gone past the producer's delivery timeout, say) is sent
again, dead letters included: nothing is dropped, and offsets wait until it is acknowledged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from kafka.errors import KafkaTimeoutError

from loginpipe.route import OutputRecord


class Sender:
    """Wraps the (thread-safe, shared) KafkaProducer."""

    def __init__(self, producer, warn: Callable[[str], None]) -> None:
        self.producer = producer
        self.warn = warn

    def send_all(self, records: Sequence[OutputRecord]) -> list:
        """Hand every record to the producer; return their futures, in order."""
        send = self.producer.send
        futures = []
        try:
            for r in records:
                futures.append(send(r.topic, value=r.value, key=r.key, headers=r.headers,
                                    partition=r.partition))
        except KafkaTimeoutError:
            futures.extend(self._send_slowly(records[len(futures):]))
        return futures

    def _send_slowly(self, records: Sequence[OutputRecord]) -> list:
        """One by one, retrying a send that cannot even be queued (no metadata, buffer full)."""
        futures = []
        for record in records:
            while True:
                try:
                    futures.append(self.producer.send(record.topic, value=record.value, key=record.key,
                                                      headers=record.headers, partition=record.partition))
                    break
                except KafkaTimeoutError as exc:
                    self.warn(f"cannot queue output for {record.topic} ({exc}); retrying")
        return futures

    def settle(self, records: Sequence[OutputRecord], futures: list) -> tuple[bool, int]:
        """Re-send failed deliveries in place. Returns (all acknowledged, how many were re-sent)."""
        acked = True
        resent = 0
        for i, future in enumerate(futures):
            if not future.is_done:
                acked = False
            elif future.exception is not None:
                if resent == 0:
                    self.warn(f"delivery to {records[i].topic} failed ({future.exception!r}); re-sending")
                futures[i] = self.send_all([records[i]])[0]
                resent += 1
                acked = False
        return acked, resent

    def flush(self, timeout_s: float) -> None:
        """Push out what is buffered and wait up to ``timeout_s`` for it to complete."""
        # On a timeout the caller still looks at each future: flush only hurries them along.
        with contextlib.suppress(KafkaTimeoutError):
            self.producer.flush(timeout=timeout_s)
