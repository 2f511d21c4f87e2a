"""The avro step: the pipeline (kafka-python, 1 thread) drained once with JSON output and once with
Avro output on the same preloaded input, then each output topic sampled and read back.

What it measures per format: events/s, CPU s per million events, peak RSS (as every drain), and the
bytes a processed record takes: the mean value size on the wire, the values compressed with snappy
in chunks of ``SNAPPY_CHUNK`` bytes (about what a producer batch holds), and the output log's bytes
on disk per output record (the real batches: keys, headers and batch overhead included).

What it checks: the drain's accounting (consumed = processed + filtered + dead-lettered), and that
every sampled Avro output is framed with the id registered under the output topic's subject and
decodes with an independent reader (fastavro and a plain HTTP GET of the schema by that id: not
the project's own ``serde``), to the same per-event fields as the JSON run's output for the same
input record. Any failure fails the run, like an accounting mismatch.

The registry: the one given (``--schema-registry-url``), else one already answering on the local
registry's default port, else a local registry of our own started on a free port (its own pid and
log folder, the built app shared) and stopped afterwards. When none can be had (no Java, no Maven
to build it) the Avro runs are skipped with one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from loginpipe.benchmark.common import say
from loginpipe.benchmark.process import Child, MachineUsage
from loginpipe.benchmark.steps import (
    Bench,
    check_accounting,
    drain_command,
    log_sizes,
    pipeline_topics,
    python_child,
    python_run,
    snapshot_topic_flags,
)
from loginpipe.errors import UserError
from loginpipe.local.broker import free_port

FORMATS = ("json", "avro")
SAMPLE_RECORDS = 20_000  # outputs read back per format, spread evenly over the partitions
SNAPPY_CHUNK = 16 * 1024  # Kafka's default batch.size: the values of one batch, compressed together
# Fields that depend on the event alone: the same in both runs for the same input record. The
# counts and per-user state depend on how the partitions interleave in a batch, the processing
# times on the clock.
PER_EVENT_FIELDS = ("user_id", "app_version", "device_type", "ip", "locale", "device_id", "timestamp",
                    "login_time", "day_of_week", "hour_of_day", "local_hour_of_day", "region",
                    "app_version_major", "app_version_minor", "app_version_patch", "privacy",
                    "source_partition", "source_offset")


# --- the registry ------------------------------------------------------------------------------

@dataclass
class BenchRegistry:
    """The registry the Avro run uses: its URL (None: no registry, the runs are skipped) and how it
    came to be (started, reused, given) or why there is none."""

    url: str | None
    how: str


def output_format_missing() -> str | None:
    """Why the pipeline cannot write Avro here, or None when it can."""
    try:
        import fastavro  # noqa: F401
    except ImportError:
        return "fastavro is not installed (pip install 'loginpipe[avro]')"
    return None


def check_registry(url: str) -> None:
    """UserError (one line) unless a registry answers at ``url``."""
    from loginpipe.local.registry import api_answers

    if not api_answers(url.rstrip("/"), timeout_s=5.0):
        raise UserError(f"no schema registry answers at {url} (--schema-registry-url)")


@contextlib.contextmanager
def bench_registry(given: str | None, log_dir: Path) -> Iterator[BenchRegistry]:
    """The registry for the Avro run (see the module's docstring); one this started is stopped on
    the way out."""
    from loginpipe.local.registry import DEFAULT_HOME, DEFAULT_PORT, api_answers, ensure_built, registry_url

    if given:
        check_registry(given)
        yield BenchRegistry(given.rstrip("/"), f"the registry at {given}")
        return
    default = registry_url(DEFAULT_PORT)
    if api_answers(default):
        yield BenchRegistry(default, f"the registry already answering at {default}, reused")
        return
    try:
        ensure_built(DEFAULT_HOME, quiet=True)
    except UserError as exc:  # no Java, no Maven, a failed build: the Avro runs are left out
        yield BenchRegistry(None, f"no local schema registry: {str(exc).splitlines()[0]}")
        return
    registry = private_registry(DEFAULT_HOME, log_dir / "registry")
    try:
        started = registry.start(quiet=True)
    except UserError as exc:
        yield BenchRegistry(None, f"the local schema registry did not start: {str(exc).splitlines()[0]}")
        return
    try:
        yield BenchRegistry(registry.url, started)
    finally:
        registry.stop()


def private_registry(built_home: Path, home: Path):
    """A LocalRegistry on a free port whose pid file and log are its own (so it neither clashes with
    nor stops the user's registry), sharing the app already built in ``built_home``."""
    from loginpipe.local.registry import LocalRegistry

    home.mkdir(parents=True, exist_ok=True)
    app = home / "app"
    if not app.exists():
        app.symlink_to((built_home / "app").resolve(), target_is_directory=True)
    return LocalRegistry(home=home, port=free_port())


# --- reading the outputs back --------------------------------------------------------------------

class IndependentReader:
    """Framed Avro read as any Confluent-compatible consumer would: the schema fetched by the id in
    the frame with a plain GET, the body decoded by fastavro. Nothing of the project's serde."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.schemas: dict[int, Any] = {}

    def decode(self, value: bytes) -> tuple[int, dict]:
        """(schema id, record); ValueError saying why not."""
        import fastavro

        if len(value) < 5 or value[0] != 0:
            raise ValueError(f"not a Confluent frame: starts {value[:5]!r}")
        schema_id = int.from_bytes(value[1:5], "big")
        if schema_id not in self.schemas:
            text = self._get(f"/schemas/ids/{schema_id}")["schema"]
            self.schemas[schema_id] = fastavro.parse_schema(json.loads(text))
        body = io.BytesIO(value[5:])
        try:
            record = fastavro.schemaless_reader(body, self.schemas[schema_id])
        except Exception as exc:  # any failure to decode counts, whatever fastavro raises
            raise ValueError(f"schema id {schema_id}: {type(exc).__name__}: {exc}") from None
        if body.tell() != len(value) - 5:
            raise ValueError(f"schema id {schema_id}: {len(value) - 5 - body.tell()} bytes left over")
        return schema_id, record

    def latest_id(self, subject: str) -> int | None:
        """The id of the subject's latest version; None when the registry does not know it (an
        in-memory registry restarted meanwhile forgets every schema)."""
        try:
            return int(self._get(f"/subjects/{urllib.parse.quote(subject, safe='')}/versions/latest")["id"])
        except (OSError, ValueError, KeyError):
            return None

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            return json.loads(answer.read())


def sample_values(bootstrap: str, topic: str, count: int, timeout_s: float = 120.0) -> dict[int, list]:
    """The first records of each partition of ``topic``, ``count`` in all, spread evenly: by
    partition, (offset, value) in offset order. Mostly the same input records in both runs (an
    output keyed by its input's user goes to its input's partition, in input order); those in both
    are compared."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             max_partition_fetch_bytes=4 * 1024 * 1024)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        ends = consumer.end_offsets(partitions)
        share = -(-count // max(1, len(partitions)))
        limits = {tp: min(end, share) for tp, end in ends.items()}
        got: dict[int, list] = {tp.partition: [] for tp in partitions}
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout_s
        while any(len(got[tp.partition]) < limit for tp, limit in limits.items()):
            if time.monotonic() > deadline:
                raise UserError(f"could not sample {topic} within {timeout_s:.0f}s")
            for tp, batch in consumer.poll(timeout_ms=500, max_records=10_000).items():
                room = limits[tp] - len(got[tp.partition])
                got[tp.partition].extend((r.offset, r.value) for r in batch[:max(room, 0)])
                if len(got[tp.partition]) >= limits[tp]:
                    consumer.pause(tp)
        return got
    finally:
        consumer.close()


def snappy_bytes(values: list[bytes], chunk: int = SNAPPY_CHUNK) -> int:
    """The values compressed with snappy in consecutive chunks of at most ``chunk`` bytes (a value
    larger than a chunk makes its own), as a producer compresses each batch."""
    import snappy

    total, buffer = 0, bytearray()
    for value in values:
        if buffer and len(buffer) + len(value) > chunk:
            total += len(snappy.compress(bytes(buffer)))
            buffer.clear()
        buffer += value
    if buffer:
        total += len(snappy.compress(bytes(buffer)))
    return total


@dataclass
class WireSample:
    """What a sample of one output topic shows: sizes, and how many values did not read back."""

    records: int = 0
    value_bytes: int = 0
    snappy_bytes: int = 0
    failures: int = 0
    first_failure: str | None = None
    schema_ids: set[int] = field(default_factory=set)
    decoded: dict[tuple, dict] = field(default_factory=dict)  # (source partition, offset) -> record

    def fail(self, why: str) -> None:
        self.failures += 1
        self.first_failure = self.first_failure or why


def read_sample(by_partition: dict[int, list], fmt: str, reader: IndependentReader | None) -> WireSample:
    """Sizes of the sampled values and each one decoded (JSON with orjson, Avro independently)."""
    import orjson

    sample = WireSample()
    for rows in by_partition.values():
        values = [value for _, value in rows]
        sample.records += len(values)
        sample.value_bytes += sum(len(v) for v in values)
        sample.snappy_bytes += snappy_bytes(values)
        for offset, value in rows:
            try:
                if fmt == "avro":
                    schema_id, record = reader.decode(value)
                    sample.schema_ids.add(schema_id)
                else:
                    record = orjson.loads(value)
            except (ValueError, TypeError, OSError) as exc:
                sample.fail(f"offset {offset}: {exc}")
                continue
            sample.decoded[(record.get("source_partition"), record.get("source_offset"))] = record
    return sample


def content_mismatches(avro: WireSample, plain: WireSample) -> tuple[int, int, str | None]:
    """(records compared, records whose per-event fields differ, the first difference): the Avro
    sample against the JSON run's output for the same input records."""
    compared = differ = 0
    first = None
    for source, record in avro.decoded.items():
        other = plain.decoded.get(source)
        if other is None:
            continue
        compared += 1
        diff = [f for f in PER_EVENT_FIELDS if record.get(f) != other.get(f)]
        if diff:
            differ += 1
            first = first or f"input {source}: {diff[0]} is {record.get(diff[0])!r} in Avro, " \
                             f"{other.get(diff[0])!r} in JSON"
    return compared, differ, first


# --- the step ----------------------------------------------------------------------------------

def format_flags(fmt: str, url: str | None) -> list[str]:
    flags = ["--output-format", fmt]
    return flags + (["--schema-registry-url", url] if fmt == "avro" else [])


def drain_format(bench: Bench, topic: str, fmt: str, url: str | None, round_: int = 0) -> tuple[dict, str]:
    """One drain, 1 thread on kafka-python, writing ``fmt``: its row and its output topic."""
    suffix = f"t1{fmt}" + (f"r{round_ + 1}" if round_ else "")
    rounds = bench.args.avro_rounds
    bench.announce(f"the pipeline, --threads 1 --output-format {fmt}"
                   + (f" (round {round_ + 1} of {rounds})" if rounds > 1 else ""))
    out, dlq = pipeline_topics(bench, suffix)
    group = bench.group(suffix)
    cmd = drain_command(bench, topic, out, dlq, group, *snapshot_topic_flags(bench, suffix),
                        "--threads", "1", *format_flags(fmt, url))
    usage = MachineUsage.start(bench.bootstrap)
    row = python_run(bench, f"pipeline, 1 thread, {fmt.upper()} output", "pipeline",
                     Child(f"pipeline {suffix}", cmd, bench.log_dir), threads=1, processes=1, group=group,
                     client="kafka-python", output_format=fmt)
    row["machine"] = usage.finish(row["cpu_s"])
    check_accounting(bench, row, out, dlq)
    on_disk = log_sizes(bench.bootstrap, [out])[out]
    outputs = row["output_records"]
    row["output_log_bytes_per_record"] = round(on_disk / outputs, 2) if outputs else None
    return row, out


def wire_figures(row: dict, sample: WireSample) -> None:
    """Add a sample's sizes and read-back failures to a drain's row."""
    n = sample.records
    row.update(sampled=n, read_failures=sample.failures, first_read_failure=sample.first_failure,
               value_bytes_per_record=round(sample.value_bytes / n, 2) if n else None,
               snappy_bytes_per_record=round(sample.snappy_bytes / n, 2) if n else None)


def check_avro_sample(row: dict, sample: WireSample, plain: WireSample, registered: int | None) -> None:
    """The Avro run's read-back: every sampled output framed with the registered id and decoded,
    and its per-event fields as in the JSON run's output. Any failure fails the run."""
    compared, differ, first = content_mismatches(sample, plain)
    others = sorted(sample.schema_ids - {registered})
    row.update(registered_schema_id=registered, schema_ids=sorted(sample.schema_ids),
               compared_with_json=compared, content_mismatches=differ, first_content_mismatch=first)
    ok = (registered is not None and sample.failures == 0 and not others and differ == 0
          and sample.records > 0 and compared > 0)
    if registered is None:
        first = "the registry does not know the output's subject (restarted meanwhile?)"
    if not ok:
        row["accounting_ok"] = False
    say(f"      read back {sample.records:,} Avro outputs with fastavro and the schema fetched by the "
        f"frame's id: {sample.failures:,} failed, schema ids {sorted(sample.schema_ids)} (registered: "
        f"{registered}); {compared:,} compared with the JSON run's output, {differ:,} differ"
        + ("" if ok else f"; FAILED: {sample.first_failure or first or f'unexpected ids {others}'}"))


RATIO_KEYS = ("events_per_s", "cpu_s_per_million", "peak_rss_mib", "value_bytes_per_record",
              "snappy_bytes_per_record", "output_log_bytes_per_record")


def format_ratios(plain: dict, avro: dict) -> dict[str, float | None]:
    """Avro over JSON for each figure."""
    return {key: round(avro[key] / plain[key], 3) if avro.get(key) and plain.get(key) else None
            for key in RATIO_KEYS}


def summarize(rows: list[dict]) -> dict:
    """One format's rounds as one row: the first round's, with the medians of events/s and CPU,
    the largest peak RSS, every round's rate, and ok only when every round's accounting is."""
    row = dict(rows[0])
    row.update(events_per_s=median(r["events_per_s"] for r in rows),
               cpu_s_per_million=median(r["cpu_s_per_million"] for r in rows),
               peak_rss_mib=max(r["peak_rss_mib"] for r in rows),
               events_per_s_by_round=[r["events_per_s"] for r in rows],
               accounting_ok=all(r["accounting_ok"] for r in rows), rounds=len(rows))
    return row


def step_avro(bench: Bench, topic: str, registry: BenchRegistry, notes: list[str]) -> dict:
    """JSON and Avro output on the same input (``topic``, already preloaded), ``--avro-rounds``
    times each, taking turns (every other round Avro first); the outputs of the first round sampled
    and read back. The two formats' rows, the ratios, and the registry used. Skipped (with a
    note) when the pipeline or the registry cannot."""
    rounds = bench.args.avro_rounds
    missing = output_format_missing() or (None if registry.url else registry.how)
    if missing:
        bench.announce("the pipeline with JSON output, then with Avro output")
        bench.step += 2 * rounds - 1  # the other drains' announcements, left out with them
        say(f"      skipped: {missing}")
        notes.append(f"Avro against JSON output skipped: {missing}")
        return {"skipped": missing}
    say(f"      schema registry: {registry.how}")
    by_format: dict[str, list[dict]] = {fmt: [] for fmt in FORMATS}
    samples: dict[str, WireSample] = {}
    reader = IndependentReader(registry.url)
    for i in range(rounds):
        for fmt in FORMATS if i % 2 == 0 else FORMATS[::-1]:
            row, out = drain_format(bench, topic, fmt, registry.url, i)
            by_format[fmt].append(row)
            if fmt not in samples:  # the outputs' bytes are the same in every round: one sample
                samples[fmt] = read_back(bench, row, out, fmt, reader, samples.get("json"))
    rows = {fmt: summarize(by_format[fmt]) for fmt in FORMATS}
    ratios = format_ratios(rows["json"], rows["avro"])
    say("      Avro ÷ JSON: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    return {"registry": registry.how, "registry_url": registry.url, "sample_records": SAMPLE_RECORDS,
            "snappy_chunk": SNAPPY_CHUNK, "rounds": rounds, "runs": [rows["json"], rows["avro"]],
            "ratios": ratios}


def read_back(bench: Bench, row: dict, out: str, fmt: str, reader: IndependentReader,
              plain: WireSample | None) -> WireSample:
    """Sample ``out``, add the sizes to ``row`` and check what was read (Avro: against ``plain``,
    the JSON run's sample); a failure fails the run."""
    from loginpipe.serde import subject

    sample = read_sample(sample_values(bench.bootstrap, out, SAMPLE_RECORDS), fmt,
                         reader if fmt == "avro" else None)
    wire_figures(row, sample)
    if fmt == "avro":
        check_avro_sample(row, sample, plain or WireSample(), reader.latest_id(subject(out)))
    elif sample.failures:
        row["accounting_ok"] = False
        say(f"      {sample.failures:,} JSON outputs did not decode: {sample.first_failure}")
    say(f"      {fmt}: {row['value_bytes_per_record']} bytes per value, {row['snappy_bytes_per_record']} "
        f"after snappy ({SNAPPY_CHUNK // 1024} KiB chunks), {row['output_log_bytes_per_record']} per "
        "record in the output log")
    return sample


def step_serializers(bench: Bench, registry: BenchRegistry) -> dict:
    """The serializers' micro-measure (benchmark/serializers.py) in a child, against ``registry``."""
    args = bench.args
    bench.announce(f"serializers: orjson, fastavro and confluent-kafka's AvroSerializer on "
                   f"{args.avro_micro_records:,} processed records")
    cmd = ["serializers", "--records", str(args.avro_micro_records), "--topic", bench.name("micro"),
           "--confluent", args.confluent_serializer, "--seed", str(args.seed)]
    if registry.url:
        cmd += ["--schema-registry-url", registry.url]
    result = Child("serializers", python_child(*cmd), bench.log_dir).wait(600.0).check().result_json()
    for row in result["rows"]:
        say(f"      {row['serializer']}: {row['cpu_us_per_record']:.2f} CPU µs and "
            f"{row['bytes_per_record']:,.1f} bytes per record")
    for note in result["notes"]:
        say(f"      note: {note}")
    return result


def forget_subjects(registry: BenchRegistry, prefix: str) -> None:
    """Delete the subjects this run registered (its topics' names start with ``prefix``): a reused
    registry keeps nothing of the benchmark's."""
    if registry.url is None:
        return
    from loginpipe.registry_client import RegistryError, SchemaRegistryClient

    client = SchemaRegistryClient(registry.url)
    with contextlib.suppress(RegistryError):
        for name in client.subjects():
            if name.startswith(prefix):
                client.delete_subject(name, permanent=True)
