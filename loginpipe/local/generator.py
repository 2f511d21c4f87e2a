"""Synthetic login events in the original data generator's shape, with realistic repetition
and a chosen share of bad input. Stands in for the assignment's generator container.

    python -m loginpipe.local.generator --count 100000 --rate 0 --seed 7
    python -m loginpipe.local.generator --format avro \
        --schema-registry-url http://127.0.0.1:18081/apis/ccompat/v7

With ``--format avro`` good events are framed Avro (the input contract, registered under
``<topic>-value`` first) and the bad ones include Avro's own kinds (``AVRO_BAD_KINDS``) besides
the JSON ones: a topic may carry both formats, and the pipeline dead-letters each kind.

As a library: ``EventGenerator(seed=7).generate(n)`` yields ``Generated`` records (key, value
and the kind of record, so tests know what they sent). Timestamps come from a clock that the
caller passes in, so the same seed and the same clock give the same bytes.
"""

from __future__ import annotations

import random
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson

from loginpipe import serde
from loginpipe.cli import (
    EnvArgumentParser,
    add_bootstrap_argument,
    add_registry_argument,
    choice,
    connection_from_args,
    non_negative_float,
    positive_int,
    ratio,
    run_cli,
)
from loginpipe.errors import UserError
from loginpipe.kafka.admin import require_topic, unreachable
from loginpipe.kafka.failures import forget, watch
from loginpipe.kafka.settings import Connection, kafka_options
from loginpipe.registry_client import SchemaRegistryClient
from loginpipe.topics import INPUT_TOPIC, create_command

US_STATES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ "
    "NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC"
).split()
FOREIGN_LOCALES = ("RU", "GB", "DE", "IN", "BR")
APP_VERSIONS = ("2.3.0", "2.4.1", "2.2.0", "1.9.8", "3.0.0")
APP_VERSION_WEIGHTS = (50, 20, 15, 5, 10)
# Mobile spellings as they arrive (inconsistent case), then non-mobile types the filter drops.
MOBILE_TYPES = ("android", "iOS", "Android", "ios", "IOS", "ANDROID")
MOBILE_WEIGHTS = (45, 40, 5, 5, 3, 2)
NON_MOBILE_TYPES = ("web", "desktop", "smart-tv")

GOOD = "good"
BAD_KINDS = (
    "missing_field", "wrong_type", "timestamp_not_numeric", "invalid_json", "not_utf8",
    "invalid_ip", "future_timestamp", "negative_timestamp", "oversized", "not_an_object",
)
OVERSIZED_BYTES = 100_000  # over the pipeline's 64 KiB event limit, under the broker's 1 MB
# Oversized records are rarer than the other bad kinds, or they would be most of the bytes.
BAD_WEIGHTS = tuple(0.2 if kind == "oversized" else 1.0 for kind in BAD_KINDS)
# With --format avro, bad records of Avro's own besides the JSON kinds (which stay JSON: a topic may
# carry both): a frame cut short (invalid_avro), a frame naming an id no registry has given
# (unknown_schema_id), and well-encoded records whose values break the contract (invalid_ip,
# invalid_app_version): each kind meets a different dead-letter reason.
AVRO_BAD_KINDS = ("truncated_avro", "unknown_schema_id", "avro_invalid_ip", "avro_invalid_app_version")
ALL_AVRO_BAD_KINDS = BAD_KINDS + AVRO_BAD_KINDS
AVRO_BAD_WEIGHTS = BAD_WEIGHTS + (1.0,) * len(AVRO_BAD_KINDS)
# Registries count ids up from 1; the largest signed 32-bit id is one none has given out.
UNKNOWN_SCHEMA_ID = 2**31 - 1


@dataclass(frozen=True)
class Generated:
    key: bytes
    value: bytes
    kind: str  # GOOD or one of BAD_KINDS


@dataclass(frozen=True)
class _User:
    user_id: str
    home_ip: str
    device_id: str
    locale: str
    app_version: str
    device_type: str


