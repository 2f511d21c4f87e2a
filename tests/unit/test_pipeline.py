"""The pure core: routing, accounting and output fields for a batch (no broker, no threads)."""

from __future__ import annotations

from collections import defaultdict

import orjson

from loginpipe.core import contracts
from loginpipe.core.batch import LocalState as Aggregates
from loginpipe.core.batch import Topology, process_batch
from loginpipe.core.events import RawRecord
from loginpipe.core.records import REASON_HEADER, SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER, Routes
from loginpipe.local.generator import GOOD, EventGenerator
from loginpipe.state.stores import DEFAULT_MAX_VALUES_PER_KEY

NOW = 1_700_000_000.0
ROUTES = Topology(Routes("out", "dlq"))
OUTPUT_FIELDS = set(contracts.load(contracts.OUTPUT_SCHEMA)["properties"])


def raw(value: bytes | None, offset: int = 0, partition: int = 0, key: bytes | None = b"k") -> RawRecord:
    return RawRecord("in", partition, offset, int(NOW * 1000), key, value)


def event(**changes) -> bytes:
    base = {"user_id": "u1", "app_version": "2.3.0", "device_type": "iOS", "ip": "1.2.3.4",
            "locale": "CA", "device_id": "d1", "timestamp": "1699999999"}
    base.update(changes)
    return orjson.dumps(base)


def test_routes_valid_filtered_and_invalid_records() -> None:
    records = [raw(event(), 0), raw(event(device_type="web"), 1), raw(b"{oops", 2),
               raw(event(device_type="ANDROID", user_id="u2"), 3)]
    result = process_batch(records, Aggregates(), ROUTES, NOW)
    assert (result.consumed, result.processed, result.filtered, result.dead_lettered) == (4, 2, 1, 1)
    assert result.reasons == {"not_mobile": 1, "invalid_json": 1}
    topics = [o.topic for o in result.outputs]
    assert topics.count("out") == 2 and topics.count("dlq") == 1


def test_processed_record_fields() -> None:
    [out] = process_batch([raw(event(), 7, partition=3)], Aggregates(), ROUTES, NOW).outputs
    record = orjson.loads(out.value)
    assert set(record) == OUTPUT_FIELDS
    assert out.key == b"u1"
    assert record["device_type"] == "ios"
    assert record["timestamp"] == "1699999999"
    assert record["login_time"] == "2023-11-14T22:13:19Z"
    assert (record["source_partition"], record["source_offset"]) == (3, 7)
    assert record["multi_ip_user"] is False and record["shared_device"] is False


def test_dead_letter_keeps_bytes_and_says_why() -> None:
    bad = b'{"user_id": "\xff"}'
    [out] = process_batch([raw(bad, 42, partition=2, key=b"kk")], Aggregates(), ROUTES, NOW).outputs
    headers = dict(out.headers)
    assert (out.topic, out.key, out.value) == ("dlq", b"kk", bad)
    assert headers[REASON_HEADER] == b"not_utf8"
    assert headers[SOURCE_OFFSET_HEADER] == b"42" and headers[SOURCE_PARTITION_HEADER] == b"2"


def test_multi_ip_and_shared_device_flags() -> None:
    state = Aggregates()
    process_batch([raw(event(ip="1.1.1.1"))], state, ROUTES, NOW)
    second = process_batch([raw(event(ip="2.2.2.2")), raw(event(user_id="u9"))], state, ROUTES, NOW)
    first, other_user = (orjson.loads(o.value) for o in second.outputs)
    assert first["multi_ip_user"] is True and first["distinct_ips_for_user"] == 2
    assert other_user["shared_device"] is True and other_user["users_on_device"] == 2
    # A repeated IP alone does not make a multi-IP user (an original submission got this backwards).
    again = process_batch([raw(event(user_id="u5", ip="5.5.5.5"))] * 3, state, ROUTES, NOW)
    assert all(orjson.loads(o.value)["multi_ip_user"] is False for o in again.outputs)


def test_aggregates_match_an_independent_recomputation() -> None:
    generated = list(EventGenerator(seed=21, users=300, bad_ratio=0.1).generate(6000, clock=lambda: NOW))
    records = [raw(g.value, i) for i, g in enumerate(generated)]
    state = Aggregates()
    outputs = []
    for start in range(0, len(records), 500):
        result = process_batch(records[start:start + 500], state, ROUTES, NOW)
        assert result.consumed == result.processed + result.filtered + result.dead_lettered
        outputs += [orjson.loads(o.value) for o in result.outputs if o.topic == "out"]

    # Recompute from the generator's own records, without the pipeline's code.
    ips, users, versions = defaultdict(set), defaultdict(set), defaultdict(int)
    for g in generated:
        if g.kind != GOOD:
            continue
        e = orjson.loads(g.value)
        if e["device_type"].lower() not in ("android", "ios"):
            continue
        ips[e["user_id"]].add(e["ip"])
        users[e["device_id"]].add(e["user_id"])
        versions[e["app_version"]] += 1
    summary = state.summary()
    assert summary["multi_ip_users"] == sum(1 for s in ips.values() if len(s) > 1)
    assert summary["shared_devices"] == sum(1 for s in users.values() if len(s) > 1)
    assert dict(state.totals.by_app_version) == dict(versions)
    last_ips: dict = defaultdict(int)  # the device step emits in device order: take each user's largest
    for o in outputs:
        last_ips[o["user_id"]] = max(last_ips[o["user_id"]], o["distinct_ips_for_user"])
    assert last_ips == {u: min(len(s), DEFAULT_MAX_VALUES_PER_KEY) for u, s in ips.items()}


def test_a_null_record_is_dead_lettered_with_something_kafka_accepts() -> None:
    [out] = process_batch([raw(None, key=None)], Aggregates(), ROUTES, NOW).outputs
    assert out.topic == "dlq" and (out.key, out.value) == (None, b"")
    assert dict(out.headers)[REASON_HEADER] == b"invalid_json"
    [keyed] = process_batch([raw(None, key=b"k")], Aggregates(), ROUTES, NOW).outputs
    assert (keyed.key, keyed.value) == (b"k", None)


def test_output_partition_is_the_input_one_only_when_keyed_by_the_same_user() -> None:
    keep = Topology(Routes("out", "dlq", keep_partition=True))
    same_key, other_key = raw(event(), 1, partition=3, key=b"u1"), raw(event(), 2, partition=3, key=b"x")
    outputs = process_batch([same_key, other_key], Aggregates(), keep, NOW).outputs
    assert [o.partition for o in outputs] == [3, None]
    [unkept] = process_batch([same_key], Aggregates(), ROUTES, NOW).outputs
    assert unkept.partition is None
