"""Issue 16's rough edges that need no broker: counts with their nouns, the missing-topic hint
with the user's own names, the unreachable-broker hint that fits the address, and how
``loginpipe tail`` shows a record. The command-line ones are in test_cli_errors.py, the dashboard's
"–" in test_dashboard_view.py, and the ones that need Kafka in tests/integration (test_topics.py,
test_generator_kafka.py, test_tail.py)."""

from __future__ import annotations

import io
import shlex
from collections.abc import Iterator
from types import SimpleNamespace

import orjson
import pytest

from loginpipe import cli
from loginpipe.config import PipelineConfig
from loginpipe.errors import UserError
from loginpipe.kafka import failures
from loginpipe.kafka.admin import TopicResult
from loginpipe.kafka.memory import MemoryBackend, MemoryCluster
from loginpipe.kafka.settings import Connection
from loginpipe.runtime.app import Application
from loginpipe.state.changelog import device_changes, login_changes
from loginpipe.state.stores import DeviceState, LoginState, ProcessTotals
from loginpipe.tail import fields, json_line, text_lines
from loginpipe.topics import (
    DLQ_TOPIC,
    FILTERED_TOPIC,
    TOPICS,
    build_parser,
    create_command,
    missing_topics_message,
    pipeline_topics,
    plural,
)


@pytest.fixture
def dispatcher() -> Iterator[None]:
    """As under ``loginpipe consume``: parsers and hints name the ``loginpipe`` command."""
    cli.invoked_as("loginpipe consume")
    yield
    cli.invoked_as(None)


# --- 4. "1 partitions"

def test_a_count_agrees_with_its_noun() -> None:
    assert [plural(n, "partition") for n in (0, 1, 2, 1500)] == [
        "0 partitions", "1 partition", "2 partitions", "1,500 partitions"]
    assert TopicResult("t", "created", 1, 1).describe() == "t: created (1 partition)"
    assert TopicResult("t", "exists", 4, 4).describe() == "t: exists (4 partitions)"
    assert TopicResult("t", "too-few-partitions", 1, 4).describe().startswith(
        "t: exists with 1 partition, fewer than the 4 asked")


# --- 5. A partition mismatch has its own exit code, documented

def test_the_topic_commands_help_documents_its_exit_codes() -> None:
    epilog = " ".join(build_parser().epilog.split())
    assert "3 when an existing topic has fewer (one line each on stderr" in epilog


# --- 6. Topic creation for custom names, and the hint that prints the command

def test_pipeline_topics_take_the_users_names_and_keep_each_topics_settings() -> None:
    specs = pipeline_topics({"input_topic": "in", "dlq_topic": "bad", "filtered_topic": None})
    assert [s.name for s in specs] == ["in", "processed-user-login", "bad", "user-login-summary",
                                       "pipeline-metrics"]
    by_purpose = {s.purpose: s for s in TOPICS}
    for spec in specs:
        default = by_purpose[spec.purpose]
        assert (spec.partitions, spec.configs) == (default.partitions, default.configs)
    assert pipeline_topics() == TOPICS


def test_the_create_command_names_only_what_differs_from_the_defaults() -> None:
    assert create_command() == "python create_kafka_topic.py"
    assert create_command("127.0.0.1:29092", input_topic="user-login", dlq_topic=DLQ_TOPIC) == \
        "python create_kafka_topic.py"
    assert create_command("kafka:9092", input_topic="my in", output_topic="out", filtered_topic=None) == \
        "python create_kafka_topic.py --bootstrap-servers kafka:9092 --input-topic 'my in' --output-topic out"
    with pytest.raises(TypeError):
        create_command(group_id="g")


