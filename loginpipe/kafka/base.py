"""What the runtime asks of a Kafka client, and nothing more: the seam between the pipeline and
kafka-python (``kafka_python.py``), or the in-memory stand-in its unit tests run on (``memory.py``).

Records come back from ``poll`` as the client has them: anything with ``topic``, ``partition``,
``offset``, ``timestamp`` (ms), ``key`` and ``value`` will do (the core's ``RawRecord`` shape), so
no per-record copy is made. Offsets cross the seam as plain ints, "the next offset to read".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol


class TopicPartition(NamedTuple):
    """Equal to (and hashed like) kafka-python's own TopicPartition, which is a namedtuple too."""

    topic: str
    partition: int


class ClientError(Exception):
    """A client call failed (broker away, a timeout, a refused request): the runtime carries on."""


class NotQueued(ClientError):
    """The producer refused a record before queueing it (no metadata, closed, stopping): send it
    again; the producer itself is not broken."""


class NotAuthorized(Exception):
    """The cluster refuses this user an operation (a missing ACL): retrying cannot help, so the
    run stops with one line naming it. Not a ClientError, which the runtime rides out."""


def is_authorization_failure(exc: BaseException | None) -> bool:
    """Kafka's authorization errors, by their protocol names (TopicAuthorizationFailedError,
    GroupAuthorizationFailedError, TransactionalIdAuthorizationFailedError, ...), whichever client
    raised them."""
    return exc is not None and (isinstance(exc, NotAuthorized)
                                or type(exc).__name__.endswith("AuthorizationFailedError"))


class CommitRejected(ClientError):
    """The group moved on: this member no longer owns the partitions it tried to commit."""


class Delivery(Protocol):
    """One sent record's outcome; kafka-python's futures have this shape."""

    is_done: bool
    exception: BaseException | None

    def succeeded(self) -> bool: ...

    def failed(self) -> bool: ...


class Failed:
    """A delivery that failed before it was queued."""

    __slots__ = ("exception",)
    is_done = True

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception

    def succeeded(self) -> bool:
        return False

    def failed(self) -> bool:
        return True


class RebalanceListener(Protocol):
    """The runtime's side of a rebalance; the client calls it from whichever thread it uses."""

    def assigned(self, partitions: Sequence[TopicPartition]) -> None: ...

    def revoking(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Partitions are about to go: deliver what is in flight; return the offsets to commit."""
        ...

    def handed_over(self, offsets: dict[TopicPartition, int], error: ClientError | None) -> None:
        """The offsets ``revoking`` returned were committed (``error`` None) or not."""
        ...

    def lost(self, partitions: Sequence[TopicPartition]) -> None:
        """The group took ``partitions`` away without a revoke (this member was expelled, e.g.
        frozen past its session timeout): another member may have processed them since, so
        nothing may be committed for them and their states are stale."""
        ...


class Consumer(Protocol):
    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None: ...

    def warm_up(self, topic: str) -> None:
        """Fetch the topic's metadata before joining (spares an empty first assignment)."""
        ...

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, Sequence[Any]]: ...

    def commit(self, offsets: dict[TopicPartition, int], timeout_s: float) -> None: ...

    def assignment(self) -> set: ...

    def seek(self, tp, offset: int) -> None:
        """Read ``tp`` from ``offset`` at the next poll."""
        ...

    def pause(self, partitions: Sequence) -> None: ...

    def resume(self, partitions: Sequence) -> None: ...

    def paused(self) -> set: ...

    def highwater(self, tp) -> int | None: ...

    def position(self, tp, timeout_ms: int) -> int | None: ...

    def group_metadata(self) -> object:
        """This member's generation, for a transaction's offsets (the broker fences a stale one)."""
        ...

    def committed_offsets(self, partitions: Sequence[TopicPartition], timeout_s: float
                          ) -> dict[TopicPartition, int | None]:
        """The group's committed offsets (None: none yet), once no open transaction holds them."""
        ...

    def seek_to_beginning(self, partitions: Sequence[TopicPartition]) -> None: ...

    def membership(self) -> str:
        """Where the member is in joining its group, in a few words (for a stuck-worker warning)."""
        ...

    def close(self, timeout_s: float) -> None: ...


class Reader(Protocol):
    """A consumer outside any group, of partitions it is given: restores state from changelogs."""

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        """Read exactly these partitions from now on, each from its beginning."""
        ...

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]: ...

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, Sequence[Any]]: ...

    def position(self, tp: TopicPartition) -> int | None: ...

    def close(self) -> None: ...


class Producer(Protocol):
    def send_batch(self, records: Sequence[Any]) -> list[Delivery]:
        """Queue each record (``topic``, ``key``, ``value``, ``headers``, ``partition``); a record
        that cannot even be queued, and every one after it, gets a ``Failed(NotQueued)``. One call
        a batch: the per-record loop stays inside the client's module."""
        ...

    def flush(self, timeout_s: float) -> None:
        """Wait for what is queued; ClientError when ``timeout_s`` passes first."""
        ...

    def close(self, timeout_s: float) -> None:
        """Within about ``timeout_s`` (0: at once, failing what is left); never raises or hangs."""
        ...


class TransactionalProducer(Producer, Protocol):
    """One worker's own producer in exactly-once mode. After any ClientError the caller closes it
    and makes a new one with the same transactional id: its ``init`` aborts the open transaction."""

    def init(self, timeout_s: float) -> None:
        """Register the transactional id (fencing an older producer of it); ClientError if the
        broker does not answer in time."""
        ...

    def begin(self) -> None: ...

    def commit(self, offsets: dict[TopicPartition, int], group_metadata: object, timeout_s: float) -> None:
        """Add the input ``offsets`` to the open transaction and commit it, within ``timeout_s``."""
        ...


class Backend(Protocol):
    """Makes the clients: one consumer per worker, one shared producer, admin look-ups."""

    def consumer(self, config, index: int) -> Consumer: ...

    def producer(self, config) -> Producer: ...

    def transactional_producer(self, config, transactional_id: str) -> TransactionalProducer: ...

    def reader(self, config) -> Reader: ...

    def topic_partitions(self, connection: Any, names: Sequence[str]) -> dict[str, int]:
        """Partition counts of the topics that exist; UserError when no broker answers."""
        ...

    def create_topics(self, connection: Any, specs: Sequence[Any], partitions: int) -> None:
        """Create the topics of ``specs`` (``topics.TopicSpec``) that are missing, with
        ``partitions`` each; UserError when that fails."""
        ...

    def reachable(self, connection: Any) -> bool: ...

    def missing_permissions(self, connection: Any, wanted: dict[str, list[str]]) -> list[str]:
        """"<OPERATION> topic <name>" for each operation in ``wanted`` the user may not do."""
        ...

    def start_group_at_end(self, connection: Any, group_id: str, topic: str) -> int:
        """Commit ``topic``'s end offsets for ``group_id`` where it has none; how many were set."""
        ...
