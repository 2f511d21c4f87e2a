"""What a person sees while the consumer runs: a status block redrawn in place on a terminal, or
one compact timestamped line per snapshot elsewhere (pipes, files, Docker logs).

The block is drawn by ``rich`` (``rich.live.Live``). Snapshots arrive every ``--stats-every``
messages (or ``--stats-interval`` seconds) from any worker thread and only replace the data; rich's
own thread repaints at most ``REFRESH_PER_SECOND`` times a second, so a busy pipeline does not
spend its CPU repainting. Log records written to the terminal while the block is up go through
rich's console (``logs_through``): they scroll above the block, which stays intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from typing import TextIO

import orjson
from rich.console import Console, Group, RenderableType
from rich.file_proxy import FileProxy
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from loginpipe.observe import logs
from loginpipe.observe.stats import Snapshot

LINE_WIDTH = 120  # a compact line, timestamp included, is never longer
REFRESH_PER_SECOND = 4  # repaints of the block at most (the data changes every 100 messages)
BLOCK_WIDTH = 88  # the block's width at most: it fits 100 columns with room to spare
VIEWS = ("auto", "live", "lines")
MIB = 2**20
NONE = "–"  # a figure with nothing to measure yet


def millis(ms: float | None) -> str:
    """A duration given in ms, short at any size: 0.75 ms, 2.5 ms, 28 ms, 42 s, 12 min, 3.5 h."""
    if ms is None:
        return NONE
    if ms < 10_000:
        return f"{number_ms(ms)} ms"
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def rate(per_second: float | None) -> str:
    """1,002 (per second)."""
    return NONE if per_second is None else f"{per_second:,.0f}"


def number_ms(ms: float | None) -> str:
    """Two or three significant digits: 0.75, 2.5, 28, 1,234."""
    if ms is None:
        return NONE
    return f"{ms:.2f}" if ms < 1 else f"{ms:.1f}" if ms < 10 else f"{ms:,.0f}"


def latency_pair(avg_ms: float | None, p99_ms: float | None) -> str:
    """'0.75/2.5 ms' (avg/p99), or each with its own unit when they are long."""
    if max(avg_ms or 0.0, p99_ms or 0.0) < 10_000:
        return f"{number_ms(avg_ms)}/{number_ms(p99_ms)} ms"
    return f"{millis(avg_ms)}/{millis(p99_ms)}"


def json_line(s: Snapshot) -> str:
    """A snapshot as a JSON log record (--log-format json): every figure, for a log collector,
    and the line's text as its message, for a person reading the collector."""
    text = format_line(s, width=1_000).split(" ", 1)[1]  # every field fits: no room is short
    fields = {name: round(value, 3) if isinstance(value, float) else value
              for name, value in dataclasses.asdict(s).items() if name != "time"}
    return orjson.dumps({"time": logs.timestamp(s.time), "level": "INFO", "logger": "loginpipe.stats",
                         "message": text, **fields}).decode()


def format_line(s: Snapshot, width: int = LINE_WIDTH) -> str:
    """One line of at most ``width`` characters: the timestamp (UTC, as in the log lines), then
    the fields that fit, the most useful first (the others are left out, never cut)."""
    segments: list[tuple[int, str]] = [  # (priority: lower is kept first; text), in display order
        (0, f"{s.read:,} msgs"),
        (0, f"{rate(s.rate_now)}/s now, {s.rate_avg:,.0f} avg"),
        (4, f"lat {latency_pair(s.latency_avg_ms, s.latency_p99_ms)}"),
        (2, f"e2e p99 {millis(s.e2e_p99_ms)}"),
        (3, f"lag {s.lag:,}"),
        (7, f"dlq {s.dead_lettered:,}"),
        (6, f"cpu {s.cpu_percent:.0f}% {s.rss_bytes / MIB:,.0f} MiB"),
    ]
    if s.exactly_once:
        segments.append((5, f"txn {s.transactions_committed:,} ok {s.transactions_aborted:,} aborted"))
    if s.not_writing_s:
        segments.append((1, f"not writing for {s.not_writing_s:.0f}s"))
    if s.to_restore:
        segments.append((1, f"restoring {s.restored:,}/{s.to_restore:,}"))
    stamp = logs.timestamp(s.time)
    # The stamp and a space, then the kept segments with one separator fewer than segments.
    room = width - len(stamp) - 1 + len(" | ")
    kept: set[int] = set()
    for index in sorted(range(len(segments)), key=lambda i: segments[i][0]):
        cost = len(segments[index][1]) + len(" | ")
        if cost <= room:
            kept.add(index)
            room -= cost
    return stamp + " " + " | ".join(text for i, (_, text) in enumerate(segments) if i in kept)


