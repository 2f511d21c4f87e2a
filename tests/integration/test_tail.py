"""``loginpipe tail`` against a real broker: records with keys and headers produced to a topic of the
test's own, then shown as text and as JSON; following new records; committed records only; Ctrl+C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from loginpipe.kafka.admin import delete_topics, ensure_topics
from loginpipe.topics import TopicSpec
from loginpipe.waiting import wait_until
from tests.helpers import run_cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 30.0
# (key, value, headers): a JSON object, text, bytes that are not UTF-8, a null value
RECORDS = [
    (b"u1", b'{"user_id": "u1", "n": 1}', [("dlq-reason", b"invalid_ip"), ("dlq-detail", b"ip 'x' is bad")]),
    (None, b"plain text", []),
    (b"u3", b"\x00\xff", [("raw", b"\xfe")]),
    (b"u4", None, [("h", b"1"), ("h", b"2")]),
]


@pytest.fixture
def topic(bootstrap: str, topic_name) -> Iterator[str]:
    """A one-partition topic of the test's own: its records come back in the order they were sent."""
    name = topic_name("tail")
    ensure_topics(bootstrap, [TopicSpec(name, "test")], partitions=1)
    yield name
    delete_topics(bootstrap, [name])


def produce(bootstrap: str, topic: str, records: list, transactional_id: str | None = None,
            abort: bool = False) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
    try:
        if transactional_id:
            producer.init_transactions()
            producer.begin_transaction()
        for key, value, headers in records:
            producer.send(topic, key=key, value=value, headers=headers)
        producer.flush(timeout=TIMEOUT_S)
        if transactional_id:
            (producer.abort_transaction if abort else producer.commit_transaction)()
    finally:
        producer.close(timeout=10)


def tail(bootstrap: str, *args: str) -> subprocess.CompletedProcess:
    return run_cli("-m", "loginpipe.tail", "--bootstrap-servers", bootstrap, *args, timeout_s=TIMEOUT_S * 2)


def test_records_from_the_beginning_as_text(bootstrap: str, topic: str) -> None:
    produce(bootstrap, topic, RECORDS)
    result = tail(bootstrap, topic, "--from-beginning", "--count", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 8 and result.stderr == ""
    heads, values = lines[0::2], lines[1::2]
    assert [h.split(" ")[:4] for h in heads] == [["partition", "0", "offset", str(i)] for i in range(4)]
    assert heads[0].endswith("Z key u1 headers dlq-reason=invalid_ip dlq-detail=\"ip 'x' is bad\"")
    assert heads[1].endswith("key (null)") and heads[2].endswith("key u3 headers raw=base64:/g==")
    assert heads[3].endswith("key u4 headers h=1 h=2")
    assert values == ['  {"user_id":"u1","n":1}', "  plain text", "  base64:AP8=", "  (null)"]


def test_records_from_the_beginning_as_json(bootstrap: str, topic: str) -> None:
    produce(bootstrap, topic, RECORDS)
    result = tail(bootstrap, topic, "--from-beginning", "--count", "4", "--json")
    assert result.returncode == 0, result.stderr
    shown = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [(r["topic"], r["partition"], r["offset"]) for r in shown] == [(topic, 0, i) for i in range(4)]
    assert all(type(r["timestamp"]) is int and r["time"].endswith("Z") for r in shown)
    assert [(r["key"], r["key_format"]) for r in shown] == [("u1", "text"), (None, None), ("u3", "text"),
                                                            ("u4", "text")]
    assert [(r["value"], r["value_format"]) for r in shown] == [
        ({"user_id": "u1", "n": 1}, "json"), ("plain text", "text"), ("AP8=", "base64"), (None, None)]
    assert [r["headers"] for r in shown] == [{"dlq-reason": "invalid_ip", "dlq-detail": "ip 'x' is bad"}, {},
                                             {"raw": "base64:/g=="}, {"h": ["1", "2"]}]


def test_what_an_aborted_transaction_wrote_is_not_shown(bootstrap: str, topic: str, topic_name) -> None:
    produce(bootstrap, topic, [(b"a", b'"committed 1"', [])])
    produce(bootstrap, topic, [(b"b", b'"aborted"', [])], transactional_id=topic_name("tx"), abort=True)
    produce(bootstrap, topic, [(b"c", b'"committed 2"', [])], transactional_id=topic_name("tx"))
    result = tail(bootstrap, topic, "--from-beginning", "--count", "2", "--json")
    assert result.returncode == 0, result.stderr
    shown = [orjson.loads(line)["value"] for line in result.stdout.splitlines()]
    assert shown == ["committed 1", "committed 2"]


class Following:
    """``tail TOPIC`` running in the background, its stderr lines collected as they come."""

    def __init__(self, bootstrap: str, *args: str) -> None:
        command = [sys.executable, "-m", "loginpipe.tail", "--bootstrap-servers", bootstrap, *args]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ})
        self.errors: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.errors.append(line)

    def wait_until_following(self) -> None:
        """Once it says so, every partition's end is known: a record sent from now on is shown."""
        assert wait_until(lambda: any("following" in line for line in self.errors)
                          or self.proc.poll() is not None, TIMEOUT_S)
        assert self.proc.poll() is None, self.errors

    def finish(self) -> tuple[int, str, str]:
        out = self.proc.stdout.read()
        code = self.proc.wait(timeout=TIMEOUT_S)
        self._reader.join(timeout=TIMEOUT_S)
        return code, out, "".join(self.errors)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def following() -> Iterator[list[Following]]:
    started: list[Following] = []
    yield started
    for one in started:
        one.stop()


def test_without_from_beginning_only_new_records_are_shown(bootstrap: str, topic: str,
                                                           following: list[Following]) -> None:
    produce(bootstrap, topic, [(b"old", b'"before the tail"', [])])
    follower = Following(bootstrap, topic, "--count", "2", "--json")
    following.append(follower)
    follower.wait_until_following()
    produce(bootstrap, topic, [(b"new1", b'"after 1"', [("h", b"v")]), (b"new2", b'"after 2"', [])])
    code, out, err = follower.finish()
    assert code == 0, err
    shown = [orjson.loads(line) for line in out.splitlines()]
    assert [(r["key"], r["value"], r["offset"]) for r in shown] == [("new1", "after 1", 1),
                                                                    ("new2", "after 2", 2)]
    assert shown[0]["headers"] == {"h": "v"}
    assert "following" in err and f"{topic} (1 partition) from its end" in err


def test_ctrl_c_exits_quietly_with_130(bootstrap: str, topic: str, following: list[Following]) -> None:
    follower = Following(bootstrap, topic)
    following.append(follower)
    follower.wait_until_following()
    follower.proc.send_signal(signal.SIGINT)
    code, out, err = follower.finish()
    assert code == 130
    assert out == "" and len(err.splitlines()) == 1 and "Traceback" not in err  # the "following" line only


def test_a_missing_topic_is_one_line(bootstrap: str, topic_name) -> None:
    absent = topic_name("absent")
    result = tail(bootstrap, absent, "--from-beginning")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: topic {absent} does not exist at {bootstrap}"]