def test_the_missing_topic_hint_is_the_command_with_the_users_names(dispatcher: None) -> None:
    config = PipelineConfig(input_topic="in", output_topic="out", dlq_topic="dlq",
                            filtered_topic=FILTERED_TOPIC, summary_topic=None)
    message = missing_topics_message(["in"], config)
    assert message == ("topic in does not exist at 127.0.0.1:29092; create it with: loginpipe topics "
                       "--input-topic in --output-topic out --dlq-topic dlq")
    two = missing_topics_message(["in", "out"], config)
    assert two.startswith("topics in, out do not exist at 127.0.0.1:29092; create them with: "
                          "loginpipe topics")
    # the command parses as the topic command's own flags: it creates exactly those names
    words = shlex.split(message.split("create it with: ")[1])
    args = build_parser().parse_args(words[2:])
    assert (args.input_topic, args.output_topic, args.dlq_topic) == ("in", "out", "dlq")


def test_the_consumer_names_a_missing_topic_and_the_command_that_creates_it() -> None:
    cluster = MemoryCluster()
    cluster.create_topic("in", 2)
    config = PipelineConfig(connection="memory", input_topic="in", output_topic="out", quiet=True,
                            summary_topic=None, metrics_topic=None)
    app = Application(config, out=io.StringIO(), err=io.StringIO(), backend=MemoryBackend(cluster))
    with pytest.raises(UserError) as missing:
        app.run(install_signals=False)
    assert str(missing.value) == ("topics out, user-login-dlq do not exist at memory; create them with: "
                                  "python create_kafka_topic.py --bootstrap-servers memory "
                                  "--input-topic in --output-topic out")


# --- 8. The unreachable-broker hint fits the address

@pytest.mark.parametrize(("where", "local_start", "expected"), [
    ("127.0.0.1:29092", True, "is it running? (make kafka-start)"),
    ("localhost:29092,127.0.0.1:29092", True, "is it running?"),
    ("127.0.0.1:9092", False, "is it running, and on that port? (the local broker, make kafka-start, "
                              "listens on 29092)"),
    ("kafka.example.com:9092", False, "check the address, that this machine can reach it (network, "
                                      "firewall), and that the broker's advertised.listeners name an "
                                      "address reachable from here; a secured cluster also needs its "
                                      "settings (--client-config)"),
    ("10.0.0.5:29092,127.0.0.1:29092", False, "check the address"),
])
def test_the_unreachable_hint_suggests_the_local_broker_only_for_its_address(
        where: str, local_start: bool, expected: str) -> None:
    hint = failures.unreachable_hint(where)
    assert hint.startswith(expected)
    assert hint.endswith("(make kafka-start)") is local_start


def test_a_remote_unreachable_broker_is_not_told_to_start_the_local_one() -> None:
    failures.forget()
    text = failures.explain(Connection("kafka.example.com:9092"), TimeoutError("Unable to bootstrap"))
    assert text.startswith("cannot reach a Kafka broker at kafka.example.com:9092 over PLAINTEXT; check")
    assert "kafka-start" not in text and "\n" not in text
    secured = failures.unreachable_hint(Connection("kafka.example.com:9093", "SASL_SSL", "SCRAM-SHA-512"))
    assert "--client-config" not in secured  # its settings were given


# --- loginpipe tail: how a record is shown

def record(topic: str = "t", key: bytes | None = b"u1", value: bytes | None = b'{"a": 1}',
           headers: list | None = None, partition: int = 2, offset: int = 41,
           timestamp: int = 1_795_538_072_518) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, timestamp=timestamp, key=key,
                           value=value, headers=headers or [])


def test_a_json_record_as_text_and_as_json() -> None:
    shown = fields(record(headers=[("dlq-reason", b"invalid_json"), ("dlq-detail", b"x = y"),
                                   ("bin", b"\xff\x00")]))
    assert text_lines(shown) == (
        'partition 2 offset 41 2026-11-24T16:34:32.518Z key u1 headers dlq-reason=invalid_json '
        'dlq-detail="x = y" bin=base64:/wA=\n  {"a":1}\n')  # quoted: it has spaces
    assert orjson.loads(json_line(shown)) == {
        "topic": "t", "partition": 2, "offset": 41, "timestamp": 1_795_538_072_518,
        "time": "2026-11-24T16:34:32.518Z", "key": "u1", "key_format": "text",
        "headers": {"dlq-reason": "invalid_json", "dlq-detail": "x = y", "bin": "base64:/wA="},
        "value": {"a": 1}, "value_format": "json"}


