"""A Quix Streams application doing the pipeline's job, for the benchmark's peer comparison.

Run with the interpreter of its own virtual environment (quixstreams 3.28.1, see peers.py); it
imports nothing from loginpipe, so its pins never meet ours:

    bench-results/peers/quix-venv/bin/python loginpipe/benchmark/quix_app.py \\
        --bootstrap-servers 127.0.0.1:29092 --input-topic IN --output-topic OUT --group G \\
        --state-dir DIR

The topology, in Quix's idioms:

1. the input (raw bytes) is parsed and checked here, so a bad record is counted and dropped
   rather than stopping the app (Quix's own JSON deserializer raises on it);
2. state per user (the input's key): the distinct IPs seen, up to ``MAX_IPS``; users reaching two
   are counted;
3. ``group_by("device_id")`` (a repartition topic), then state per device: its distinct users;
   the enriched record goes to the output topic, JSON, snappy;
4. a branch of slim (version, locale) records, ``group_by`` that pair (Quix allows no nested
   group_by, and state is per message key only), then a count per pair in state: the per-version
   and per-locale counts are sums over the pairs.

How it differs from loginpipe's job, roughly the same work but not byte for byte: the checks are
the required string fields, a numeric timestamp >= 0 and a mobile device type (no IP, version
pattern, length or future-time checks); bad records are dropped and counted, not dead-lettered;
the output is the input's fields plus the state's figures and a few derived fields (no region,
local time or risk score); counts are per (version, locale) key rather than per input partition.

It stops by itself once nothing has been consumed for ``--idle-stop`` seconds (``Application.run``'s
``timeout``), committing on the way out, and prints the benchmark's summary lines: ``consumed N in
Xs``, ``timing: first record to last processed in Ys`` and a ``BENCH-RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import orjson  # a dependency of quixstreams: its own JSON (de)serializers use it, as loginpipe does
from quixstreams import Application, State

RESULT_PREFIX = "BENCH-RESULT "
MAX_IPS = 16  # distinct IPs kept per user: enough to tell one from many, bounded like our stores
MOBILE = frozenset({"android", "ios"})
STRING_FIELDS = ("user_id", "app_version", "device_type", "ip", "locale", "device_id")


class Tally:
    """What the app saw and did, and when: the figures the parent reads back."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.consumed = self.valid = self.filtered = self.invalid = self.outputs = 0
        self.multi_ip_users = 0
        self.first: float | None = None
        self.last: float | None = None
        self.started = time.monotonic()
        self._progress_at = self.started

    def progress(self) -> None:
        now = time.monotonic()
        if now - self._progress_at >= 2.0:
            self._progress_at = now
            print(f"quix: {self.consumed:,}/{self.expected:,} records, {self.outputs:,} outputs",
                  file=sys.stderr, flush=True)


def check(raw: bytes | None, tally: Tally) -> dict | None:
    """The parsed event when it is valid and mobile, else None (counted as invalid or filtered)."""
    tally.consumed += 1
    if tally.first is None:
        tally.first = time.monotonic()
    tally.progress()
    try:
        event = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:  # invalid UTF-8 included
        event = None
    if not valid(event):
        tally.invalid += 1
        return None
    if event["device_type"].lower() not in MOBILE:
        tally.filtered += 1
        return None
    tally.valid += 1
    return event


def valid(event: Any) -> bool:
    if not isinstance(event, dict):
        return False
    if not all(isinstance(event.get(name), str) and event[name] for name in STRING_FIELDS):
        return False
    stamp = event.get("timestamp")
    if isinstance(stamp, str):
        try:
            stamp = float(stamp)
        except ValueError:
            return False
    return isinstance(stamp, int | float) and not isinstance(stamp, bool) and stamp >= 0


def per_user(tally: Tally):
    def remember_ip(event: dict, state: State) -> dict:
        """State keyed by user (the input's key): the distinct IPs seen."""
        ips = state.get("ips", [])
        if event["ip"] not in ips and len(ips) < MAX_IPS:
            ips.append(event["ip"])
            state.set("ips", ips)
            if len(ips) == 2:
                tally.multi_ip_users += 1
        event["user_ip_count"] = len(ips)
        event["device_type"] = event["device_type"].lower()
        event["app_major"] = int(event["app_version"].split(".", 1)[0] or 0)
        return event

    return remember_ip


def per_device(tally: Tally):
    def remember_user(event: dict, state: State) -> dict:
        """State keyed by device (after the repartition): the distinct users seen on it."""
        users = state.get("users", [])
        if event["user_id"] not in users:
            users.append(event["user_id"])
            state.set("users", users)
        event["device_user_count"] = len(users)
        event["processed_at"] = time.time()
        tally.outputs += 1
        tally.last = time.monotonic()
        return event

    return remember_user


def count_pair(pair: dict, state: State) -> None:
    """State keyed by (version, locale): how many events had it."""
    state.set("count", state.get("count", 0) + 1)


def build(app: Application, args: argparse.Namespace, tally: Tally) -> None:
    source = app.topic(args.input_topic, value_deserializer="bytes", key_deserializer="bytes")
    output = app.topic(args.output_topic, value_serializer="json", key_serializer="str")
    sdf = app.dataframe(source)
    sdf = sdf.apply(lambda raw: check(raw, tally)).filter(lambda event: event is not None)
    sdf = sdf.apply(per_user(tally), stateful=True)
    # A branch: the counts need their own key, and group_by cannot be nested.
    pairs = sdf.apply(lambda e: {"app_version": e["app_version"], "locale": e["locale"]})
    pairs = pairs.group_by(lambda p: f"{p['app_version']}|{p['locale']}", name="version-locale")
    pairs.update(count_pair, stateful=True).filter(lambda _: False)
    devices = sdf.group_by("device_id")
    devices = devices.apply(per_device(tally), stateful=True)
    devices.to_topic(output)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Quix Streams peer of the login pipeline (benchmark)")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--input-topic", required=True)
    parser.add_argument("--output-topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--expected", type=int, default=0, help="input records, for progress lines")
    parser.add_argument("--idle-stop", type=float, default=3.0,
                        help="stop once nothing was consumed for this many seconds")
    parser.add_argument("--linger-ms", type=int, default=20)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    tally = Tally(args.expected)
    app = Application(
        broker_address=args.bootstrap_servers, consumer_group=args.group, auto_offset_reset="earliest",
        state_dir=args.state_dir, processing_guarantee="at-least-once", loglevel="WARNING",
        # the pass-throughs' producer settings: snappy, acks=all, idempotence
        producer_extra_config={"compression.type": "snappy", "acks": "all", "enable.idempotence": True,
                               "linger.ms": args.linger_ms})
    build(app, args, tally)
    app.run(timeout=args.idle_stop, collect=False)  # commits its checkpoint before returning
    elapsed = time.monotonic() - tally.started
    busy = (tally.last or 0.0) - (tally.first or 0.0)
    rate = tally.consumed / elapsed if elapsed > 0 else 0.0
    print(f"consumed {tally.consumed:,} in {elapsed:.1f}s ({rate:,.0f} msg/s)", flush=True)
    print(f"timing: first record to last processed in {busy:.3f}s", flush=True)
    result = {"consumed": tally.consumed, "busy_s": busy, "elapsed_s": elapsed, "client": "quixstreams",
              "valid": tally.valid, "filtered": tally.filtered, "invalid": tally.invalid,
              "outputs": tally.outputs, "multi_ip_users": tally.multi_ip_users}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv[1:]))
