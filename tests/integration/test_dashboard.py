"""Issue 6 against a real broker and a real browser: the dashboard shows the pipeline's own
totals, from one process or several (the state from its partitions' records, each counted once),
survives a broker stop and start, and the Prometheus endpoint counts what the run did."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from loginpipe.core.events import REASONS as DEAD_LETTER_REASONS
from loginpipe.dashboard.feed import DashboardSettings, Feed
from loginpipe.dashboard.view import LIVE, WAITING
from loginpipe.kafka.admin import ensure_topics
from loginpipe.local.broker import LocalBroker, free_port
from loginpipe.local.generator import make_producer
from loginpipe.topics import TopicSpec
from loginpipe.waiting import wait_until
from tests.helpers import (
    ROOT,
    SUMMARY,
    PipelineTopics,
    create_pipeline_topics,
    generated,
    preload,
    run_cli,
    start_consumer,
    summary_counts,
)

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's Chromium, headless, driven by Playwright (which downloads no browser here)."""
    assert CHROMIUM.exists(), "the dashboard test needs Debian's chromium: apt-get install chromium"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking"])
        try:
            yield chromium
        finally:
            chromium.close()


def group() -> str:
    return f"test-group-{uuid.uuid4().hex[:8]}"


def start_dashboard(reaper: list, bootstrap: str, topics: PipelineTopics, group_id: str,
                    log_dir: Path) -> str:
    """The dashboard as a real process; its URL once it answers."""
    port = free_port()
    log = (log_dir / "dashboard.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "loginpipe.dashboard", "--bootstrap-servers", bootstrap,
         "--summary-topic", topics.summary, "--metrics-topic", topics.metrics,
         "--output-topic", topics.output,
         "--group-id", group_id, "--port", str(port), "--refresh", "1"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    reaper.append(proc)

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    assert wait_until(answers, 60), (log_dir / "dashboard.log").read_text()
    return f"http://127.0.0.1:{port}/"


def shown(page) -> dict[str, str]:
    """The page's figures: label -> value, as Streamlit renders st.metric."""
    return page.evaluate("""() => Object.fromEntries(
        [...document.querySelectorAll('[data-testid="stMetric"]')].map(m => [
            m.querySelector('[data-testid="stMetricLabel"]').innerText.trim(),
            m.querySelector('[data-testid="stMetricValue"]').innerText.trim()]))""")


def page_text(page) -> str:
    return page.inner_text("body")


def number(text: str) -> int:
    return int(text.replace(",", ""))


STATE_LINE = re.compile(r"multi-IP users: ([\d,]+)\s+shared devices: ([\d,]+)")


def state_figures(text: str) -> dict[str, str]:
    """The multi-IP users and shared devices of the last summary printed (as the page shows them)."""
    matches = STATE_LINE.findall(text)
    assert matches, text[-2000:]
    users, devices = matches[-1]
    return {"multi-IP users": users, "shared devices": devices}


def test_dashboard_shows_the_pipelines_own_totals(bootstrap: str, topic_name, tmp_path: Path, reaper,
                                                  browser) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name)
    name = group()
    url = start_dashboard(reaper, bootstrap, topics, name, tmp_path)
    page = browser.new_page(viewport={"width": 1500, "height": 3200})
    page.goto(url)
    assert wait_until(lambda: "waiting for the pipeline" in page_text(page), 60), page_text(page)

    proc, out, err = start_consumer(reaper, bootstrap, topics, name, tmp_path, "pipeline", "--quiet",
                                    "--stop-when-idle", "4", "--summary-interval", "1",
                                    "--metrics-interval", "1")
    # A stream over about 8 s rather than one burst, so the page's time series have a shape.
    preload(bootstrap, topics.input, generated(4000, seed=41, bad_ratio=0.05), rate=500)
    assert proc.wait(timeout=120) == 0, err.read_text()
    consumed, processed, filtered, dead = summary_counts(out.read_text())

    def final_figures() -> dict | None:
        figures = shown(page)
        ok = "stopped" in page_text(page) and figures.get("consumed") == f"{consumed:,}"
        return figures if ok else None

    figures = wait_until(final_figures, 60)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert figures, f"{shown(page)}\n{page_text(page)[:2000]}"
    assert (number(figures["consumed"]), number(figures["processed"]), number(figures["filtered"]),
            number(figures["dead-lettered"])) == (consumed, processed, filtered, dead)
    state = state_figures(out.read_text())
    assert {label: figures[label] for label in state} == state
    text = page_text(page)
    assert "state of 8 partitions" in text  # 4 input partitions, 4 repartition partitions
    for heading in ("dead letters by reason", "device type", "app version", "region", "logins by US state",
                    "hour of day (UTC)", "daily", "multi-IP users", "shared devices", "risk levels",
                    "most recent processed records"):
        assert heading in text, heading
    page.close()


