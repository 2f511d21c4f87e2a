"""What a person sees: the compact lines, the live block, log records above it, the choice of view,
and warnings as log records."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import threading
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loginpipe.config import PipelineConfig
from loginpipe.kafka.memory import MemoryBackend, MemoryCluster
from loginpipe.observe import logs
from loginpipe.observe.stats import Snapshot
from loginpipe.observe.terminal import LINE_WIDTH, LineView, LiveView, format_line, make_view, millis
from loginpipe.runtime.app import Application
from loginpipe.runtime.context import Warner
from loginpipe.runtime.processes import own_line_prefix, passed_on
from loginpipe.waiting import wait_until
from tests.unit.test_worker import cluster as cluster
from tests.unit.test_worker import feed

SGR = re.compile(r"\x1b\[[0-9;]*m")  # colours and weights: not what is tested here
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
TYPICAL = Snapshot(time=1_795_000_000.25, elapsed_s=125.0, read=125_348, rate_now=1002.4, rate_avg=998.1,
                   latency_avg_ms=0.75, latency_p99_ms=2.51, e2e_p99_ms=28.2, cpu_percent=22.0,
                   rss_bytes=63 * 2**20, memory_percent=41.0, processed=110_480, filtered=12_207,
                   dead_lettered=77, in_flight=42, published=110_455, lag=42)


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def project_logging() -> Iterator[None]:
    """Leaves the project's logger as it found it."""
    logger = logging.getLogger(logs.ROOT)
    handlers, level, propagate, fmt = list(logger.handlers), logger.level, logger.propagate, logs._format
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate, logs._format = propagate, fmt


# --- compact lines ---------------------------------------------------------------------------------

def test_a_typical_line() -> None:
    assert format_line(TYPICAL) == (
        "2026-11-18T11:06:40.250Z 125,348 msgs | 1,002/s now, 998 avg | lat 0.75/2.5 ms | e2e p99 28 ms | "
        "lag 42 | cpu 22% 63 MiB")


counts = st.integers(min_value=0, max_value=10**12)
durations = st.one_of(st.none(), st.floats(min_value=0, max_value=1e10))


@given(read=counts, lag=counts, dead=counts, txn=counts, now=st.floats(0, 1e9), avg=st.floats(0, 1e9),
       lat=durations, p99=durations, e2e=durations, not_writing=st.floats(0, 1e7), restore=counts,
       exactly_once=st.booleans(), width=st.sampled_from([LINE_WIDTH, LINE_WIDTH - len("[p12] ")]))
