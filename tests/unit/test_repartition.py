"""The repartition record's flat array: what the login step writes is what the device step reads,
field by field (``records.repartition_record``, ``read_repartitioned``, ``processed_record``)."""

from __future__ import annotations

import orjson

from loginpipe.core.events import LoginEvent, RawRecord
from loginpipe.core.records import (
    DEVICE_ID,
    USER_ID,
    BatchTime,
    Routes,
    processed_record,
    read_repartitioned,
    repartition_record,
)
from loginpipe.state.stores import Counted

NOW = 1_700_000_000.0
EVENT = LoginEvent("user-1", "2.4.1", "iOS", "10.1.2.3", "TX", "device-9", "1699999990", 1_699_999_990.0)
# Distinct values, so a field read from the wrong position shows.
COUNTED = Counted(total_logins_for_version=11, total_logins_from_locale=12, total_logins_for_device_type=13,
                  distinct_ips_for_user=2, most_common_device_type="android", newest_major=3)


def round_trip(key: bytes | None = b"user-1", partition: int = 2, offset: int = 77) -> tuple[list, dict]:
    routes = Routes("out", "dlq", keep_partition=True, partitions=4)
    source = RawRecord("logins", partition, offset, 123_456, key, b"{}")
    written = repartition_record(routes, source, EVENT, "ios", COUNTED)
    login = read_repartitioned(written.value)
    output, _ = processed_record(routes, login, 1, BatchTime(NOW))
    return login, {"record": output, "value": orjson.loads(output.value)}


def test_the_device_step_reads_every_field_where_the_login_step_wrote_it() -> None:
    login, out = round_trip()
    assert len(login) == 11 + len(Counted._fields)
    assert (login[USER_ID], login[DEVICE_ID]) == ("user-1", "device-9")
    value = out["value"]
    assert {name: value[name] for name in ("user_id", "app_version", "device_type", "ip", "locale",
                                           "device_id", "timestamp")} == {
        "user_id": "user-1", "app_version": "2.4.1", "device_type": "ios", "ip": "10.1.2.3",
        "locale": "TX", "device_id": "device-9", "timestamp": "1699999990"}
    for name in ("total_logins_for_version", "total_logins_from_locale", "total_logins_for_device_type",
                 "distinct_ips_for_user", "most_common_device_type"):
        assert value[name] == getattr(COUNTED, name)
    assert (value["source_partition"], value["source_offset"]) == (2, 77)
    # newest_major 3 > this login's 2: the legacy-version factor fires
    assert "legacy_app_version" in value["risk_factors"]
    assert value["processing_delay_seconds"] == 10.0


def test_the_output_keeps_the_input_partition_only_when_the_input_was_keyed_by_the_user() -> None:
    _, keyed = round_trip(key=b"user-1", partition=3)
    _, other = round_trip(key=b"someone-else", partition=3)
    _, unkeyed = round_trip(key=None, partition=3)
    assert keyed["record"].partition == 3
    assert other["record"].partition is None and unkeyed["record"].partition is None
    assert keyed["record"].key == b"user-1"