def test_dashboard_counts_each_partition_once_across_processes(bootstrap: str, topic_name, tmp_path: Path,
                                                               reaper, browser) -> None:
    """Two processes share the group's partitions, and the one that stops first hands its own to
    the other: the page's state figures are still the group's, as read from the changelogs."""
    topics = create_pipeline_topics(bootstrap, topic_name)
    name = group()
    page = browser.new_page(viewport={"width": 1500, "height": 3200})
    page.goto(start_dashboard(reaper, bootstrap, topics, name, tmp_path))
    proc, out, err = start_consumer(reaper, bootstrap, topics, name, tmp_path, "pipeline",
                                    "--processes", "2", "--stop-when-idle", "4",
                                    "--summary-interval", "1", "--metrics-interval", "1")
    preload(bootstrap, topics.input, generated(4000, seed=42, bad_ratio=0.05), rate=1000)
    assert proc.wait(timeout=180) == 0, err.read_text()
    text = out.read_text()
    group_summary = text[text.index("group summary"):]  # the parent's, from the changelogs
    state = state_figures(group_summary)
    consumed = sum(number(c) for c, *_ in SUMMARY.findall(text))  # each process's own summary

    def final_figures() -> dict | None:
        figures = shown(page)
        ok = ("stopped" in page_text(page) and figures.get("consumed") == f"{consumed:,}"
              and all(figures.get(label) == value for label, value in state.items()))
        return figures if ok else None

    assert wait_until(final_figures, 60), f"{state}, {consumed}: {shown(page)}\n{page_text(page)[:2000]}"
    assert "2 pipeline instances, state of 8 partitions" in page_text(page)
    page.close()


def write_snapshot(bootstrap: str, topic: str, group_id: str, processed: int) -> None:
    """A summary snapshot as the pipeline writes one (enough for the page to be live)."""
    now = time.time()
    snapshot = {"instance": f"{group_id}/test/1", "group_id": group_id, "updated_epoch_s": now,
                "updated_at": "now", "final": False,
                "totals": {"consumed": processed, "processed": processed, "filtered": 0, "dead_lettered": 0}}
    producer = make_producer(bootstrap)
    try:
        producer.send(topic, key=snapshot["instance"].encode(), value=orjson.dumps(snapshot))
        producer.flush()
    finally:
        producer.close()


def test_dashboard_shows_disconnected_and_recovers(tmp_path: Path, kafka_libs: Path, topic_name, reaper,
                                                   browser) -> None:
    broker = LocalBroker(home=tmp_path / "kafka", port=free_port(), controller_port=free_port(),
                         heap_mb=384, libs=kafka_libs)
    broker.start(quiet=True)
    try:
        bootstrap = broker.bootstrap_servers
        topics = create_pipeline_topics(bootstrap, topic_name, partitions=1)
        name = group()
        write_snapshot(bootstrap, topics.summary, name, 1234)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(start_dashboard(reaper, bootstrap, topics, name, tmp_path))
        assert wait_until(lambda: shown(page).get("processed") == "1,234", 60), page_text(page)

        broker.stop()
        assert wait_until(lambda: "disconnected" in page_text(page), 60), page_text(page)
        assert shown(page).get("processed") == "1,234"  # the last figures stay on the page
        broker.start(quiet=True)
        write_snapshot(bootstrap, topics.summary, name, 5678)
        assert wait_until(lambda: shown(page).get("processed") == "5,678", 90), page_text(page)
        assert "disconnected" not in page_text(page)
        page.close()
    finally:
        broker.stop()