class LineView:
    """Compact lines on ``out``: a pipe, a file, Docker's log; JSON records with ``json``."""

    live = False

    def __init__(self, out: TextIO, width: int = LINE_WIDTH, json: bool = False) -> None:
        self.out = out
        self.width = width
        self.json = json

    def show(self, snapshot: Snapshot) -> None:
        line = json_line(snapshot) if self.json else format_line(snapshot, self.width)
        print(line, file=self.out, flush=True)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def render_block(s: Snapshot | None, title: str) -> RenderableType:
    """The status block: rates, latencies, counts, lag, the process, and any trouble."""
    if s is None:
        return Panel(Text("waiting for the first records...", style="dim"), title=title,
                     title_align="left", width=BLOCK_WIDTH, border_style="blue")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    for _ in range(3):
        grid.add_column(no_wrap=True)
    grid.add_row("throughput", value(rate(s.rate_now), " msg/s now", "bold green"),
                 value(f"{s.rate_avg:,.0f}", " msg/s avg"), value(f"{s.read:,}", " read"))
    grid.add_row("latency", value(millis(s.latency_avg_ms), " avg"), value(millis(s.latency_p99_ms), " p99"),
                 value(millis(s.e2e_p99_ms), " e2e p99", "bold"))
    grid.add_row("records", value(f"{s.processed:,}", " processed"), value(f"{s.filtered:,}", " filtered"),
                 value(f"{s.dead_lettered:,}", " dead-lettered", "yellow" if s.dead_lettered else ""))
    grid.add_row("delivery", value(f"{s.in_flight:,}", " in flight"), value(f"{s.published:,}", " published"),
                 value(f"{s.lag:,}", " lag"))
    grid.add_row("process", value(f"{s.cpu_percent:.0f}%", " cpu"),
                 value(f"{s.rss_bytes / MIB:,.0f}", " MiB rss"),
                 value(f"{s.memory_percent:.0f}%", " system memory"))
    if s.exactly_once:
        grid.add_row("transactions", value(f"{s.transactions_committed:,}", " committed"),
                     value(f"{s.transactions_aborted:,}", " aborted",
                           "yellow" if s.transactions_aborted else ""), "")
    rows: list[RenderableType] = [grid]
    if s.to_restore:
        done = 100 * s.restored / s.to_restore
        rows.append(Text(f"restoring state: {s.restored:,} of {s.to_restore:,} records ({done:.0f}%)",
                         style="yellow"))
    if s.not_writing_s:
        rows.append(Text(f"not writing for {s.not_writing_s:.0f}s: outputs wait for the broker's "
                         "acknowledgement", style="bold red"))
    subtitle = f"running {clock(s.elapsed_s)}"
    return Panel(Group(*rows), title=title, title_align="left", subtitle=subtitle, subtitle_align="right",
                 width=BLOCK_WIDTH, border_style="red" if s.not_writing_s else "blue")


def value(amount: str, unit: str, style: str = "") -> Text:
    """A figure (styled) and its unit (dim)."""
    return Text.assemble((amount, style or "bold"), (unit, "dim"))


def clock(seconds: float) -> str:
    """1:02:03 or 2:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class LiveView:
    """The status block, redrawn in place on ``out`` (a terminal) by rich. ``start`` shows it,
    ``stop`` draws its last frame and leaves it above what follows (the summary). Log records
    meant for the terminal scroll above it meanwhile (``logs_through``)."""

    live = True

    def __init__(self, out: TextIO, title: str, force_terminal: bool = False,
                 refresh_per_second: float = REFRESH_PER_SECOND) -> None:
        # force_terminal: --view live asked for the block on something that is not a terminal
        self.console = Console(file=out, force_terminal=force_terminal or None, highlight=False)
        self.title = title
        self._snapshot: Snapshot | None = None
        self._live = Live(console=self.console, get_renderable=self._render, auto_refresh=True,
                          refresh_per_second=refresh_per_second, redirect_stdout=True, redirect_stderr=True)
        self._logs: contextlib.ExitStack | None = None

    @property
    def out(self) -> TextIO:
        """A stream whose lines are printed above the block (--show-messages)."""
        return FileProxy(self.console, self.console.file)  # type: ignore[return-value]

    def show(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot  # one reference store: rich's thread paints the latest one

    def _render(self) -> RenderableType:
        return render_block(self._snapshot, self.title)

    def start(self) -> None:
        self._logs = contextlib.ExitStack()
        self._logs.enter_context(logs_through(self.console))
        self._live.start(refresh=True)

    def stop(self) -> None:
        """The last frame stays on the screen, the cursor is back, logs go where they went."""
        try:
            self._live.stop()
        finally:
            if self._logs is not None:
                self._logs.close()
                self._logs = None


@contextlib.contextmanager
def logs_through(console: Console) -> Iterator[None]:
    """While the block is up, the project's log handlers that write to a terminal write through
    ``console`` instead, which prints above the block; afterwards they write where they did."""
    swapped: list[tuple[logging.StreamHandler, TextIO]] = []
    for handler in logging.getLogger(logs.ROOT).handlers:
        if isinstance(handler, logging.StreamHandler) and is_terminal(handler.stream):
            original = handler.stream
            handler.setStream(FileProxy(console, original))
            swapped.append((handler, original))
    try:
        yield
    finally:
        for handler, original in swapped:
            handler.setStream(original)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def make_view(mode: str, out: TextIO, title: str, show_messages: bool = False,
              width: int = LINE_WIDTH, json: bool = False) -> LiveView | LineView:
    """``auto``: the live block when ``out`` is a terminal (and records are not printed one by
    one, which would scroll it away), else lines; ``live`` and ``lines`` as asked. Lines are
    JSON records with ``json`` (--log-format json)."""
    if mode == "auto":
        terminal = is_terminal(out) and os.environ.get("TERM") != "dumb"
        mode = "live" if terminal and not show_messages else "lines"
    if mode == "live":
        return LiveView(out, title, force_terminal=not is_terminal(out))
    return LineView(out, width, json)
