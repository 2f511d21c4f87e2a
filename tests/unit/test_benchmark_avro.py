"""The benchmark's avro step without a broker: the independent reader of framed Avro, the sizes
and checks it derives from a sample, the ratios, the report section, the step counter; and the
serializer micro-measure on real processed records."""

from __future__ import annotations

import io
import json
import re
import signal
from types import SimpleNamespace

import fastavro
import orjson
import pytest
import snappy

from loginpipe.benchmark import avro as bench_avro
from loginpipe.benchmark.avro import (
    IndependentReader,
    WireSample,
    check_avro_sample,
    content_mismatches,
    format_ratios,
    read_sample,
    snappy_bytes,
    summarize,
)
from loginpipe.benchmark.cli import count_announcements, selected_steps, step_list
from loginpipe.benchmark.report import markdown
from loginpipe.benchmark.serializers import measure, processed_records, table
from loginpipe.core import avro

SCHEMA_ID = 7


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return processed_records(300)


@pytest.fixture
def reader(monkeypatch) -> IndependentReader:
    """A reader whose registry knows the output contract as SCHEMA_ID (and nothing else)."""
    reader = IndependentReader("http://registry.invalid/apis/ccompat/v7")
    text = avro.contract_text(avro.OUTPUT_SCHEMA)

    def get(path: str) -> dict:
        if path != f"/schemas/ids/{SCHEMA_ID}":
            raise OSError(f"HTTP 404 for {path}")
        return {"schema": text}

    monkeypatch.setattr(reader, "_get", get)
    return reader


def framed(record: dict, schema_id: int = SCHEMA_ID) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, avro.contract(avro.OUTPUT_SCHEMA), record)
    return b"\x00" + schema_id.to_bytes(4, "big") + out.getvalue()


def test_processed_records_are_real_outputs_that_fit_the_contract(records) -> None:
    assert len(records) == 300
    assert len({(r["source_partition"], r["source_offset"]) for r in records}) == 300
    for record in records[:50]:  # strict: a field the contract lacks, or a wrong type, fails
        assert avro.decode(avro.contract(avro.OUTPUT_SCHEMA),
                           avro.encode(avro.contract(avro.OUTPUT_SCHEMA), record)) == record


def test_independent_reader_decodes_a_frame_and_says_why_not(reader, records) -> None:
    value = framed(records[0])
    assert reader.decode(value) == (SCHEMA_ID, records[0])
    with pytest.raises(ValueError, match="not a Confluent frame"):
        reader.decode(orjson.dumps(records[0]))
    with pytest.raises(ValueError, match=f"schema id {SCHEMA_ID}"):
        reader.decode(value[:-3])  # truncated body
    with pytest.raises(ValueError, match="2 bytes left over"):
        reader.decode(value + b"\x00\x00")
    with pytest.raises(OSError):
        reader.decode(framed(records[0], schema_id=8))  # an id the registry does not know


def test_sample_of_avro_outputs_counts_failures_and_ids(reader, records) -> None:
    values = [framed(r) for r in records[:20]]
    sample = read_sample({0: list(enumerate(values[:10])), 1: list(enumerate(values[10:]))}, "avro", reader)
    assert (sample.records, sample.failures, sample.schema_ids) == (20, 0, {SCHEMA_ID})
    assert sample.value_bytes == sum(len(v) for v in values)
    assert 0 < sample.snappy_bytes < sample.value_bytes
    broken = read_sample({0: [(0, values[0]), (1, values[1][:-2]), (2, b'{"a": 1}')]}, "avro", reader)
    assert (broken.records, broken.failures) == (3, 2)
    assert broken.first_failure.startswith("offset 1: schema id 7")


def test_json_sample_counts_values_that_do_not_decode(records) -> None:
    sample = read_sample({0: [(0, orjson.dumps(records[0])), (1, b"{not json")]}, "json", None)
    assert (sample.records, sample.failures) == (2, 1)
    assert sample.first_failure.startswith("offset 1:")


def test_snappy_bytes_compresses_in_chunks() -> None:
    values = [bytes([i % 251]) * 1000 for i in range(40)]  # 40,000 bytes: three chunks of 16 KiB at most
    chunks = [b"".join(values[i:i + 16]) for i in (0, 16, 32)]
    assert snappy_bytes(values) == sum(len(snappy.compress(c)) for c in chunks)
    assert snappy_bytes(values, chunk=1_000_000) == len(snappy.compress(b"".join(values)))
    assert snappy_bytes([]) == 0


