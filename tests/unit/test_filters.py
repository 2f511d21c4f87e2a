"""Which valid events are kept, and where the others go."""

from __future__ import annotations

import orjson

from loginpipe.core.batch import LocalState as Aggregates
from loginpipe.core.batch import Topology, process_batch
from loginpipe.core.events import RawRecord
from loginpipe.core.filters import APP_VERSION, NOT_MOBILE, STALE, FilterRules, filter_reason
from loginpipe.core.records import FILTER_REASON_HEADER, SOURCE_OFFSET_HEADER, Routes

NOW = 1_800_000_000.0


def test_default_rules_keep_every_mobile_login_of_any_age_and_version() -> None:
    rules = FilterRules()
    assert filter_reason(rules, "ios", "0.0.1", 0.0, NOW) is None
    assert filter_reason(rules, "android", "99.0.0", NOW, NOW) is None
    assert filter_reason(rules, "web", "2.3.0", NOW, NOW) == NOT_MOBILE


def test_version_and_age_rules() -> None:
    rules = FilterRules(app_versions=frozenset({"2.3.0"}), max_age_s=60)
    assert filter_reason(rules, "ios", "2.3.0", NOW - 60, NOW) is None
    assert filter_reason(rules, "ios", "2.3.0", NOW - 60.5, NOW) == STALE
    assert filter_reason(rules, "ios", "2.4.0", NOW, NOW) == APP_VERSION
    assert filter_reason(rules, "web", "2.4.0", NOW - 999, NOW) == NOT_MOBILE  # the first reason wins


def _raw(offset: int, **changes) -> RawRecord:
    event = {"user_id": "u1", "app_version": "2.3.0", "device_type": "iOS", "ip": "1.2.3.4",
             "locale": "CA", "device_id": "d1", "timestamp": NOW - 10, **changes}
    return RawRecord("in", 0, offset, 0, b"u1", orjson.dumps(event))


def test_filtered_events_are_counted_and_forwarded_only_when_a_topic_is_set() -> None:
    records = [_raw(0), _raw(1, device_type="web"), _raw(2, app_version="1.0.0"),
               _raw(3, timestamp=NOW - 999)]
    rules = FilterRules(app_versions=frozenset({"2.3.0"}), max_age_s=100)
    counted = process_batch(records, Aggregates(), Topology(Routes("out", "dlq"), rules), NOW)
    assert counted.reasons == {NOT_MOBILE: 1, APP_VERSION: 1, STALE: 1}
    assert [o.topic for o in counted.outputs] == ["out"]

    forwarded = process_batch(records, Aggregates(), Topology(Routes("out", "dlq", "filtered"), rules), NOW)
    assert (forwarded.processed, forwarded.filtered) == (1, 3)
    sent = [o for o in forwarded.outputs if o.topic == "filtered"]
    assert [dict(o.headers)[FILTER_REASON_HEADER] for o in sent] == [b"not_mobile", b"app_version", b"stale"]
    assert [dict(o.headers)[SOURCE_OFFSET_HEADER] for o in sent] == [b"1", b"2", b"3"]
    assert [o.value for o in sent] == [r.value for r in records[1:]]
