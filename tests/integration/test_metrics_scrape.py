"""/metrics of a real consumer process (``--metrics-port``) against the broker: the end-to-end
latency histogram counts the processed records, and the scrape has build info, the process
collectors, the group and instance_id labels, and no ``_created`` series."""

from __future__ import annotations

import signal
import socket
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from loginpipe.config import PipelineConfig
from loginpipe.local.broker import free_port
from loginpipe.runtime.worker import E2E_SAMPLES_PER_BATCH
from loginpipe.waiting import wait_until
from tests.helpers import create_pipeline_topics, generated, preload, start_consumer

pytestmark = pytest.mark.integration

E2E = "loginpipe_end_to_end_latency_seconds"
# The most records one latency sample stands for (the worker samples a batch's records at a step).
MAX_WEIGHT = PipelineConfig.max_poll_records // E2E_SAMPLES_PER_BATCH


def scrape(port: int) -> tuple[str, dict[str, Sample]] | None:
    """(text, {series name: sample}) of /metrics; None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    found = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return text, {s.name: s for s in found if "reason" not in s.labels and "le" not in s.labels}


def test_a_running_consumer_exports_what_an_sre_expects(bootstrap: str, topic_name, tmp_path: Path,
                                                        reaper) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name, partitions=2)
    records = generated(3000, seed=47, bad_ratio=0.05)
    preload(bootstrap, topics.input, records)
    group, port = f"test-group-{uuid.uuid4().hex[:8]}", free_port()
    proc, _, err = start_consumer(reaper, bootstrap, topics, group, tmp_path, "scraped",
                                  "--quiet", "--metrics-port", str(port))

    def settled() -> tuple[str, dict[str, Sample]] | None:
        """All read and acknowledged, and the device step has timed every processed record."""
        got = scrape(port)
        if got is None:
            return None
        value = {name: s.value for name, s in got[1].items()}
        done = (value.get("loginpipe_records_consumed_total") == len(records)
                and 0 < value["loginpipe_records_processed_total"] <= value[f"{E2E}_count"])
        return got if done else None

    got = wait_until(settled, 90)
    assert got, err.read_text()
    text, series = got
    processed = series["loginpipe_records_processed_total"].value
    batches = series["loginpipe_batch_size_records_count"].value
    # Weighted samples: a batch's count may exceed its records by less than one sample's weight.
    assert series[f"{E2E}_count"].value < processed + batches * MAX_WEIGHT
    assert series[f"{E2E}_sum"].value > 0
    labels = {"group": group, "instance_id": f"{socket.gethostname()}-{proc.pid}"}
    own = [s for name, s in series.items() if name.startswith("loginpipe_")]
    assert len(own) > 10 and all(s.labels.items() >= labels.items() for s in own)
    assert series["loginpipe_build_info"].labels["kafka_client"] == "kafka-python"
    assert series["process_resident_memory_bytes"].value > 0
    assert "_created" not in text

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0, err.read_text()
