"""Privacy mode against a real broker, fuzzed: records shaped every way a producer might get it
wrong (nested events, renamed fields, lists of events, IPs and device ids as keys) go through the
real consumer process; no raw IP or device id comes out anywhere, and the operator's decrypt
command gives the dead letters' original bytes back."""

from __future__ import annotations

import base64
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from loginpipe.core.privacy import Privacy
from loginpipe.core.records import ENCRYPTED_HEADER
from loginpipe.local.generator import Generated
from tests.helpers import (
    create_pipeline_topics,
    generated,
    preload,
    read_topic,
    run_cli,
    start_consumer,
    summary_counts,
)
from tests.integration.test_enrichment import everything_written, group
from tests.unit.test_privacy import raw_values

pytestmark = pytest.mark.integration
SECRET = "fuzz-secret-that-is-long-enough-0001"


def random_ip(rng: random.Random) -> str:
    """An address whose masked form differs from it and never contains it: IPv4 with a last octet
    other than 0, IPv6 with eight non-zero groups (so nothing compresses to '::')."""
    if rng.random() < 0.8:
        return f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return ":".join(f"{rng.randint(0x1000, 0xffff):x}" for _ in range(8))


def random_device(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return f"{rng.randint(100, 999)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"


def event(rng: random.Random, ip: str, device: str) -> dict:
    return {"user_id": f"fuzz-user-{rng.randrange(300)}", "app_version": "2.3.0",
            "device_type": rng.choice(["android", "iOS", "web"]), "ip": ip,
            "locale": rng.choice(["TX", "CA", "RU"]), "device_id": device,
            "timestamp": int(time.time()) - rng.randrange(3600)}


def renamed(e: dict, ip_name: str, device_name: str) -> dict:
    """The event with its ip and device_id under other names (so it is missing fields)."""
    e = dict(e)
    ip, device = e.pop("ip"), e.pop("device_id")
    return {**e, ip_name: ip, device_name: device}


# Each shape: (event, its ip, its device id, rng) -> (key, value). All but the good-event-with-a-
# raw-key shapes are rejected, so their dead letters must hide everything.
SHAPES: dict[str, Callable[[dict, str, str, random.Random], tuple[bytes | None, bytes | None]]] = {
    "nested": lambda e, ip, dev, rng: (e["user_id"].encode(), orjson.dumps({"event": e})),
    "client.ip and deviceId": lambda e, ip, dev, rng: (
        None, orjson.dumps({**renamed(e, "x", "deviceId"), "client": {"ip": ip}})),
    "IP and Device_ID": lambda e, ip, dev, rng: (b"", orjson.dumps(renamed(e, "IP", "Device_ID"))),
    "list of events": lambda e, ip, dev, rng: (
        e["user_id"].encode(), orjson.dumps([e, {"ip": ip, "device_id": dev}])),
    "deep": lambda e, ip, dev, rng: (
        None, orjson.dumps({"batch": [{"meta": {"client": {"ip": ip, "deviceId": dev}}}]})),
    "device id in the ip field": lambda e, ip, dev, rng: (ip.encode(), orjson.dumps({**e, "ip": dev})),
    "broken JSON, device id key": lambda e, ip, dev, rng: (dev.encode(), orjson.dumps(e)[:-3]),
    "not UTF-8": lambda e, ip, dev, rng: (ip.encode(), b"\xff" + orjson.dumps(e)),
    "null value, IP key": lambda e, ip, dev, rng: (ip.encode(), None),
    "good event, IP key": lambda e, ip, dev, rng: (ip.encode(), orjson.dumps(e)),
    "good event, device id key": lambda e, ip, dev, rng: (dev.encode(), orjson.dumps(e)),
}


def fuzz_records(seed: int, n: int) -> tuple[list[Generated], set[str]]:
    """``n`` records of the shapes above, round robin, and every IP and device id they hold."""
    rng = random.Random(seed)
    records, personal = [], set()
    names = list(SHAPES)
    for i in range(n):
        ip, device = random_ip(rng), random_device(rng)
        key, value = SHAPES[names[i % len(names)]](event(rng, ip, device), ip, device, rng)
        records.append(Generated(key, value, names[i % len(names)]))
        personal |= {ip, device}
    return records, personal


def test_no_shape_of_input_leaks_and_dead_letters_decrypt_back(bootstrap: str, topic_name, tmp_path: Path,
                                                                reaper) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name)
    fuzz, personal = fuzz_records(seed=51, n=2200)
    normal = generated(2000, seed=52, bad_ratio=0.1)
    records = fuzz + normal
    random.Random(53).shuffle(records)
    personal |= raw_values(r.value for r in normal)
    preload(bootstrap, topics.input, records)
    proc, out, err = start_consumer(
        reaper, bootstrap, topics, group(), tmp_path, "fuzz", "--privacy",
        "--filtered-topic", topics.filtered, "--show-messages", "--stop-when-idle", "2",
        "--stats-every", "500", env={"PRIVACY_SECRET": SECRET})
    assert proc.wait(timeout=120) == 0, err.read_text()
    consumed, processed, filtered, dead = summary_counts(out.read_text())
    assert consumed == len(records) and dead > 1700 and filtered > 100 and processed > 1000

    blob = everything_written(bootstrap, topics, (processed, filtered, dead), out, err)
    assert len(personal) > 4000
    assert sorted(s for s in personal if s.encode() in blob) == []

    inputs = {(r.partition, r.offset): r for r in read_topic(bootstrap, topics.input, len(records))}
    letters = read_topic(bootstrap, topics.dlq, dead)
    check_every_dead_letter_opens(letters, inputs)
    check_the_decrypt_command(bootstrap, topics.dlq, letters, inputs)


