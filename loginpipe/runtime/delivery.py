"""Sending output records through the shared producer, and getting it sending again after a failure.

Every send belongs to a producer *generation*. When a delivery fails (a batch expired while the
broker was away, say) or acknowledgements stop while the broker answers, ``replace`` closes the
producer and makes a new one: a new idempotent session with fresh sequence numbers. Each
worker's Checkpointer then sends every output of an older generation that was not acknowledged
again, in order, before anything new. Nothing is dropped: a record leaves the pending list only
once the broker has acknowledged it.

Why replace rather than re-send through the same producer: when a batch that was already sent
once expires, kafka-python 3.0.12 (sender.py, ``_send_producer_data``) calls
``reset_producer_id()``, which sets the id to -1 but leaves the transaction manager READY; its
``init_producer_id()`` only asks for a new id from UNINITIALIZED, so none is ever requested, and
``run_once`` returns early on "no producer id" for ever: nothing is sent, nothing expires, every
future hangs. A new producer gets a new id at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence

from kafka.errors import KafkaError
from kafka.future import Future

from loginpipe.core.records import OutputRecord

# A record the broker refuses for good would otherwise replace the producer in a loop.
MIN_REPLACE_INTERVAL_S = 5.0
FORCE_CLOSE_JOIN_S = 5.0  # a force-closed I/O thread ends within milliseconds; never wait longer


class Sender:
    """Wraps the (thread-safe, shared) KafkaProducer and replaces it when it stops delivering."""

    def __init__(self, make_producer: Callable[[], object], warn: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._make_producer = make_producer
        self.warn = warn
        self.clock = clock
        self.producer = make_producer()  # at start-up a failure is the caller's one-line error
        self.generation = 0
        self.replacements = 0
        self._replaced_at = -MIN_REPLACE_INTERVAL_S
        self._no_producer = not_queued(KafkaError("no producer"))  # for sends while none can be made
        # Past this clock time nothing more is handed to a producer: a stop's deadline has come,
        # and a send could block for max_block_ms (no metadata while the broker is away).
        self.sending_until = float("inf")
        self._lock = threading.Lock()  # taken only to replace, never per record

    def send_all(self, records: Sequence[OutputRecord]) -> list:
        """Hand every record to the current producer; return their futures, in order. A record
        that cannot even be queued (no metadata or a full buffer for ``max_block_ms``) gets a
        failed future at once, and so do the rest of the batch: the Checkpointer sends them again,
        and the caller is never stuck here for longer than one ``max_block_ms``."""
        if self.clock() >= self.sending_until:
            return [self._no_producer] * len(records)
        producer = self.producer or self._recreate()
        if producer is None:
            return [self._no_producer] * len(records)
        send = producer.send
        futures = []
        try:
            for r in records:
                futures.append(send(r.topic, value=r.value, key=r.key, headers=r.headers,
                                    partition=r.partition))
        except KafkaError as exc:  # also a producer closed by a replacement a moment ago
            self.warn(f"cannot queue outputs ({exc!r}); will retry")
            failed = not_queued(exc)
            futures.extend(failed for _ in range(len(records) - len(futures)))
        return futures

    def replace(self, seen_generation: int, reason: str) -> None:
        """Close the producer of ``seen_generation`` and start a new one; a no-op when another
        thread already replaced it, or when the last replacement was under ``MIN_REPLACE_INTERVAL_S``
        ago (the caller then re-sends through the current one). The old producer's unacknowledged
        records fail and are sent again by their owners (``Checkpointer``), so nothing depends on
        the old one any more."""
        with self._lock:
            now = self.clock()
            if seen_generation != self.generation or now - self._replaced_at < MIN_REPLACE_INTERVAL_S:
                return
            self._replaced_at = now
            old = self.producer
            self.warn(f"the producer stopped delivering ({reason}); replacing it and sending every "
                      "unacknowledged output again")
            self.producer = None  # made on the next send: the broker may be away right now
            self.generation += 1
            self.replacements += 1
        close_now(old)

    def _recreate(self):
        """The replacement producer, or None while none can be made (no broker answers)."""
        with self._lock:
            if self.producer is None:
                try:
                    self.producer = self._make_producer()
                except Exception as exc:  # kafka-python raises several kinds when bootstrap fails
                    self._no_producer = not_queued(exc)
                    self.warn(f"cannot create a producer yet ({exc!r}); will retry")
            return self.producer

    def flush(self, timeout_s: float) -> None:
        """Push out what is buffered and wait up to ``timeout_s`` for it to complete."""
        producer = self.producer
        if producer is None:  # being replaced: nothing of the new one to push yet
            time.sleep(min(timeout_s, 0.1))
            return
        # On a timeout the caller still looks at each future: flush only hurries them along.
        with contextlib.suppress(KafkaError):
            producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float) -> None:
        """Close the producer, waiting at most ``timeout_s``; never raises."""
        if self.producer is not None:
            close_now(self.producer, timeout_s)


class NotQueued(KafkaError):
    """The producer refused the record before queueing it: retried without replacing the producer."""


def not_queued(cause: Exception) -> Future:
    future = Future()
    future.failure(NotQueued(repr(cause)))
    return future


def close_now(producer, timeout_s: float = 0.0) -> None:
    """Close a producer within about ``timeout_s`` (0: at once, failing the records it still
    holds); never raises, never hangs."""
    if timeout_s > 0:
        try:
            producer.close(timeout=timeout_s)
            return
        except KafkaError:
            pass
    # kafka-python's close() flushes first and raises when that flush times out, before it stops
    # its I/O thread (close() without a timeout hangs): stop the thread first, then close.
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(FORCE_CLOSE_JOIN_S)
    with contextlib.suppress(KafkaError):
        producer.close(timeout=0)