# Every series also carries group and instance_id (and le for buckets): only reason is kept.
METRIC_LINE = re.compile(r'^(loginpipe_[a-z_]+)(?:\{[^}]*?(?:reason="([a-z0-9_]+)")?\})? ([0-9.e+]+)$',
                         re.MULTILINE)


def scrape(port: int) -> dict[tuple[str, str], float]:
    """/metrics as {(name, reason): value} ("" when unlabelled); {} while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {(name, reason or ""): float(value) for name, reason, value in METRIC_LINE.findall(text)}


def test_metrics_endpoint_counts_match_the_runs_accounting(bootstrap: str, topic_name, tmp_path: Path,
                                                           reaper) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name)
    records = generated(5000, seed=43, bad_ratio=0.05)
    preload(bootstrap, topics.input, records)
    port = free_port()
    proc, out, err = start_consumer(reaper, bootstrap, topics, group(), tmp_path, "scraped",
                                    "--quiet", "--metrics-port", str(port))

    def drained() -> dict | None:
        metrics = scrape(port)
        return metrics if metrics.get(("loginpipe_records_consumed_total", "")) == len(records) else None

    metrics = wait_until(drained, 90)
    assert metrics, err.read_text()
    consumed = metrics[("loginpipe_records_consumed_total", "")]
    processed = metrics[("loginpipe_records_processed_total", "")]
    filtered = {r: v for (name, r), v in metrics.items() if name == "loginpipe_records_filtered_total"}
    dead = {r: v for (name, r), v in metrics.items() if name == "loginpipe_records_dead_lettered_total"}
    assert consumed == processed + sum(filtered.values()) + sum(dead.values())
    assert set(dead) == set(DEAD_LETTER_REASONS)
    assert metrics[("loginpipe_batch_size_records_sum", "")] == consumed
    assert metrics[("loginpipe_batch_processing_seconds_count", "")] >= 1
    assert ("loginpipe_consumer_lag_records", "") in metrics
    assert metrics[("loginpipe_state_tracked_users", "")] > 0

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0, err.read_text()
    c, p, f, d = summary_counts(out.read_text())
    assert (c, p, f, d) == (consumed, processed, sum(filtered.values()), sum(dead.values()))


def test_feed_waits_for_topics_that_do_not_exist_yet(bootstrap: str, topic_name) -> None:
    summary, metrics, output = topic_name("summary"), topic_name("metrics"), topic_name("out")
    feed = Feed(DashboardSettings(bootstrap, summary, metrics, output, "g")).start()
    try:
        waiting = wait_until(lambda: (v := feed.view()).status == WAITING and "does not exist" in v.error
                             and v, 30)
        assert waiting, feed.view()
        ensure_topics(bootstrap, [TopicSpec(name, "test", 1) for name in (summary, metrics, output)], 1)
        write_snapshot(bootstrap, summary, "g", 42)
        live = wait_until(lambda: (v := feed.view()).status == LIVE and v, 60)
        assert live and live.summary["totals"]["processed"] == 42
    finally:
        feed.stop()


def test_taken_ports_are_one_line_errors(bootstrap: str, topic_name) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name, partitions=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        dashboard = run_cli("-m", "loginpipe.dashboard", "--port", port)
        consumer = run_cli("create_kafka_consumer.py", "--bootstrap-servers", bootstrap, *topics.flags(),
                           "--group-id", topic_name("group"), "--metrics-port", port, "--quiet")
    assert (dashboard.returncode, dashboard.stderr) == (1, f"error: port {port} is taken; choose another "
                                                            "with --port\n")
    assert consumer.returncode == 1
    assert consumer.stderr.startswith(f"error: cannot serve metrics on 127.0.0.1:{port}")
    assert len(consumer.stderr.strip().splitlines()) == 1
