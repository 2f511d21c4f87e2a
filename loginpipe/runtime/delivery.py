"""Sending output records through the shared producer, and getting it sending again after a failure.

Every send belongs to a producer *generation*. When a delivery fails (a batch expired while the
broker was away, say) or acknowledgements stop while the broker answers, ``replace`` closes the
producer; a new one is made on the next send: a new idempotent session with fresh sequence
numbers. Each worker's Checkpointer then sends every output of an older generation that was not
acknowledged again, in order, before anything new. Nothing is dropped: a record leaves the
pending list only once the broker has acknowledged it.

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

from loginpipe.core.records import OutputRecord
from loginpipe.kafka.base import ClientError, Delivery, Failed, NotQueued, Producer

# A record the broker refuses for good would otherwise replace the producer in a loop.
MIN_REPLACE_INTERVAL_S = 5.0


class Sender:
    """Holds the (thread-safe, shared) producer and replaces it when it stops delivering."""

    def __init__(self, make_producer: Callable[[], Producer], warn: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._make_producer = make_producer
        self.warn = warn
        self.clock = clock
        self.producer: Producer | None = make_producer()  # a failure here is the caller's error
        self.generation = 0
        self.replacements = 0
        self._replaced_at = -MIN_REPLACE_INTERVAL_S
        self._lock = threading.Lock()  # taken only to replace, never per record
        self._no_producer: Delivery = Failed(NotQueued("no producer"))
        # Past this clock time nothing more is handed to a producer: a stop's deadline has come,
        # and a send could block for max_block_ms (no metadata while the broker is away).
        self.sending_until = float("inf")

    def send_all(self, records: Sequence[OutputRecord]) -> list[Delivery]:
        """Hand every record to the current producer; return their deliveries, in order. One that
        cannot be queued fails at once (``NotQueued``): the Checkpointer sends it again."""
        if self.clock() >= self.sending_until:
            return [self._no_producer] * len(records)
        producer = self.producer or self._recreate()
        if producer is None:
            return [self._no_producer] * len(records)
        deliveries = producer.send_batch(records)
        if deliveries and deliveries[-1].failed() and isinstance(deliveries[-1].exception, NotQueued):
            self.warn(f"cannot queue outputs ({deliveries[-1].exception}); will retry")
        return deliveries

    def replace(self, seen_generation: int, reason: str) -> None:
        """Close the producer of ``seen_generation``; the next send makes a new one. A no-op when
        another thread already replaced it, or when the last replacement was under
        ``MIN_REPLACE_INTERVAL_S`` ago (the caller then re-sends through the current one). The
        old producer's unacknowledged records fail and are sent again by their owners
        (``Checkpointer``), so nothing depends on the old one any more."""
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
        if old is not None:
            old.close(0.0)

    def _recreate(self) -> Producer | None:
        """The replacement producer, or None while none can be made (no broker answers)."""
        with self._lock:
            if self.producer is None:
                try:
                    self.producer = self._make_producer()
                except ClientError as exc:
                    self._no_producer = Failed(NotQueued(repr(exc)))
                    self.warn(f"cannot create a producer yet ({exc}); will retry")
            return self.producer

    def flush(self, timeout_s: float) -> None:
        """Push out what is buffered and wait up to ``timeout_s`` for it to complete."""
        producer = self.producer
        if producer is None:  # being replaced: nothing of the new one to push yet
            time.sleep(min(timeout_s, 0.1))
            return
        # On a timeout the caller still looks at each delivery: flush only hurries them along.
        with contextlib.suppress(ClientError):
            producer.flush(timeout_s)

    def close(self, timeout_s: float) -> None:
        """Close the producer, waiting at most about ``timeout_s``; never raises."""
        if self.producer is not None:
            self.producer.close(timeout_s)