def test_content_compared_on_per_event_fields_only(records) -> None:
    plain, avro_sample = WireSample(), WireSample()
    for r in records[:5]:
        key = (r["source_partition"], r["source_offset"])
        plain.decoded[key] = r
        # counts and processing times differ between two drains: not compared
        avro_sample.decoded[key] = {**r, "total_logins_for_version": -1, "processed_timestamp": "x"}
    assert content_mismatches(avro_sample, plain) == (5, 0, None)
    first = next(iter(avro_sample.decoded))
    avro_sample.decoded[first] = {**avro_sample.decoded[first], "ip": "10.9.9.9"}
    compared, differ, why = content_mismatches(avro_sample, plain)
    assert (compared, differ) == (5, 1)
    assert why.startswith(f"input {first}: ip is '10.9.9.9' in Avro")


def test_avro_sample_check_fails_the_run_on_any_fault(reader, records) -> None:
    plain = read_sample({0: [(i, orjson.dumps(r)) for i, r in enumerate(records[:10])]}, "json", None)
    good = read_sample({0: [(i, framed(r)) for i, r in enumerate(records[:10])]}, "avro", reader)
    row = {"accounting_ok": True}
    check_avro_sample(row, good, plain, registered=SCHEMA_ID)
    assert row["accounting_ok"] and row["compared_with_json"] == 10 and row["content_mismatches"] == 0
    row = {"accounting_ok": True}
    check_avro_sample(row, good, plain, registered=SCHEMA_ID + 1)  # framed with an id not the subject's
    assert row["accounting_ok"] is False
    bad = read_sample({0: [(0, framed(records[0])[:-1])]}, "avro", reader)
    row = {"accounting_ok": True}
    check_avro_sample(row, bad, plain, registered=SCHEMA_ID)
    assert row["accounting_ok"] is False
    row = {"accounting_ok": True}
    check_avro_sample(row, good, WireSample(), registered=SCHEMA_ID)  # nothing to compare with
    assert row["accounting_ok"] is False
    row = {"accounting_ok": True}
    check_avro_sample(row, good, plain, registered=None)  # the registry forgot the subject
    assert row["accounting_ok"] is False


def test_rounds_are_summarized_as_medians_and_fail_together() -> None:
    rows = [{"events_per_s": rate, "cpu_s_per_million": cpu, "peak_rss_mib": rss, "accounting_ok": ok}
            for rate, cpu, rss, ok in ((100.0, 9.0, 50.0, True), (300.0, 7.0, 70.0, True),
                                       (200.0, 8.0, 60.0, False))]
    row = summarize(rows)
    assert (row["events_per_s"], row["cpu_s_per_million"], row["peak_rss_mib"]) == (200.0, 8.0, 70.0)
    assert row["events_per_s_by_round"] == [100.0, 300.0, 200.0] and row["rounds"] == 3
    assert row["accounting_ok"] is False
    assert summarize(rows[:2])["accounting_ok"] is True


def avro_rows() -> list[dict]:
    base = {"consumed": 1000, "processed": 880, "filtered": 100, "dead_lettered": 20, "output_records": 880,
            "accounting_ok": True, "sampled": 880, "read_failures": 0}
    plain = {**base, "label": "pipeline, 1 thread, JSON output", "output_format": "json",
             "events_per_s": 10_000.0, "cpu_s_per_million": 100.0, "peak_rss_mib": 150.0,
             "value_bytes_per_record": 850.0, "snappy_bytes_per_record": 190.0,
             "output_log_bytes_per_record": 185.0}
    avro_row = {**base, "label": "pipeline, 1 thread, AVRO output", "output_format": "avro",
                "events_per_s": 9_000.0, "cpu_s_per_million": 110.0, "peak_rss_mib": 150.0,
                "value_bytes_per_record": 212.5, "snappy_bytes_per_record": 95.0,
                "output_log_bytes_per_record": None, "schema_ids": [3], "registered_schema_id": 3,
                "compared_with_json": 880, "content_mismatches": 0}
    return [plain, avro_row]


def test_ratios_are_avro_over_json_and_none_when_a_figure_is_missing() -> None:
    plain, avro_row = avro_rows()
    ratios = format_ratios(plain, avro_row)
    assert ratios["events_per_s"] == 0.9
    assert ratios["cpu_s_per_million"] == 1.1
    assert ratios["value_bytes_per_record"] == 0.25
    assert ratios["snappy_bytes_per_record"] == 0.5
    assert ratios["output_log_bytes_per_record"] is None


def report_with(avro_part: dict) -> dict:
    machine = {"cpu_model": "cpu", "cores": 2, "memory_gib": 4, "python": "CPython", "kafka": "4",
               "kafka_python": "3", "java": "17", "git": "abc", "load_average_at_start": [1.0, 1.0, 1.0],
               "load_average_at_end": [1.0, 1.0, 1.0]}
    return {"run_id": "r", "machine": machine, "partial": True, "steps": ["avro"], "runs": [], "notes": [],
            "settings": {"events": 1000, "partitions": 4}, "duration_s": 60.0, "avro": avro_part,
            "preload": {"events_per_s": 1.0, "value_bytes": 1}}