def check_every_dead_letter_opens(letters: list, inputs: dict) -> None:
    """In process, with the secret: every dead letter holds its input record's exact key and value."""
    privacy = Privacy(SECRET.encode())
    for letter in letters:
        sealed = privacy.open(letter.value)
        source = inputs[(sealed.source.partition, sealed.source.offset)]
        assert (sealed.key, sealed.value) == (source.key, source.value)
        assert letter.key == (None if source.key is None else privacy.token(source.key))
        assert dict(letter.headers)[ENCRYPTED_HEADER] == b"aes-256-gcm/v1"


def check_the_decrypt_command(bootstrap: str, dlq: str, letters: list, inputs: dict) -> None:
    """The operator's command, as a process, on a few dead letters of telling shapes."""
    def origin(letter):
        headers = dict(letter.headers)
        return inputs[(int(headers["source-partition"]), int(headers["source-offset"]))]

    def decrypt(letter, *flags: str, secret: str = SECRET, offset: int | None = None):
        offset = letter.offset if offset is None else offset
        return run_cli("-m", "loginpipe.dlq", "decrypt", "--bootstrap-servers", bootstrap, "--topic", dlq,
                       "--partition", str(letter.partition), "--offset", str(offset), *flags,
                       env={"PRIVACY_SECRET": secret})

    picks = [
        next(d for d in letters if origin(d).value is not None and origin(d).value.startswith(b"\xff")),
        next(d for d in letters if origin(d).value is None and origin(d).key is not None),
        next(d for d in letters if origin(d).key is None and origin(d).value is not None),
    ]
    for letter in picks:
        result = decrypt(letter, "--json")
        assert result.returncode == 0, result.stderr
        shown = orjson.loads(result.stdout)
        source = origin(letter)
        assert [None if v is None else base64.b64decode(v) for v in (shown["key"], shown["value"])] == \
            [source.key, source.value]
        assert shown["reason"] == dict(letter.headers)["dlq-reason"].decode() and shown["detail"]

    letter = next(d for d in letters if origin(d).value and origin(d).value.startswith(b'{"event"'))
    result = decrypt(letter, "--show-key")
    assert result.returncode == 0 and result.stdout.encode() == origin(letter).value
    assert f"key: {origin(letter).key!r}" in result.stderr

    result = decrypt(letter, secret="another-secret-just-as-long-0002")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: {dlq} partition {letter.partition} offset {letter.offset} "
                                     "cannot be decrypted with this $PRIVACY_SECRET "
                                     "(another secret, or the envelope was altered)")

    end = max(d.offset for d in letters if d.partition == letter.partition) + 1
    result = decrypt(letter, offset=end)
    assert result.returncode == 1 and result.stderr == (
        f"error: {dlq} partition {letter.partition} has no offset {end} (it holds offsets 0 to {end - 1})\n")
