"""The serializer micro-measure: per-record cost and size of the processed record written with
orjson (the JSON output), fastavro's ``schemaless_writer`` (what ``core/avro.py`` uses) and
confluent-kafka's ``AvroSerializer``, on real processed records (generator events through
``core.batch.process_batch``). CPU time per record (process_time, best of ``ROUNDS``), so other
programs on the machine slow it less than they slow wall time.

confluent-kafka's schema-registry module needs packages that are not ours (authlib, httpx2,
cachetools): they are installed on first use into their own folder (``CONFLUENT_SR_DIR``, about
30 MB), which only this measure's process puts on its import path; ``--confluent skip`` leaves
the serializer out, as does a machine where they cannot be installed.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loginpipe.benchmark.common import DEFAULT_OUT_DIR
from loginpipe.errors import UserError

ROUNDS = 3
PARTITIONS = 4
POLL = 2_000  # the runtime's default max_poll_records
START_S = 1_700_000_000.0
CONFLUENT_SR_DIR = DEFAULT_OUT_DIR / "peers" / "confluent-sr"
# confluent-kafka 2.16's "schemaregistry" extra, less what the project already has
# (writes with the subject's latest version, name): the two ways to set its serializer up
CONFLUENT_SETUPS = ((True, "confluent-kafka AvroSerializer, use.latest.version"),
                    (False, "confluent-kafka AvroSerializer, auto-register (its default)"))
CONFLUENT_SR_PACKAGES = ("authlib>=1.8.0", "httpx2>=2.0", "cachetools>=5.5.0", "certifi>=2026.10.19")


def processed_records(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """At least ``count`` processed records (as dicts) from generator events run through the core
    in polls of POLL over PARTITIONS partitions (bad and filtered events give none: more are made)."""
    import orjson

    from loginpipe.core.batch import LocalState, Topology, process_batch
    from loginpipe.core.events import RawRecord
    from loginpipe.core.records import Routes
    from loginpipe.local.generator import EventGenerator

    topology = Topology(Routes("out", "dlq", keep_partition=True, partitions=PARTITIONS))
    clock_s = [START_S]

    def clock() -> float:
        clock_s[0] += 0.001
        return clock_s[0]

    generator, state = EventGenerator(seed=seed), LocalState()
    offsets = [0] * PARTITIONS
    records: list[dict[str, Any]] = []
    while len(records) < count:
        raw = []
        for event in generator.generate(POLL, clock=clock):
            partition = zlib.crc32(event.key) % PARTITIONS  # keyed, as a producer places them
            raw.append(RawRecord("logins", partition, offsets[partition], int(clock_s[0] * 1000),
                                 event.key, event.value))
            offsets[partition] += 1
        result = process_batch(raw, state, topology, clock_s[0] + 0.5)
        records.extend(orjson.loads(o.value) for o in result.outputs if o.topic == "out")
    return records[:count]


def cpu_us_per_record(encode: Callable[[dict], bytes], records: list[dict]) -> tuple[float, int]:
    """(CPU µs per record, best of ROUNDS; total bytes written)."""
    best, size = float("inf"), 0
    for _ in range(ROUNDS):
        started = time.process_time()
        size = sum(len(encode(r)) for r in records)
        best = min(best, time.process_time() - started)
    return best / len(records) * 1e6, size


def confluent_serializer(url: str, topic: str, schema_text: str, latest: bool) -> Callable[[dict], bytes]:
    """confluent-kafka's AvroSerializer for ``topic``'s values. ``latest``: it writes with the
    subject's latest version (registered beforehand, as a CI step would); otherwise as by default,
    registering its own rendering of ``schema_text`` on first use (Apicurio takes it for a new
    version: another id, the same body). ImportError when its registry packages are missing."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    conf = {"auto.register.schemas": False, "use.latest.version": True} if latest else None
    serializer = AvroSerializer(SchemaRegistryClient({"url": url}), schema_text, conf=conf)
    context = SerializationContext(topic, MessageField.VALUE)
    return lambda record: serializer(record, context)