def test_report_section_shows_both_runs_ratios_and_read_back(records) -> None:
    plain, avro_row = avro_rows()
    micro = {"records": 300, "rounds": 3, "notes": [], "same_as_ours": {},
             "rows": [{"serializer": "orjson.dumps (the JSON output)", "cpu_us_per_record": 0.8,
                       "bytes_per_record": 850.0}]}
    text = markdown(report_with({"registry": "reg", "sample_records": 20_000, "snappy_chunk": 16384,
                                 "runs": [plain, avro_row], "ratios": format_ratios(plain, avro_row),
                                 "serializers": micro}))
    assert "## Avro output against JSON output" in text
    assert "| json | 10,000 | 100.0 | 150 | 850.0 | 190.0 | 185.0 | ok |" in text
    assert "| avro | 9,000 | 110.0 | 150 | 212.5 | 95.0 |  | ok |" in text
    assert "| Avro ÷ JSON | 0.90 | 1.10 | 1.00 | 0.25 | 0.50 |  | |" in text
    assert "880 outputs, 0 failed; schema ids [3]" in text
    assert "Events/s by round" not in text  # one round
    assert "| orjson.dumps (the JSON output) | 0.80 | 850.0 |" in text
    assert "## Throughput" not in text  # --only avro: no empty throughput table
    skipped = markdown(report_with({"skipped": "no local schema registry: 'mvn' is not installed"}))
    assert "Skipped: no local schema registry: 'mvn' is not installed." in skipped


def test_avro_is_a_step_of_its_own() -> None:
    assert step_list("avro") == ["avro"]
    base = {"threads_list": [1, 2], "processes": 2, "with_confluent": False, "restore_users": 0,
            "only": None, "skip": [], "avro_rounds": 1}
    args = SimpleNamespace(**base)
    assert "avro" in selected_steps(args)
    assert count_announcements(args, ["avro"]) == 4  # preload, JSON drain, Avro drain, serializers
    assert count_announcements(args, ["throughput", "avro"]) == count_announcements(args, ["throughput"]) + 3
    assert count_announcements(SimpleNamespace(**{**base, "avro_rounds": 3}), ["avro"]) == 8


def test_micro_measure_without_a_registry_times_orjson_and_fastavro(records) -> None:
    result = measure(records, None, "unused")
    names = [row["serializer"] for row in result["rows"]]
    assert names == ["orjson.dumps (the JSON output)", "fastavro schemaless_writer"]
    sizes = {row["serializer"]: row["bytes_per_record"] for row in result["rows"]}
    assert sizes["fastavro schemaless_writer"] < sizes["orjson.dumps (the JSON output)"]
    assert sizes["orjson.dumps (the JSON output)"] == round(
        sum(len(orjson.dumps(r)) for r in records) / len(records), 1)
    assert all(row["cpu_us_per_record"] > 0 for row in result["rows"])
    assert result["notes"] == ["no schema registry: the framed Avro serializers left out"]
    assert "| fastavro schemaless_writer |" in "\n".join(table(result))
    json.dumps(result)  # goes into the report's JSON as it is


def test_registry_is_skipped_with_one_line_when_it_cannot_be_built(monkeypatch, tmp_path) -> None:
    from loginpipe.errors import UserError
    from loginpipe.local import registry

    def no_maven(home, quiet=False):
        raise UserError("'mvn' is not installed (or not on PATH): it is needed once, to build it\nmore")

    monkeypatch.setattr(registry, "DEFAULT_PORT", 1)  # nothing answers there: no registry to reuse
    monkeypatch.setattr(registry, "ensure_built", no_maven)
    with bench_avro.bench_registry(None, tmp_path) as found:
        assert found.url is None
        assert found.how == "no local schema registry: 'mvn' is not installed (or not on PATH): it is " \
                            "needed once, to build it"


def test_a_given_registry_that_does_not_answer_is_a_user_error(tmp_path) -> None:
    from loginpipe.errors import UserError

    with pytest.raises(UserError, match=re.escape("no schema registry answers at http://127.0.0.1:1/x")), \
            bench_avro.bench_registry("http://127.0.0.1:1/x", tmp_path):
        pass


def test_a_registry_given_to_the_bench_is_checked_before_any_run(tmp_path) -> None:
    from loginpipe.benchmark.cli import main
    from loginpipe.errors import UserError

    handler = signal.getsignal(signal.SIGTERM)  # the bench installs its own: put it back after
    try:
        with pytest.raises(UserError, match="no schema registry answers at"):
            main(["--only", "avro", "--schema-registry-url", "http://127.0.0.1:1/x", "--out-dir",
                  str(tmp_path)])
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert not (tmp_path / "logs").exists()  # nothing started: not even the run's log folder
