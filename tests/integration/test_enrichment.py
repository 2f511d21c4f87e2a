"""Issue 4 against a real broker: enrichment and risk fields on known events, privacy mode,
the stale and version filters with the filtered topic, and the summary and metrics topics."""

from __future__ import annotations

import calendar
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest

from loginpipe.core import contracts
from loginpipe.core.events import REASONS as DEAD_LETTER_REASONS
from loginpipe.core.filters import APP_VERSION, NOT_MOBILE, STALE
from loginpipe.core.records import ENCRYPTED_HEADER, FILTER_REASON_HEADER
from loginpipe.local.generator import GOOD, Generated
from loginpipe.observe.summary import PARTITION_SCHEMA_ID, SCHEMA_ID, add_up
from tests.helpers import (
    create_pipeline_topics,
    generated,
    preload,
    read_topic,
    run_pipeline,
    start_consumer,
    summary_counts,
)
from tests.unit.test_privacy import raw_values

pytestmark = pytest.mark.integration
output_schema = contracts.validator(contracts.OUTPUT_SCHEMA)


def utc(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def login(user: str, when: str | float, *, ip: str = "8.8.8.8", locale: str = "CA", version: str = "2.3.0",
          device: str | None = None, device_type: str = "android") -> Generated:
    timestamp = utc(when) if isinstance(when, str) else int(when)
    value = {"user_id": user, "app_version": version, "device_type": device_type, "ip": ip,
             "locale": locale, "device_id": device or f"dev-{user}", "timestamp": timestamp}
    return Generated(user.encode(), orjson.dumps(value), GOOD)


def group() -> str:
    return f"test-group-{uuid.uuid4().hex[:8]}"


# In input order (one partition keeps it): risk factors depend on what came before.
KNOWN = [
    login("clean", "2026-07-01T20:00:00Z", locale="CA"),
    login("midnight", "2026-01-01T00:00:00Z", locale="RU"),
    login("dst-summer", "2026-07-01T09:30:00Z", locale="NY"),  # 05:30 EDT; 04:30 if DST were ignored
    login("odd", "2026-01-15T09:30:00Z", locale="NY"),  # 04:30 EST
    login("v6", "2026-07-01T20:00:00Z", ip="2606:4700:4700::1111", locale="TX"),
    login("v6-doc", "2026-07-01T20:00:00Z", ip="2001:db8::7", locale="TX"),
    login("private", "2026-07-01T20:00:00Z", ip="192.168.0.7"),
    login("multi", "2026-07-01T20:00:00Z", ip="8.8.8.8"),
    login("multi", "2026-07-01T20:01:00Z", ip="1.1.1.1"),
    login("share-a", "2026-07-01T20:00:00Z", device="dev-shared"),
    login("share-b", "2026-07-01T20:00:00Z", device="dev-shared"),
    login("v10", "2026-07-01T20:00:00Z", version="10.0.1"),
    login("legacy", "2026-07-01T20:00:00Z", version="2.3.0"),
    login("combo", "2026-07-01T20:00:00Z", ip="9.9.9.9", device="dev-shared"),
    login("combo", "2026-07-01T20:02:00Z", ip="9.9.9.10", device="dev-shared"),
]


def test_enrichment_and_risk_fields_on_known_events(bootstrap: str, topic_name) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name, partitions=1)
    preload(bootstrap, topics.input, KNOWN)
    started = time.time()
    result = run_pipeline(bootstrap, topics, group())
    finished = time.time()
    assert result.totals.processed == len(KNOWN)
    records = [orjson.loads(r.value) for r in read_topic(bootstrap, topics.output, len(KNOWN))]
    records.sort(key=lambda r: r["source_offset"])
    for record in records:
        output_schema(record)
    by_user = {}
    for record in records:
        by_user.setdefault(record["user_id"], []).append(record)

    [midnight] = by_user["midnight"]
    assert (midnight["login_time"], midnight["day_of_week"], midnight["hour_of_day"]) == \
        ("2026-01-01T00:00:00Z", "Thursday", 0)
    assert (midnight["region"], midnight["local_hour_of_day"]) == ("Other", None)
    [summer] = by_user["dst-summer"]
    assert (summer["hour_of_day"], summer["local_hour_of_day"], summer["region"]) == (9, 5, "Northeast")
    [odd] = by_user["odd"]
    assert odd["local_hour_of_day"] == 4 and odd["risk_factors"] == ["odd_hour"]
    [v6], [v6_doc] = by_user["v6"], by_user["v6-doc"]
    assert v6["ip"] == "2606:4700:4700::1111" and v6["risk_factors"] == [] and v6["region"] == "South"
    assert v6_doc["risk_factors"] == ["private_ip"]
    [v10] = by_user["v10"]
    assert (v10["app_version_major"], v10["app_version_minor"], v10["app_version_patch"]) == (10, 0, 1)

    for record in records:
        processed = calendar.timegm(time.strptime(record["processed_timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
        processed += int(record["processed_timestamp"][20:23]) / 1000
        assert started - 1 <= processed <= finished + 1
        assert abs(processed - record["timestamp"] - record["processing_delay_seconds"]) < 0.002

    expected = {  # user -> (factors of each of its logins, in order)
        "clean": [[]], "midnight": [[]], "dst-summer": [[]], "private": [["private_ip"]],
        "multi": [[], ["multi_ip_user"]],
        "share-a": [[]], "share-b": [["shared_device"]],
        "v10": [[]], "legacy": [["legacy_app_version"]],
        "combo": [["shared_device", "legacy_app_version"],
                  ["multi_ip_user", "shared_device", "legacy_app_version"]],
    }
    for user, factors in expected.items():
        assert [r["risk_factors"] for r in by_user[user]] == factors, user
    assert [(r["risk_score"], r["risk_level"]) for r in by_user["combo"]] == [(45, "medium"), (75, "high")]
    assert by_user["clean"][0]["risk_score"] == 0 and by_user["clean"][0]["risk_level"] == "low"


def test_filters_route_with_reasons_and_summaries_agree_with_the_accounting(bootstrap: str,
                                                                            topic_name) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name)
    records = generated(3000, seed=21, bad_ratio=0.05)
    stale = [login(f"stale-{i}", time.time() - 7200) for i in range(40)]
    preload(bootstrap, topics.input, records + stale)
    allowed = frozenset({"2.3.0", "2.4.1", "2.2.0", "3.0.0"})  # the generator's, without 1.9.8
    result = run_pipeline(bootstrap, topics, group(), filtered=True, max_age_s=3600, app_versions=allowed,
                          summary_every=500, summary_interval_s=1.0, metrics_interval_s=1.0)
    t = result.totals
    assert t.consumed == 3040 == t.processed + t.filtered + t.dead_lettered

    good = [orjson.loads(r.value) for r in records if r.kind == GOOD]
    mobile = [e for e in good if e["device_type"].lower() in ("android", "ios")]
    assert t.reasons[NOT_MOBILE] == len(good) - len(mobile)
    assert t.reasons[APP_VERSION] == sum(1 for e in mobile if e["app_version"] not in allowed)
    assert t.reasons[STALE] == len(stale)

    filtered = read_topic(bootstrap, topics.filtered, t.filtered)
    assert len(filtered) == t.filtered
    reasons = Counter(dict(r.headers)[FILTER_REASON_HEADER].decode() for r in filtered)
    assert reasons == {NOT_MOBILE: t.reasons[NOT_MOBILE], APP_VERSION: t.reasons[APP_VERSION], STALE: 40}
    sent = {r.value for r in records + stale}
    assert all(r.value in sent for r in filtered)  # the original bytes

    values = [orjson.loads(r.value) for r in read_topic(bootstrap, topics.summary, 2)]
    snapshots = [v for v in values if v["schema"] == SCHEMA_ID]  # the others: partition records
    newest = {(v["topic"], v["partition"]): v for v in values if v["schema"] == PARTITION_SCHEMA_ID}
    state = add_up(list(newest.values()))
    assert sum(state["by_device_type"].values()) == t.processed
    assert state["multi_ip_users"] == result.aggregates["multi_ip_users"]
    assert state["shared_devices"] == result.aggregates["shared_devices"]
    assert len(snapshots) >= 2
    for snapshot in snapshots:
        totals = snapshot["totals"]
        assert totals["consumed"] == totals["processed"] + totals["filtered"] + totals["dead_lettered"]
    last = snapshots[-1]
    assert last["final"] is True
    assert (last["totals"]["consumed"], last["totals"]["processed"], last["totals"]["filtered"],
            last["totals"]["dead_lettered"]) == (t.consumed, t.processed, t.filtered, t.dead_lettered)
    for view in ("by_device_type", "by_app_version", "by_locale", "by_region", "by_day_of_week",
                 "by_date", "risk_levels"):
        assert sum(last[view].values()) == t.processed, view
    assert sum(last["by_hour_of_day"]) == t.processed
    assert last["filtered_by"] == {r: n for r, n in t.reasons.items() if r not in DEAD_LETTER_REASONS}
    assert last["dead_lettered_by"] == {r: n for r, n in t.reasons.items() if r in DEAD_LETTER_REASONS}
    assert set(last["by_app_version"]) <= allowed
    assert last["multi_ip_users"] == result.aggregates["multi_ip_users"]

    metrics = [orjson.loads(r.value) for r in read_topic(bootstrap, topics.metrics, 1)]
    assert metrics[-1]["consumed_total"] == t.consumed
    assert sum(m["batch_size_avg"] * m["batches"] for m in metrics) == pytest.approx(t.consumed, rel=0.01)
    assert all(m["consumer_lag"] >= 0 and m["rss_bytes"] > 0 for m in metrics)


def everything_in(bootstrap: str, topic: str, at_least: int) -> bytes:
    """Keys, values and headers of every record of a topic, as one blob to search (test_privacy_fuzz
    uses it too)."""
    parts = []
    for r in read_topic(bootstrap, topic, at_least):
        parts += [r.key or b"", r.value or b""]
        parts += [name.encode() + value for name, value in r.headers]
    return b"\n".join(parts)


def everything_written(bootstrap: str, topics, counts: tuple[int, int, int], out: Path, err: Path) -> bytes:
    """Every output topic of a run (``counts``: processed, filtered, dead-lettered) and the
    consumer's stdout and stderr, as one blob to search (test_privacy_fuzz uses it too)."""
    processed, filtered, dead = counts
    return b"\n".join([
        everything_in(bootstrap, topics.output, processed),
        everything_in(bootstrap, topics.dlq, dead),
        everything_in(bootstrap, topics.filtered, filtered),
        everything_in(bootstrap, topics.summary, 1),
        everything_in(bootstrap, topics.metrics, 1),
        out.read_bytes(), err.read_bytes(),
    ])


def test_privacy_mode_leaks_no_raw_ip_or_device_id(bootstrap: str, topic_name, tmp_path: Path,
                                                   reaper) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name)
    records = [
        *generated(3000, seed=31, bad_ratio=0.2),
        login("v6-user", time.time(), ip="2606:4700:4700::1111", device="device-secret-42"),
        login("web-user", time.time(), ip="203.0.113.77", device="device-secret-43", device_type="web"),
    ]
    preload(bootstrap, topics.input, records)
    proc, out, err = start_consumer(
        reaper, bootstrap, topics, group(), tmp_path, "private", "--privacy", "--filtered-topic",
        topics.filtered, "--show-messages", "--stop-when-idle", "3", "--stats-every", "500",
        env={"PRIVACY_SECRET": "a-test-secret-that-is-long-enough"})
    assert proc.wait(timeout=120) == 0, err.read_text()
    consumed, processed, filtered, dead = summary_counts(out.read_text())
    assert consumed == len(records) and dead > 400 and filtered > 100

    blob = everything_written(bootstrap, topics, (processed, filtered, dead), out, err)
    secrets = raw_values(r.value for r in records)
    assert {"2606:4700:4700::1111", "device-secret-42", "203.0.113.77"} <= secrets and len(secrets) > 1000
    assert [s for s in secrets if s.encode() in blob] == []

    outputs = [orjson.loads(r.value) for r in read_topic(bootstrap, topics.output, processed)]
    assert all(o["privacy"] is True and len(o["device_id"]) == 32 for o in outputs)
    assert "2606:4700:4700::" in {o["ip"] for o in outputs}  # the IPv6 /64 prefix is kept
    # Dead letters are sealed whole; filtered events are keyed by user_id, as processed ones.
    assert all(dict(r.headers)[ENCRYPTED_HEADER] == b"aes-256-gcm/v1"
               for r in read_topic(bootstrap, topics.dlq, dead))
    assert all(r.key == orjson.loads(r.value)["user_id"].encode()
               for r in read_topic(bootstrap, topics.filtered, filtered))