class EventGenerator:
    """Deterministic source of login events for a seed.

    Users are drawn with a heavy skew (a few users log in very often). Each user has a home IP
    and a device; ``roaming`` of logins come from another IP (multi-IP users) and ``sharing``
    of them use one of a small pool of family devices (shared devices).
    """

    def __init__(self, seed: int = 0, users: int = 50_000, bad_ratio: float = 0.02,
                 non_mobile_ratio: float = 0.1, roaming: float = 0.1, sharing: float = 0.05,
                 string_timestamp_ratio: float = 0.1, avro: serde.AvroOutput | None = None) -> None:
        """``avro``: write good events as framed Avro with its schema id, and Avro's bad kinds
        too; None writes JSON, the same bytes for a seed as before Avro existed."""
        self._rng = random.Random(seed)
        self.avro = avro
        self.bad_kinds, self._bad_weights = ((ALL_AVRO_BAD_KINDS, AVRO_BAD_WEIGHTS) if avro is not None
                                             else (BAD_KINDS, BAD_WEIGHTS))
        self.bad_ratio = bad_ratio
        self.non_mobile_ratio = non_mobile_ratio
        self.roaming = roaming
        self.sharing = sharing
        self.string_timestamp_ratio = string_timestamp_ratio
        self._users = [self._new_user() for _ in range(users)]
        self._family_devices = [self._uuid() for _ in range(max(1, users // 50))]

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _ip(self) -> str:
        r = self._rng.getrandbits(32)
        if self._rng.random() < 0.05:
            return f"2001:db8:{r >> 16:x}:{r & 0xFFFF:x}::{self._rng.getrandbits(16):x}"
        return f"{(r >> 24) % 223 + 1}.{(r >> 16) & 255}.{(r >> 8) & 255}.{r & 255}"

    def _new_user(self) -> _User:
        rng = self._rng
        locale = rng.choice(FOREIGN_LOCALES) if rng.random() < 0.03 else rng.choice(US_STATES)
        if rng.random() < self.non_mobile_ratio:
            device_type = rng.choice(NON_MOBILE_TYPES)
        else:
            device_type = rng.choices(MOBILE_TYPES, MOBILE_WEIGHTS)[0]
        return _User(self._uuid(), self._ip(), self._uuid(), locale,
                     rng.choices(APP_VERSIONS, APP_VERSION_WEIGHTS)[0], device_type)

    def _pick_user(self) -> _User:
        # random()**3 piles the draws onto low indices: a long-tailed population.
        return self._users[int(len(self._users) * self._rng.random() ** 3)]

    def good_event(self, now: float) -> dict:
        """One valid event (mobile or not) as a dict."""
        rng = self._rng
        user = self._pick_user()
        ip = self._ip() if rng.random() < self.roaming else user.home_ip
        device = rng.choice(self._family_devices) if rng.random() < self.sharing else user.device_id
        ts: int | str = int(now)
        if rng.random() < self.string_timestamp_ratio:
            ts = str(ts)  # the original generator sent numeric strings too; they are valid
        return {"user_id": user.user_id, "app_version": user.app_version,
                "device_type": user.device_type, "ip": ip, "locale": user.locale,
                "device_id": device, "timestamp": ts}

    def bad_value(self, kind: str, now: float) -> bytes:
        """The bytes of one record of bad ``kind``."""
        event = self.good_event(now)
        if kind in AVRO_BAD_KINDS:
            return self._bad_avro(kind, event)
        if kind == "missing_field":
            del event[self._rng.choice(list(event))]
        elif kind == "wrong_type":
            event[self._rng.choice(["user_id", "locale", "app_version"])] = 12345
        elif kind == "timestamp_not_numeric":
            event["timestamp"] = "yesterday"
        elif kind == "invalid_json":
            return orjson.dumps(event)[:-7]
        elif kind == "not_utf8":
            return b'{"user_id": "\xff\xfe\xfa", "ip": "\xc3\x28"}'
        elif kind == "invalid_ip":
            event["ip"] = self._rng.choice(["999.12.3.4", "not-an-ip", "10.0.0", ""])
        elif kind == "future_timestamp":
            event["timestamp"] = int(now) + 10 * 365 * 86400
        elif kind == "negative_timestamp":
            event["timestamp"] = -int(now)
        elif kind == "oversized":
            event["padding"] = "x" * OVERSIZED_BYTES
        elif kind == "not_an_object":
            return orjson.dumps([event["user_id"], event["ip"]])
        return orjson.dumps(event)

    def _bad_avro(self, kind: str, event: dict) -> bytes:
        if self.avro is None:
            raise ValueError(f"bad kind {kind} is Avro's: give the generator an AvroOutput")
        if kind == "avro_invalid_ip":
            event["ip"] = "not-an-ip"
        elif kind == "avro_invalid_app_version":
            event["app_version"] = "x"
        from loginpipe.core.avro import frame, unframe  # fastavro: there is an AvroOutput

        value = self.avro.encode(event)
        if kind == "unknown_schema_id":
            return frame(UNKNOWN_SCHEMA_ID, unframe(value)[1])
        if kind == "truncated_avro":
            # Cut within the body's first half, so that at least its last field is missing.
            body = len(value) - serde.HEADER_BYTES
            return value[:serde.HEADER_BYTES + self._rng.randrange(1, body // 2)]
        return value

    def generate(self, count: int, clock: Callable[[], float] = time.time) -> Iterator[Generated]:
        """Yield ``count`` records; ``clock`` supplies each event's timestamp."""
        rng = self._rng
        for _ in range(count):
            now = clock()
            if rng.random() < self.bad_ratio:
                kind = rng.choices(self.bad_kinds, self._bad_weights)[0]
                value = self.bad_value(kind, now)
                key = self._pick_user().user_id.encode()
            else:
                kind = GOOD
                event = self.good_event(now)
                value = orjson.dumps(event) if self.avro is None else self.avro.encode(event)
                key = event["user_id"].encode()
            yield Generated(key, value, kind)


@dataclass(frozen=True)
class GeneratorConfig:
    bootstrap_servers: str | Connection
    topic: str
    count: int
    rate: float
    seed: int | None
    bad_ratio: float
    users: int
    progress_every_s: float = 1.0
    value_format: str = "json"  # or "avro": framed, its schema registered at schema_registry_url
    schema_registry_url: str | None = None


def make_producer(bootstrap_servers: str | Connection):
    """The generator's producer: large snappy batches, because it is a bulk loader."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    watch()
    forget()
    try:
        return KafkaProducer(
            **kafka_options(bootstrap_servers),
            compression_type="snappy",
            linger_ms=20,
            batch_size=256 * 1024,
            max_request_size=2 * 1024 * 1024,
            bootstrap_timeout_ms=8000,
            max_block_ms=10_000,
            client_id="loginpipe-generator",
        )
    except (KafkaError, OSError) as exc:
        raise unreachable(bootstrap_servers, exc) from None


def produce(config: GeneratorConfig, out=sys.stderr) -> dict[str, int]:
    """Send ``config.count`` events (forever when 0) at ``config.rate``; return counts by kind."""
    from kafka.errors import KafkaTimeoutError

    create_hint = create_command(Connection.of(config.bootstrap_servers).bootstrap_servers,
                                 input_topic=config.topic)
    # Asked first: a producer would wait its max_block_ms (10 s) for metadata of a missing topic.
    require_topic(config.bootstrap_servers, config.topic, create_hint)
    output = avro_output(config, out)
    producer = make_producer(config.bootstrap_servers)
    seed = config.seed if config.seed is not None else random.randrange(2**32)
    generator = EventGenerator(seed=seed, users=config.users, bad_ratio=config.bad_ratio, avro=output)
    counts: dict[str, int] = {}
    failures: list[BaseException] = []
    started = last_report = time.monotonic()
    sent = 0
    total = config.count or None
    try:
        for record in generator.generate(config.count or sys.maxsize):
            future = producer.send(config.topic, key=record.key, value=record.value)
            if not failures:
                future.add_errback(failures.append)
            counts[record.kind] = counts.get(record.kind, 0) + 1
            sent += 1
            if config.rate > 0:
                pace(started, sent, config.rate)
            if sent % 1000 == 0 and time.monotonic() - last_report >= config.progress_every_s:
                last_report = time.monotonic()
                _report(out, sent, total, last_report - started)
            if failures:
                raise UserError(f"sending to {config.topic} failed: {failures[0]}")
    except KeyboardInterrupt:
        print("generator: interrupted, flushing what was sent", file=out, flush=True)
    except KafkaTimeoutError:
        raise UserError(f"timed out sending to {config.topic}: does the topic still exist? "
                        f"({create_hint})") from None
    finally:
        producer.flush()
        producer.close()
    if failures:
        raise UserError(f"sending to {config.topic} failed: {failures[0]}")
    _report(out, sent, total, time.monotonic() - started, final=True)
    return counts


def avro_output(config: GeneratorConfig, out=sys.stderr) -> serde.AvroOutput | None:
    """With --format avro, the input contract registered under the topic's subject (None: JSON).
    A one-line UserError when the registry never answers or refuses it."""
    if config.value_format != "avro":
        return None
    if not config.schema_registry_url:
        raise UserError("--format avro needs --schema-registry-url (or $SCHEMA_REGISTRY_URL)")
    serde.require_avro("--format avro")
    from loginpipe.core import avro

    def warn(message: str) -> None:
        print(f"generator: {message}", file=out, flush=True)

    output = serde.register_contract(SchemaRegistryClient(config.schema_registry_url), config.topic,
                                     avro.INPUT_SCHEMA, warn)
    print(f"generator: writing Avro, schema id {output.schema_id} ({serde.subject(config.topic)})",
          file=out, flush=True)
    return output


def pace(started: float, sent: int, rate: float) -> None:
    """Sleep just enough that ``sent`` records since ``started`` (monotonic) keep to ``rate``/s."""
    ahead = sent / rate - (time.monotonic() - started)
    if ahead > 0.002:
        time.sleep(ahead)  # rate limiting, the behaviour asked for


def _report(out, sent: int, total: int | None, elapsed: float, final: bool = False) -> None:
    of = f"/{total:,}" if total else ""
    word = "sent" if final else "generated"
    rate = sent / elapsed if elapsed > 0 else 0.0
    events = "event" if (total or sent) == 1 else "events"
    print(f"generator: {word} {sent:,}{of} {events} ({rate:,.0f} events/s)", file=out, flush=True)


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(prog="python -m loginpipe.local.generator",
                               description="Produce synthetic login events to Kafka.")
    add_bootstrap_argument(parser)
    parser.add_env_argument("--topic", env="INPUT_TOPIC", default=INPUT_TOPIC, help="topic to write to")
    parser.add_env_argument("--count", env="GENERATOR_COUNT", type=non_negative_int, default=0,
                            help="events to send; 0 runs until Ctrl+C")
    parser.add_env_argument("--rate", env="GENERATOR_RATE", type=non_negative_float, default=1000.0,
                            help="events per second; 0 is as fast as possible")
    parser.add_env_argument("--seed", env="GENERATOR_SEED", type=int, default=None,
                            help="random seed; the same seed gives the same events")
    parser.add_env_argument("--bad-ratio", env="GENERATOR_BAD_RATIO", type=ratio, default=0.02,
                            help="share of deliberately bad records")
    parser.add_env_argument("--users", env="GENERATOR_USERS", type=positive_int, default=50_000,
                            help="size of the simulated user population")
    parser.add_env_argument("--progress-every", env="GENERATOR_PROGRESS_S", type=non_negative_float,
                            default=1.0, help="seconds between progress lines")
    parser.add_env_argument("--format", env="GENERATOR_FORMAT", type=choice(serde.FORMATS),
                            metavar="{" + ",".join(serde.FORMATS) + "}", default="json",
                            help="values as JSON, or as framed Avro (needs --schema-registry-url); "
                                 "bad records include Avro's own kinds then")
    add_registry_argument(parser, "write Avro (register the input contract)")
    return parser


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


non_negative_int.__name__ = "whole number (0 or more)"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl+C: what was generated is still flushed


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.format == "avro":  # before Kafka is asked anything: a usage error, then a missing extra
        if not args.schema_registry_url:
            parser.error("--format avro needs --schema-registry-url (or $SCHEMA_REGISTRY_URL)")
        serde.require_avro("--format avro")
    signal.signal(signal.SIGTERM, _interrupt)
    config = GeneratorConfig(connection_from_args(args), args.topic, args.count, args.rate,
                             args.seed, args.bad_ratio, args.users, args.progress_every,
                             args.format, args.schema_registry_url)
    produce(config)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