def test_a_line_never_passes_its_width_and_keeps_the_essentials(
        read, lag, dead, txn, now, avg, lat, p99, e2e, not_writing, restore, exactly_once, width) -> None:
    snapshot = dataclasses.replace(
        TYPICAL, read=read, lag=lag, dead_lettered=dead, transactions_committed=txn, rate_now=now,
        rate_avg=avg, latency_avg_ms=lat, latency_p99_ms=p99, e2e_p99_ms=e2e, not_writing_s=not_writing,
        restored=restore // 2, to_restore=restore, exactly_once=exactly_once)
    line = format_line(snapshot, width)
    assert len(line) <= width and STAMP.match(line)
    assert f" {read:,} msgs | {now:,.0f}/s now" in line


def test_trouble_is_kept_before_the_details() -> None:
    crowded = dataclasses.replace(TYPICAL, read=123_456_789, lag=98_765_432_109, not_writing_s=42,
                                  restored=1_000_000, to_restore=2_000_000, exactly_once=True)
    line = format_line(crowded)
    assert "not writing for 42s" in line and "restoring 1,000,000/2,000,000" in line
    assert "cpu" not in line and "dlq" not in line  # the least useful make room


def test_durations_are_short_at_any_size() -> None:
    assert [millis(v) for v in (None, 0.754, 2.51, 28.2, 9_999, 42_000, 720_000, 12_600_000, 3e8)] == [
        "–", "0.75 ms", "2.5 ms", "28 ms", "9,999 ms", "42 s", "12 min", "3.5 h", "3.5 d"]


def test_line_view_prints_a_line_per_snapshot() -> None:
    out = io.StringIO()
    view = LineView(out)
    view.show(TYPICAL)
    view.show(dataclasses.replace(TYPICAL, read=125_448))
    assert [line.split(" ", 2)[1] for line in out.getvalue().splitlines()] == ["125,348", "125,448"]


# --- the live block --------------------------------------------------------------------------------

def test_the_live_block_is_redrawn_in_place_with_log_records_above_it(project_logging) -> None:
    screen = Terminal()
    logs.configure("INFO", "text", screen)  # stderr and stdout are the same terminal
    handler = logging.getLogger(logs.ROOT).handlers[-1]
    view = LiveView(screen, "loginpipe · in → out · group g", refresh_per_second=50)
    view.start()
    view.show(TYPICAL)
    view._live.refresh()
    logs.get("runtime").warning("broker at b:9092 unreachable for 5s")
    view.show(dataclasses.replace(TYPICAL, read=222_222, not_writing_s=12))
    view.stop()
    text = SGR.sub("", screen.getvalue())
    assert "\x1b[1A" in text and "\x1b[2K" in text  # the cursor goes back up over the old block
    last_frame = text.rindex("222,222 read")
    assert text.index("WARNING broker at b:9092 unreachable for 5s") < last_frame
    assert "not writing for 12s" in text[last_frame:]
    assert text.rstrip().endswith("\x1b[?25h")  # the cursor is given back
    assert handler.stream is screen  # log records go straight to the terminal again


def test_log_records_to_a_file_stay_in_the_file_while_the_block_is_up(project_logging) -> None:
    screen, log_file = Terminal(), io.StringIO()
    logs.configure("INFO", "text", log_file)
    view = LiveView(screen, "t")
    view.start()
    logs.get("runtime").warning("to the file")
    view.stop()
    assert "to the file" in log_file.getvalue() and "to the file" not in screen.getvalue()


class TopicAuthorizationFailedError(Exception):
    """Named as Kafka's error 29 is: a write refused for good stops the run."""


def test_a_failed_run_finishes_the_block_before_the_summary(cluster: MemoryCluster) -> None:
    feed(cluster, 300)
    cluster.holding = True  # acknowledgements wait, so the refusal finds sends in flight
    screen, err = Terminal(), io.StringIO()
    config = PipelineConfig(connection="memory", summary_topic=None, metrics_topic=None, view="live",
                            stats_every=50)
    app = Application(config, out=screen, err=err, backend=MemoryBackend(cluster), health_every_s=0.1)
    results = []
    thread = threading.Thread(target=lambda: results.append(app.run(install_signals=False)), daemon=True)
    thread.start()
    assert wait_until(lambda: cluster._pending and "300 read" in SGR.sub("", screen.getvalue()), 10)
    cluster.fail_pending(TopicAuthorizationFailedError("[Error 29] TopicAuthorizationFailedError: out"))
    thread.join(timeout=30)
    assert results and results[0].failed
    text = SGR.sub("", screen.getvalue())
    summary = text.index("= summary =")
    assert text.rindex("300 read") < text.rindex("\x1b[?25h") < summary  # last frame, cursor back, summary
    assert "\x1b[1A" not in text[summary:]  # nothing redrawn over the summary
    assert " ERROR   not authorized: writing to " in err.getvalue()


def test_the_view_is_chosen_by_where_stdout_goes() -> None:
    assert isinstance(make_view("auto", Terminal(), "t"), LiveView)
    assert isinstance(make_view("auto", io.StringIO(), "t"), LineView)
    assert isinstance(make_view("auto", Terminal(), "t", show_messages=True), LineView)
    assert isinstance(make_view("lines", Terminal(), "t"), LineView)
    forced = make_view("live", io.StringIO(), "t")
    assert isinstance(forced, LiveView) and forced.console.is_terminal


# --- warnings, and the children of --processes -----------------------------------------------------

def test_warnings_are_log_records_each_at_most_once_in_a_while(caplog: pytest.LogCaptureFixture) -> None:
    warn = Warner(every_s=60)
    with caplog.at_level(logging.WARNING, logger="loginpipe.runtime"):
        warn("broker at kafka-1.example.com:9092 unreachable for 5s")
        warn("broker at kafka-1.example.com:9092 unreachable for 10s")  # the same warning, too soon
        warn("worker-0 has had no partition assignment for 15s")
    assert [(r.levelname, r.name, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "loginpipe.runtime", "broker at kafka-1.example.com:9092 unreachable for 5s"),
        ("WARNING", "loginpipe.runtime", "worker-0 has had no partition assignment for 15s")]


def test_a_childs_json_records_stay_json_and_its_other_lines_get_the_prefix() -> None:
    record = '{"time":"2026-11-24T10:00:00.123Z","level":"WARNING","message":"m"}'
    assert orjson.loads(passed_on(2, record)) == {"time": "2026-11-24T10:00:00.123Z", "level": "WARNING",
                                                   "message": "m", "process": 2}
    assert passed_on(0, "2026-11-24T10:00:00.123Z 100 msgs") == "[p0] 2026-11-24T10:00:00.123Z 100 msgs"
    assert passed_on(1, "{not json") == "[p1] {not json"


def test_a_child_keeps_its_lines_short_enough_for_its_prefix() -> None:
    assert own_line_prefix({"LOGINPIPE_PROCESS_INDEX": "12"}) == "[p12] "
    assert own_line_prefix({}) == ""