def build_encoder(key: str, url: str | None, topic: str) -> Callable[[dict], bytes]:
    """One serializer by its key in ENCODER_KEYS (the callgrind measure builds them one per
    process). The framed fastavro one needs no registry (the id does not change the cost);
    confluent-kafka's do (``url``), and the contract registered under ``topic`` first."""
    import orjson

    from loginpipe.core import avro
    from loginpipe.serde import AvroOutput

    schema = avro.contract(avro.OUTPUT_SCHEMA)
    if key == "orjson":
        return orjson.dumps
    if key == "fastavro":
        return lambda record: plain_avro(schema, record)
    if key == "fastavro-framed":
        return AvroOutput(topic, 1, schema).encode
    if url is None:
        raise UserError(f"the {key} serializer needs a schema registry")
    latest = key == "confluent-latest"
    return confluent_serializer(url, topic, avro.contract_text(avro.OUTPUT_SCHEMA), latest)


ENCODER_KEYS = ("orjson", "fastavro", "fastavro-framed", "confluent-latest", "confluent-auto")


def plain_avro(schema: dict, record: dict) -> bytes:
    """The bare library call: no strict check, no frame."""
    import fastavro

    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def ensure_confluent_sr(target: Path = CONFLUENT_SR_DIR) -> str | None:
    """Install confluent-kafka's schema-registry packages into ``target`` unless they are there;
    None when they are, else why not (one line)."""
    if (target / "authlib").is_dir() and (target / "cachetools").is_dir():
        return None
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target),
                        *CONFLUENT_SR_PACKAGES], check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip().splitlines()
        return f"could not install confluent-kafka's schema-registry packages: {(detail or [str(exc)])[-1]}"
    return None


def measure(records: list[dict], url: str | None, topic: str, confluent: bool = True) -> dict:
    """Each serializer's CPU µs and bytes per record on ``records``; the Avro ones against the
    registry at ``url`` (left out without one), the subject ``<topic>-value``."""
    import orjson

    from loginpipe.core import avro
    from loginpipe.registry_client import SchemaRegistryClient
    from loginpipe.serde import register_contract

    rows, notes = [], []
    schema = avro.contract(avro.OUTPUT_SCHEMA)

    encoders: list[tuple[str, Callable[[dict], bytes]]] = [
        ("orjson.dumps (the JSON output)", orjson.dumps),
        ("fastavro schemaless_writer", lambda record: plain_avro(schema, record))]
    same: dict[str, bool] = {}
    if url:
        output = register_contract(SchemaRegistryClient(url), topic, avro.OUTPUT_SCHEMA, warn=notes.append)
        encoders.append(("fastavro, strict and framed (core/avro.py, serde.AvroOutput)", output.encode))
        ours = output.encode(records[0])
        text = avro.contract_text(avro.OUTPUT_SCHEMA)
        try:
            for latest, name in CONFLUENT_SETUPS if confluent else ():
                serializer = confluent_serializer(url, topic, text, latest)
                theirs = serializer(records[0])
                same[name] = theirs == ours if latest else theirs[5:] == ours[5:]
                encoders.append((name, serializer))
        except ImportError as exc:
            notes.append(f"confluent-kafka AvroSerializer left out: {exc}")
    else:
        notes.append("no schema registry: the framed Avro serializers left out")
    for name, encode in encoders:
        us, size = cpu_us_per_record(encode, records)
        rows.append({"serializer": name, "cpu_us_per_record": round(us, 2),
                     "bytes_per_record": round(size / len(records), 1)})
    return {"records": len(records), "rounds": ROUNDS, "rows": rows, "notes": notes, "same_as_ours": same}


def table(result: dict) -> list[str]:
    """The measure as a markdown table, with its notes."""
    lines = [f"Per processed record, {result['records']:,} records from the generator through the core; "
             f"CPU time, best of {result['rounds']}.", "",
             "| serializer | CPU µs / record | bytes / record |", "|---|---:|---:|"]
    lines += [f"| {r['serializer']} | {r['cpu_us_per_record']:.2f} | {r['bytes_per_record']:.1f} |"
              for r in result["rows"]]
    lines += [""] if result.get("same_as_ours") else []
    for name, same in result.get("same_as_ours", {}).items():
        part = "frame" if "latest" in name else "Avro body (its frame names the version it registered)"
        lines.append(f"{name}: the {part} byte for byte the project's: {'yes' if same else 'NO'}.")
    return lines + [f"Note: {note}" for note in result["notes"]]


def run_measure(records: int, url: str | None, topic: str, seed: int, confluent: bool = True) -> dict:
    """The whole measure; UserError when the registry refuses the contract."""
    made = processed_records(records, seed)
    if not made:
        raise UserError("the core produced no processed records")
    return measure(made, url, topic, confluent)
