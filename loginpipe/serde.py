"""Values on the wire as JSON or as registry-framed Avro: the registry side (schemas by id, cached;
the project's contracts registered under ``<topic>-value``) for every reader and writer.

The pure half (framing, encoding, decoding with a given schema) is ``core/avro.py``; this module
talks to the registry. Who uses it:

- the pipeline: ``SchemaCache`` resolves the ids of framed input before the core runs (the core
  gets the schemas as a plain mapping), ``register_contract`` registers both contracts on start
  and ``AvroOutput`` frames processed records with the registered id;
- the generator writes Avro with ``AvroOutput``;
- ``tail``, the dashboard and the benchmark read either format with ``read_value``.

Memory plan: at most ``MAX_SCHEMAS`` parsed schemas are kept (a topic carries a handful of
versions; each parsed schema is a few KiB), the oldest dropped first; an id the registry does not
know is asked about again after ``UNKNOWN_RETRY_S``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from loginpipe.core.events import AVRO_HEADER_BYTES as HEADER_BYTES
from loginpipe.core.events import AVRO_MAGIC
from loginpipe.errors import UserError
from loginpipe.registry_client import RegistryError, RegistryUnavailable, SchemaRegistryClient

MAX_SCHEMAS = 1024
UNKNOWN_RETRY_S = 30.0  # an id the registry did not know may be registered since
RETRY_EVERY_S = 2.0  # while the registry does not answer, ask again at most this often
START_WAIT_S = 30.0  # on start, how long to wait for the registry before giving up
COMPATIBILITY = "BACKWARD"
FORMATS = ("json", "avro")
AVRO_EXTRA = "pip install 'loginpipe[avro]'"

ParsedSchema = dict[str, Any]


def subject(topic: str) -> str:
    """The subject a topic's values are registered under (Confluent's TopicNameStrategy)."""
    return f"{topic}-value"


def require_avro(what: str) -> None:
    """A one-line UserError when fastavro (the ``avro`` extra) is not installed."""
    try:
        import fastavro  # noqa: F401
    except ImportError:
        raise UserError(f"{what} needs fastavro: {AVRO_EXTRA}") from None


def framed_id(value: bytes | None) -> int | None:
    """The schema id of a framed value (None for JSON, or a frame too short to hold one)."""
    if value and value[:1] == AVRO_MAGIC and len(value) >= HEADER_BYTES:
        return int.from_bytes(value[1:HEADER_BYTES], "big")
    return None


def framed_ids(values: Iterable[bytes | None]) -> set[int]:
    """The schema ids a batch of values names."""
    return {int.from_bytes(v[1:HEADER_BYTES], "big") for v in values
            if v and v[:1] == AVRO_MAGIC and len(v) >= HEADER_BYTES}


class SchemaCache:
    """Writer schemas by id, each fetched from the registry once and shared by every thread.

    ``resolve`` never blocks for long: while the registry does not answer it returns None (the
    caller reads those records again later: nothing is lost) and asks again at most every
    ``retry_every_s``; ``warn`` hears about the outage and about the registry's return."""

    def __init__(self, client: SchemaRegistryClient, warn: Callable[[str], None],
                 retry_every_s: float = RETRY_EVERY_S, clock: Callable[[], float] = time.monotonic,
                 max_schemas: int = MAX_SCHEMAS) -> None:
        self.client = client
        self.warn = warn
        self.retry_every_s = retry_every_s
        self.clock = clock
        self.max_schemas = max_schemas
        self.known: dict[int, ParsedSchema] = {}  # read without the lock: the core's mapping
        self.lookups = 0  # requests made to the registry (tests and stats read it)
        self._unknown: dict[int, float] = {}  # id -> when to ask again
        self._down_until = 0.0
        self._down_since: float | None = None
        self._lock = threading.Lock()

    def resolve(self, ids: Iterable[int]) -> Mapping[int, ParsedSchema] | None:
        """The known schemas, with every id in ``ids`` looked up; None while the registry does
        not answer. An id it does not know (or that is not Avro) is left out: its records are
        dead-lettered by the core as an unknown schema id."""
        now = self.clock()
        wanted = [i for i in ids if i not in self.known and self._unknown.get(i, 0.0) <= now]
        if not wanted:
            return self.known
        with self._lock:
            if now < self._down_until:
                return None
            for schema_id in wanted:
                if schema_id in self.known:
                    continue  # another thread fetched it meanwhile
                if not self._fetch(schema_id, now):
                    return None
            if self._down_since is not None:
                # (worded to start unlike the outage's warning: Warner rate-limits by the start)
                self.warn(f"schema registry answers again after {now - self._down_since:.0f}s "
                          f"({self.client.url}); framed records are read again")
                self._down_since = None
        return self.known

    def schema(self, schema_id: int) -> ParsedSchema | None:
        """One writer schema (readers of single records: tail, dashboard); None when unknown.
        RegistryUnavailable when the registry does not answer."""
        known = self.resolve([schema_id])
        if known is None:
            raise RegistryUnavailable(self.client.url, "still not answering")
        return known.get(schema_id)

    def _fetch(self, schema_id: int, now: float) -> bool:
        """Look one id up; False when the registry does not answer (or fails: 5xx)."""
        from loginpipe.core import avro  # fastavro is the avro extra's

        self.lookups += 1
        try:
            text = self.client.schema_by_id(schema_id)
        except RegistryError as exc:
            if exc.status in (404, 422):  # no such id: the core dead-letters its records
                self._unknown[schema_id] = now + UNKNOWN_RETRY_S
                return True
            self._down_until = now + self.retry_every_s
            if self._down_since is None:
                self._down_since = now
            self.warn(f"schema registry at {self.client.url} does not answer ({exc.message}); "
                      f"records framed with a schema id not seen yet wait for it; asking again every "
                      f"{self.retry_every_s:g}s")
            return False
        try:
            parsed = avro.parse(text)
        except Exception:  # a Protobuf or JSON Schema id, or a broken schema: not ours to read
            self._unknown[schema_id] = now + UNKNOWN_RETRY_S
            return True
        if len(self.known) >= self.max_schemas:
            # Not in place: the core may be reading ``known`` in another thread.
            self.known = dict(list(self.known.items())[1:])
        self.known[schema_id] = parsed
        self._unknown.pop(schema_id, None)
        return True