@pytest.mark.parametrize(("value", "shown", "value_format", "line"), [
    (b"not json\nat all", "not json\nat all", "text", "  not json\\nat all"),
    (b"\xff\xfe", "//4=", "base64", "  base64://4="),
    (None, None, None, "  (null)"),
    (b"12", 12, "json", "  12"),
])
def test_values_that_are_not_json_objects(value: bytes | None, shown, value_format: str | None,
                                          line: str) -> None:
    fielded = fields(record(value=value, key=None, timestamp=-1))
    assert (fielded["value"], fielded["value_format"]) == (shown, value_format)
    assert (fielded["key"], fielded["key_format"], fielded["time"]) == (None, None, None)
    assert text_lines(fielded).splitlines() == ["partition 2 offset 41 no timestamp key (null)", line]


def test_a_repeated_header_keeps_every_value() -> None:
    shown = fields(record(headers=[("h", b"1"), ("h", b"2"), ("h", b"3")]))
    assert shown["headers"] == {"h": ["1", "2", "3"]}
    assert text_lines(shown).splitlines()[0].endswith(" headers h=1 h=2 h=3")
    odd = fields(record(key=b"a b", headers=[("x=y", b"v=w"), ("", b"")]))
    assert text_lines(odd).splitlines()[0].endswith(' key "a b" headers "x=y"=v=w ""=""')


def test_a_sealed_dead_letter_stays_sealed_with_a_note_on_opening_it() -> None:
    shown = fields(record(topic="user-login-dlq", value=b"LPDL\x01\x00\xff",
                          headers=[("dlq-encrypted", b"aes-256-gcm/v1")]))
    assert shown["value_format"] == "base64"
    assert shown["note"] == ("sealed in privacy mode; to open it: python -m loginpipe.dlq decrypt "
                             "--topic user-login-dlq --partition 2 --offset 41")


def test_changelog_records_are_spelled_out() -> None:
    logins, devices = LoginState(0), DeviceState(0)
    event = SimpleNamespace(app_version="2.3.0", locale="NY", user_id="u1", ip="1.1.1.1", epoch_s=3600.0)
    again = SimpleNamespace(**{**vars(event), "ip": "2.2.2.2"})
    logins.count([(7, event, "ios"), (8, again, "ios")], ProcessTotals())
    devices.count([(9, "kiosk", "u1"), (10, "kiosk", "u2")])
    topic = "g-aggregates-changelog"
    meanings = [fields(record(topic=topic, key=r.key, value=r.value)).get("changelog")
                for r in login_changes(logins, topic)]
    assert {"kind": "count", "store": "by_app_version", "label": "2.3.0", "count": 2, "offset": 8} in meanings
    [user] = [m for m in meanings if m["kind"] == "user"]
    assert (user["name"], user["distinct_ips"], user["offset"]) == ("u1", 2, 8)
    [device] = device_changes(devices, "g-devices-changelog")
    shown = fields(record(topic="g-devices-changelog", key=device.key, value=device.value))
    assert shown["changelog"]["kind"] == "device" and shown["changelog"]["users"] == 2
    assert "\n  changelog: kind=device key=" in text_lines(shown)
    tombstone = fields(record(topic=topic, key=b"u:ab", value=None))["changelog"]
    assert tombstone == {"kind": "user", "key": "ab", "forgotten": True}
    assert "changelog" not in fields(record(topic=topic, key=b"something else", value=b"[1]"))
    assert "changelog" not in fields(record(topic="other", key=device.key, value=device.value))
