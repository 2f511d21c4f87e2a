"""What the consumer prints, against a real broker: a live status block that stays in place under a
pseudo-terminal (Ctrl+C included), compact timestamped lines into a pipe, JSON log records with
--log-format json, and the prefixed lines of --processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path

import orjson

from loginpipe.waiting import wait_until
from tests.helpers import ROOT, create_pipeline_topics, generated, preload, start_consumer, summary_counts

COLUMNS, ROWS = 100, 40
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
SGR = re.compile(r"\x1b\[[0-9;]*m")
TOKENS = re.compile(r"\x1b\[(\??)([0-9;]*)([A-Za-z])|\r|\n|[^\x1b\r\n]")


def group() -> str:
    return f"test-group-{uuid.uuid4().hex[:8]}"


def screen_of(raw: str, columns: int = COLUMNS) -> list[str]:
    """The text a terminal shows once ``raw`` is written to it, enough of one for what rich and
    the log lines use: carriage return, line feed, cursor up, erase line, wrapping at the right
    edge (colours and cursor visibility are ignored)."""
    rows, row, col = [[]], 0, 0
    for match in TOKENS.finditer(raw):
        token = match.group(0)
        if token == "\r":
            col = 0
        elif token == "\n":
            row += 1
        elif match.group(3) == "A":
            row = max(0, row - int(match.group(2) or 1))
        elif match.group(3) == "K":
            rows[row] = []
        elif match.group(3):
            continue
        else:
            if col >= columns:  # the terminal wraps before the character past the edge
                row, col = row + 1, 0
            while len(rows) <= row:
                rows.append([])
            line = rows[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = token
            col += 1
        while len(rows) <= row:
            rows.append([])
    text = ["".join(line).rstrip() for line in rows]
    while text and not text[-1]:
        text.pop()
    return text


class Pty:
    """A pseudo-terminal of COLUMNS x ROWS whose output is collected; the child's controlling
    terminal, so Ctrl+C typed into it is a real SIGINT."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.raw = b""

    def start(self, reaper: list, *args: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        env["TERM"] = "xterm-256color"
        proc = subprocess.Popen(
            [sys.executable, "create_kafka_consumer.py", *args], cwd=ROOT, env=env,
            stdin=self.slave, stdout=self.slave, stderr=self.slave, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        reaper.append(proc)
        os.close(self.slave)
        return proc

    def read(self, timeout_s: float = 0.2) -> str:
        """What arrived so far, as text without colours."""
        if select.select([self.master], [], [], timeout_s)[0]:
            with contextlib.suppress(OSError):  # the child is gone and the terminal closed
                self.raw += os.read(self.master, 1 << 16)
        return SGR.sub("", self.raw.decode("utf-8", "replace"))

    def read_to_end(self, proc: subprocess.Popen, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            before = len(self.raw)
            text = self.read()
            if proc.poll() is not None and len(self.raw) == before:
                return text
        raise AssertionError(f"still running after {timeout_s}s:\n{self.read()[-3000:]}")

    def close(self) -> None:
        os.close(self.master)


def test_a_live_block_stays_in_place_under_a_terminal_and_ctrl_c_leaves_it_clean(
        bootstrap: str, topic_name, reaper) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name)
    preload(bootstrap, topics.input, generated(5000, seed=21))
    pty = Pty()
    try:
        proc = pty.start(reaper, "--bootstrap-servers", bootstrap, "--group-id", group(), *topics.flags())
        frames = lambda: pty.read().count("throughput")  # noqa: E731
        # Every record read, shown in a frame, and a few frames drawn.
        assert wait_until(lambda: "5,000 read" in pty.read() and frames() >= 3, 90), pty.read()[-3000:]
        os.write(pty.master, b"\x03")  # Ctrl+C, typed
        text = pty.read_to_end(proc, 60)
        assert proc.wait() == 0, text[-3000:]
    finally:
        pty.close()
    raw = pty.raw.decode()
    screen = screen_of(raw)
    # Redrawn in place: many frames went out, one block is on the screen, and the cursor went up
    # over the old frame each time rather than scrolling.
    assert text.count("throughput") >= 3 and "\x1b[1A" in raw and "\x1b[2K" in raw
    assert [line for line in screen if "throughput" in line] == [next(line for line in screen if "5,000 read"
                                                                     in line)]
    assert len(screen) < ROWS, "\n".join(screen)

    def row(fragment: str) -> int:
        return next(i for i, line in enumerate(screen) if fragment in line)

    # Log records above the block, the summary below it, the cursor given back.
    assert row(" INFO    consuming ") < row("SIGINT: finishing the batch") < row("throughput")
    assert row("throughput") < row("= summary =")
    assert summary_counts("\n".join(screen))[0] == 5000
    assert raw.rindex("\x1b[?25h") > raw.rindex("\x1b[?25l")


def test_a_pipe_gets_compact_timestamped_lines(bootstrap: str, topic_name, tmp_path: Path, reaper) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name)
    preload(bootstrap, topics.input, generated(2000, seed=22))
    proc, out, err = start_consumer(reaper, bootstrap, topics, group(), tmp_path, "piped", "--stop-when-idle",
                                    "2", "--max-poll-records", "100")
    assert proc.wait(timeout=90) == 0, err.read_text()
    stats = [line for line in out.read_text().splitlines() if STAMP.match(line)]
    assert len(stats) >= 10 and all(len(line) <= 120 for line in stats), "\n".join(stats)
    assert " 2,000 msgs | " in stats[-1] and "/s now, " in stats[-1]
    assert "\x1b" not in out.read_text()  # no escape code in a file
    assert summary_counts(out.read_text())[0] == 2000
    logged = err.read_text().splitlines()
    assert logged and all(STAMP.match(line) for line in logged), logged  # log records, timestamped too
    assert any(" INFO    no records for 2s: stopping" in line for line in logged), logged


def test_json_log_format_makes_every_log_line_and_stats_line_json(
        bootstrap: str, topic_name, tmp_path: Path, reaper) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name)
    preload(bootstrap, topics.input, generated(1000, seed=24))
    proc, out, err = start_consumer(reaper, bootstrap, topics, group(), tmp_path, "json", "--stop-when-idle",
                                    "2", "--log-format", "json")
    assert proc.wait(timeout=90) == 0, err.read_text()
    records = [orjson.loads(line) for line in err.read_text().splitlines()]  # every line is JSON
    assert records and all(STAMP.fullmatch(r["time"] + " ") and r["level"] in ("INFO", "WARNING")
                           for r in records), records
    messages = [r["message"] for r in records]
    assert any(m.startswith(f"consuming {topics.input} at ") for m in messages)
    assert "no records for 2s: stopping" in messages
    # The stats are JSON records with every figure; the final summary stays for a person.
    text = out.read_text()
    stats = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert stats and stats[-1]["read"] == 1000 and stats[-1]["logger"] == "loginpipe.stats"
    assert {"in_flight", "processed", "published", "e2e_p99_ms", "time", "level"} <= set(stats[-1])
    assert summary_counts(text)[0] == 1000


def test_the_lines_of_several_processes_stay_within_the_width(
        bootstrap: str, topic_name, tmp_path: Path, reaper) -> None:
    topics = create_pipeline_topics(bootstrap, topic_name)
    preload(bootstrap, topics.input, generated(2000, seed=23))
    proc, out, err = start_consumer(reaper, bootstrap, topics, group(), tmp_path, "processes", "--processes",
                                    "2", "--stop-when-idle", "3", "--view", "live")
    assert proc.wait(timeout=120) == 0, err.read_text()
    stats = [line for line in out.read_text().splitlines() if re.match(r"\[p[01]\] " + STAMP.pattern, line)]
    assert stats and all(len(line) <= 120 for line in stats), "\n".join(stats)
    assert {line[:4] for line in stats} == {"[p0]", "[p1]"}
    assert "\x1b" not in out.read_text()  # --view live is for a terminal: the children print lines
    assert all(re.match(r"\[p[01]\] " + STAMP.pattern, line) for line in err.read_text().splitlines())