@dataclass(frozen=True)
class AvroOutput:
    """Writes one topic's values as framed Avro with the id its contract got from the registry."""

    topic: str
    schema_id: int
    schema: ParsedSchema

    def encode(self, record: dict[str, Any]) -> bytes:
        from loginpipe.core import avro

        return avro.frame(self.schema_id, avro.encode(self.schema, record))


def register_contract(client: SchemaRegistryClient, topic: str, contract: str,
                      warn: Callable[[str], None], wait_s: float | None = None,
                      stopping: Callable[[], bool] = lambda: False) -> AvroOutput:
    """Register ``contract`` (``core.avro.INPUT_SCHEMA`` or ``OUTPUT_SCHEMA``) under the topic's
    subject, giving the subject BACKWARD compatibility when it has no level of its own. Waits up
    to ``wait_s`` (default START_WAIT_S) for a registry that does not answer yet or fails (5xx);
    UserError (one line) when it never does, or when the registry refuses the schema."""
    from loginpipe.core import avro

    name = subject(topic)
    text = avro.contract_text(contract)
    deadline = time.monotonic() + (START_WAIT_S if wait_s is None else wait_s)
    while True:
        try:
            if client.compatibility(name) is None:
                client.set_compatibility(name, COMPATIBILITY)
            schema_id = client.register(name, text)
            return AvroOutput(topic, schema_id, avro.contract(contract))
        except RegistryError as exc:
            message = (exc.message.splitlines() or [""])[0][:300]  # Apicurio may send a stack's lines
            if not isinstance(exc, RegistryUnavailable) and exc.status < 500:
                raise UserError(f"schema registry refused {contract} under {name}: {message}") from None
            if stopping() or time.monotonic() >= deadline:  # no answer, or a server error: retried
                raise UserError(f"schema registry at {client.url} does not answer ({message}); "
                                "start it (python -m loginpipe.registry start) or fix "
                                "--schema-registry-url") from None
            warn(f"schema registry at {client.url} does not answer yet ({message}); retrying")
            time.sleep(RETRY_EVERY_S)  # a start-up retry pause, not a synchronization


class UnreadableValue(ValueError):
    """A value neither JSON nor framed Avro that a known schema decodes."""


def read_value(value: bytes | None, schemas: SchemaCache | None) -> Any:
    """A topic value as Python data: JSON decoded, framed Avro decoded with its writer's schema.
    UnreadableValue says why not (no registry to read Avro with, unknown id, bad bytes);
    RegistryUnavailable when the registry does not answer."""
    if value is None:
        return None
    schema_id = framed_id(value)
    if schema_id is None:
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise UnreadableValue(f"not JSON and not framed Avro: {exc}") from None
    if schemas is None:
        raise UnreadableValue(f"framed Avro (schema id {schema_id}): give --schema-registry-url to read it")
    schema = schemas.schema(schema_id)
    if schema is None:
        raise UnreadableValue(f"schema id {schema_id} is not an Avro schema in the registry")
    from loginpipe.core import avro

    try:
        return avro.decode(schema, value[HEADER_BYTES:])
    except avro.DecodeError as exc:
        raise UnreadableValue(str(exc)) from None
