"""``--processes N``: one command runs N pipeline processes in the same consumer group (Kafka spreads
the partitions over them), passes their output through prefixed ``[p0] ``, ``[p1] ``... (a JSON log
record gets a ``"process"`` field instead, so it stays JSON), stops them together and prints the
group's summary, read from the changelogs, once they have all exited (even with --quiet; not after
a second signal, which asks to exit at once; failing to read it is one warning line, and leaves the
exit code alone).

Each child is this same pipeline with the same flags and environment, except what must differ per
process: ``--processes`` is removed and ``PROCESSES=1`` forced; ``--group-instance-id X`` becomes
``X-p{i}`` (two members with one static id fence each other out); ``--metrics-port P`` becomes
``P+i`` (one port binds once); ``--view`` becomes ``lines`` (their output is a pipe: compact lines,
each kept short enough for its prefix). ``LOGINPIPE_PROCESS_INDEX=i`` tells a child which one it is.

Signals. The pipeline counts signals: the first SIGINT/SIGTERM is a graceful stop (finish the
batch, flush, commit, within ``--shutdown-timeout``), a second exits at once, skipping the commit.
So every child must receive exactly one signal per stop request, however the request came: a
terminal's Ctrl+C (delivered to the whole foreground process group), ``kill -INT <parent>`` or
``kill -TERM <parent>`` (only the parent hears it), ``docker stop`` (PID 1 only). If the children
shared the parent's process group, the parent could not tell whether a child already heard a Ctrl+C,
and forwarding "to be sure" would be that child's second signal: it would exit without committing.
Hence:

* each child runs in its own process group, so only the parent hears the terminal and the parent
  alone decides what each child receives;
* the parent's first SIGINT/SIGTERM is forwarded (the same signal) once to every running child:
  graceful stop; a second is forwarded once more: the children exit at once; a third SIGKILLs them;
* a child that outlives ``--shutdown-timeout`` + 15 s after the stop is SIGKILLed, with one line;
* a child that fails (non-zero exit) while no stop was asked fails the command: the others are
  stopped gracefully (SIGTERM) and the command exits non-zero;
* a child no longer in the terminal's group would outlive a parent killed with SIGKILL: on Linux it
  asks for SIGTERM when its parent dies (``die_with_parent``, PR_SET_PDEATHSIG), a graceful stop.
  Ctrl+Z stops only the parent (the children keep consuming).

A supervisor that signals every process of the service itself (systemd's default
``KillMode=control-group``) gives each child its own signal besides the forwarded one: use
``KillMode=mixed`` so only the parent is signalled.

Exit code: 0 when every child exited 0 (a child killed by the stop signal we sent it, before its
handler was in place, stopped as asked: 0); otherwise the first non-zero code, 1 for a child killed
by any other signal or by our SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

import orjson

from loginpipe.config import PipelineConfig
from loginpipe.errors import UserError

INDEX_ENV = "LOGINPIPE_PROCESS_INDEX"
PARENT_ENV = "LOGINPIPE_PARENT_PID"  # for die_with_parent: the parent may be gone before prctl
KILL_GRACE_S = 15.0  # beyond --shutdown-timeout, before a child that has not exited is killed
POLL_S = 0.1  # the wait loop's tick: how soon a signal is forwarded and a deadline noticed
LAST_LINES_S = 2.0  # a child's output still arriving after its exit (a grandchild holds the pipe)
PR_SET_PDEATHSIG = 1
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# The children run the pipeline's own entry point. Run with -c rather than a script path, with the
# project root on PYTHONPATH (child_env), so it works from any working directory.
CHILD_CODE = ("import sys; from loginpipe.runtime.processes import die_with_parent; die_with_parent(); "
              "from loginpipe.cli import run_cli; from loginpipe.runtime.app import main; "
              "sys.exit(run_cli(main))")

# Options the parent sets per child through their environment twins (flags would win over them),
# each with its shortest abbreviation argparse accepts: one letter less is also a prefix of another
# flag (--processing-guarantee, --group-id, --metrics-topic), which argparse rejects as ambiguous.
PER_CHILD_OPTIONS = {"--processes": "--processe", "--group-instance-id": "--group-in",
                     "--metrics-port": "--metrics-p", "--view": "--v"}

Summary = Callable[[str, str], Mapping[str, Any]]


def line_prefix(index: int) -> str:
    """What the parent puts before each text line of child ``index``."""
    return f"[p{index}] "


def own_line_prefix(environ: Mapping[str, str] | None = None) -> str:
    """The prefix the parent puts before this process's lines ('' when it is no child): a child
    keeps its compact lines that much shorter, so they stay within their width once prefixed."""
    index = (os.environ if environ is None else environ).get(INDEX_ENV, "")
    return line_prefix(int(index)) if index.isdigit() else ""


def passed_on(index: int, line: str) -> str:
    """Child ``index``'s line as the parent prints it: a JSON log record (--log-format json) gains
    ``"process": index`` and stays one JSON object; any other line gets the prefix."""
    if line.startswith("{"):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            entry = None
        if isinstance(entry, dict):
            return orjson.dumps({**entry, "process": index}).decode()
    return line_prefix(index) + line


def default_child_command() -> list[str]:
    return [sys.executable, "-c", CHILD_CODE]


def child_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` without the options set per child (``PER_CHILD_OPTIONS``), in every form argparse
    accepts: ``--opt V``, ``--opt=V`` and unique abbreviations such as ``--proc 4``."""
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        name, equals, _ = arg.partition("=")
        if _set_per_child(name):
            skip_value = not equals  # "--processes 4": the value is the next argument
            continue
        kept.append(arg)
    return kept


def _set_per_child(name: str) -> bool:
    return any(option.startswith(name) and name.startswith(shortest)
               for option, shortest in PER_CHILD_OPTIONS.items())


def child_env(config: PipelineConfig, index: int, environ: Mapping[str, str]) -> dict[str, str]:
    """Child ``index``'s environment: the parent's, plus what differs per child."""
    env = dict(environ)
    env["PROCESSES"] = "1"
    env[INDEX_ENV] = str(index)
    env[PARENT_ENV] = str(os.getpid())
    env["PYTHONUNBUFFERED"] = "1"  # a pipe is block-buffered: lines would reach us in bursts
    env["STATS_VIEW"] = "lines"  # their output goes through our pipes, prefixed: no live block
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), environ.get("PYTHONPATH")]))
    if config.group_instance_id:
        env["GROUP_INSTANCE_ID"] = f"{config.group_instance_id}-p{index}"  # worker j adds "-j"
    if config.metrics_port:
        env["METRICS_PORT"] = str(config.metrics_port + index)
    return env


def die_with_parent() -> None:
    """In a child (Linux): get SIGTERM, a graceful stop, when the parent dies. The child is outside
    the terminal's process group, so without this a parent killed with SIGKILL would leave it
    consuming, out of Ctrl+C's reach. (The kernel means the parent *thread* that started us: the
    parent starts its children from the thread that waits for them.)"""
    parent = os.environ.get(PARENT_ENV)
    if not sys.platform.startswith("linux") or not parent:
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != int(parent):  # it died before the prctl: nobody would stop us
        sys.exit(1)


def render_group_summary(summary: Mapping[str, Any], processes: int) -> str:
    """The group's summary, laid out like a process's own (observe/stats.format_summary)."""
    def top(pairs: Sequence[tuple[str, int]]) -> str:
        return ", ".join(f"{label} ({count:,})" for label, count in pairs) or "-"

    def number(value: Any) -> str:
        return f"{value:,}" if isinstance(value, int) else str(value)

    return "\n".join([
        f"group summary (all {processes} processes, from the changelogs):",
        f"events:           {number(summary['events'])}",
        f"top app versions: {top(summary['top_app_versions'])}",
        f"top locales:      {top(summary['top_locales'])}",
        f"device types:     {top(summary['device_types'])} "
        f"(most common: {summary['most_common_device_type'] or '-'})",
        f"multi-IP users: {number(summary['multi_ip_users'])}   "
        f"shared devices: {number(summary['shared_devices'])}   "
        f"(tracking {number(summary['tracked_users'])} users, {number(summary['tracked_devices'])} devices)",
    ])


def read_group_summary(bootstrap_servers: str, group_id: str) -> Mapping[str, Any]:
    from loginpipe.query import group_summary  # lazily: only the parent of --processes needs it

    return group_summary(bootstrap_servers, group_id)


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes]
    readers: list[threading.Thread] = field(default_factory=list)
    stops: int = 0  # stop signals sent: the pipeline treats the first as graceful, the second as now
    stop_signals: set[int] = field(default_factory=set)
    killed: bool = False
    returncode: int | None = None  # set once its exit is handled

    @property
    def prefix(self) -> str:
        return line_prefix(self.index)


class ProcessGroup:
    """N children of one command: start them, pass their output through, stop them together."""

    def __init__(self, config: PipelineConfig, command: Sequence[str], out: TextIO, err: TextIO,
                 kill_grace_s: float = KILL_GRACE_S) -> None:
        self.config = config
        self.command = list(command)
        self.out = out
        self.err = err
        self.kill_grace_s = kill_grace_s
        self.children: list[Child] = []
        self.exits: queue.Queue[tuple[int, int]] = queue.Queue()
        self.exit_code = 0
        self.level = 0  # stop signals each running child should have had: 0 run, 1 graceful, 2 now
        self.stop_signal = signal.SIGTERM
        self.stopped_at: float | None = None
        self.kill_now = False
        self._write_lock = threading.Lock()
        # Appended to by the signal handler, handled by the wait loop: a handler must not take the
        # output lock (the interrupted main thread may hold it) nor write to a stream it may be in.
        self._signals: list[int] = []
        self._interrupts = 0

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """As if the parent got ``signum``; safe from a signal handler or any thread."""
        self._signals.append(signum)

    def start(self, argv: Sequence[str]) -> None:
        args = child_argv(argv)
        for index in range(self.config.processes):
            try:
                proc = subprocess.Popen([*self.command, *args], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=child_env(self.config, index, os.environ),
                                        process_group=0)  # out of the terminal's reach: module doc
            except OSError as exc:  # the ones started must not be left running
                self.say(self.err, f"error: cannot start process {index}: {exc}")
                self._fail(1)
                return
            child = Child(index, proc)
            self.children.append(child)
            self._watch(child)

    def _watch(self, child: Child) -> None:
        """Reader threads pass each stream through line by line; a waiter reports the exit."""
        for stream, sink in ((child.proc.stdout, self.out), (child.proc.stderr, self.err)):
            reader = threading.Thread(target=self._pump, args=(child, stream, sink), daemon=True,
                                      name=f"p{child.index}-output")
            reader.start()
            child.readers.append(reader)
        threading.Thread(target=lambda: self.exits.put((child.index, child.proc.wait())), daemon=True,
                         name=f"p{child.index}-wait").start()

    def _pump(self, child: Child, stream: IO[bytes], sink: TextIO) -> None:
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.strip():  # a child's blank lines (before "SIGTERM: ...") are noise here
                    self.say(sink, passed_on(child.index, line))

    def say(self, sink: TextIO, line: str) -> None:
        """One whole line, never interleaved with another child's."""
        # The terminal may be gone: keep draining all the same, or a child blocks on a full pipe.
        with self._write_lock, contextlib.suppress(OSError, ValueError):
            print(line, file=sink, flush=True)

    def wait(self) -> int:
        """Until every child has exited; forwards stop requests, kills stuck children. Returns
        the command's exit code."""
        while self._running():
            self._take_signals()
            self._forward_stops()
            self._kill_stuck()
            try:
                index, returncode = self.exits.get(timeout=POLL_S)
            except queue.Empty:
                continue
            self._exited(self.children[index], returncode)
        return self.exit_code

    def _running(self) -> list[Child]:
        return [child for child in self.children if child.returncode is None]

    def _take_signals(self) -> None:
        while self._interrupts < len(self._signals):
            signum = self._signals[self._interrupts]
            self._interrupts += 1
            self._interrupted(signum)

    def _interrupted(self, signum: int) -> None:
        name = signal.Signals(signum).name
        n = len(self._running())
        if self._interrupts == 1 and self.level == 0:
            self.say(self.err, f"\n{name}: stopping the {n} processes (each finishes its batch, flushes, "
                               f"commits: at most {self.config.shutdown_timeout_s:g}s); "
                               "Ctrl+C again to exit at once")
        elif self._interrupts == 1:
            self.say(self.err, f"\n{name}: already stopping; Ctrl+C again to exit at once")
        elif self._interrupts == 2:
            self.say(self.err, f"\n{name} again: telling the {n} processes to exit at once")
        else:
            self.say(self.err, f"\n{name} a third time: killing the {n} processes")
            self.kill_now = True
        self._raise_level(min(self._interrupts, 2), signum)

    def _raise_level(self, level: int, signum: int) -> None:
        if level > self.level:
            self.level = level
            self.stop_signal = signal.Signals(signum)
            if self.stopped_at is None:
                self.stopped_at = time.monotonic()

    def _fail(self, code: int) -> None:
        """A failed child fails the command: keep its code, stop the others gracefully."""
        if self.exit_code == 0:
            self.exit_code = code
        self._raise_level(1, signal.SIGTERM)

    def _forward_stops(self) -> None:
        for child in self._running():
            while child.stops < self.level and not child.killed:
                self._send(child, self.stop_signal)
                child.stops += 1
                child.stop_signals.add(self.stop_signal)

    def _kill_stuck(self) -> None:
        if self.stopped_at is None:
            return
        waited = time.monotonic() - self.stopped_at
        if not self.kill_now and waited < self.config.shutdown_timeout_s + self.kill_grace_s:
            return
        for child in self._running():
            if not child.killed:
                child.killed = True
                self._send(child, signal.SIGKILL)
                if not self.kill_now:
                    self.say(self.err, f"{child.prefix}still running {waited:.0f}s after the stop: killed")

    @staticmethod
    def _send(child: Child, signum: int) -> None:
        # Popen.send_signal skips a child already reaped and ignores one that just exited.
        child.proc.send_signal(signum)

    def _exited(self, child: Child, returncode: int) -> None:
        child.returncode = returncode
        for reader in child.readers:  # its last lines (its error, say) before ours about its exit
            reader.join(timeout=LAST_LINES_S)
        code = self._exit_code(child, returncode)
        how = (f"killed by {signal.Signals(-returncode).name} (exit code {code})" if returncode < 0
               else f"exited with code {code}")
        if returncode < 0 and not code:
            self.say(self.err, f"{child.prefix}stopped by {signal.Signals(-returncode).name} while starting")
        elif code and self.level == 0:
            self.say(self.err, f"{child.prefix}{how}; stopping the other processes")
            self._fail(code)
        elif code:
            if not child.killed:  # we said so when we killed it
                self.say(self.err, f"{child.prefix}{how}")
            self._fail(code)
        elif self.level == 0 and not self.config.quiet:  # on its own, e.g. --stop-when-idle
            self.say(self.out, f"{child.prefix}exited ({len(self._running())} still running)")

    @staticmethod
    def _exit_code(child: Child, returncode: int) -> int:
        if returncode >= 0:
            return returncode
        if -returncode in child.stop_signals and not child.killed:
            return 0  # our stop signal, before the child's handler was in place: stopped as asked
        return 1

    def abandon(self) -> None:
        """The parent itself is failing: stop the children gracefully and wait for them (bounded),
        so that none outlives it, and none gets a second signal from its parent's death."""
        self._raise_level(1, signal.SIGTERM)
        self._forward_stops()
        deadline = time.monotonic() + self.config.shutdown_timeout_s + self.kill_grace_s
        for child in self._running():
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()


def run_processes(config: PipelineConfig, argv: list[str] | None, *,
                  child_command: Sequence[str] | None = None, summary: Summary | None = None,
                  out: TextIO | None = None, err: TextIO | None = None,
                  kill_grace_s: float = KILL_GRACE_S, install_signals: bool = True) -> int:
    """Run ``config.processes`` pipeline processes in the group until they have all exited, then
    print the group's summary. ``argv``: the command's flags (None: ``sys.argv[1:]``). Returns the
    exit code (module doc). ``child_command`` and ``summary`` are replaceable for tests."""
    out, err = out or sys.stdout, err or sys.stderr
    _check_metrics_ports(config)
    group = ProcessGroup(config, child_command or default_child_command(), out, err, kill_grace_s)
    if not config.quiet:
        group.say(out, f"starting {config.processes} processes in group {config.group_id}, "
                       f"each with {config.threads} thread(s); Ctrl+C stops them all")
    previous = _install_handlers(group.request_stop) if install_signals else {}
    try:
        group.start(sys.argv[1:] if argv is None else argv)
        code = group.wait()
    except BaseException:
        group.abandon()
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if group.level < 2:  # "exit at once" was asked: do not wait on the broker for the summary
        _print_group_summary(group, summary or read_group_summary)
    return code


def _check_metrics_ports(config: PipelineConfig) -> None:
    if config.metrics_port and config.metrics_port + config.processes - 1 > 65535:
        raise UserError(f"--metrics-port {config.metrics_port} with --processes {config.processes}: "
                        f"process i serves port {config.metrics_port}+i, past 65535")


def _install_handlers(handler: Callable[[int], None]) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda s, _frame: handler(s))
        if previous[signum] is None:  # installed outside Python: the default is the best guess
            previous[signum] = signal.SIG_DFL
    return previous


def _print_group_summary(group: ProcessGroup, summary: Summary) -> None:
    """Printed even with --quiet: it is the command's final summary. Failing to read it (no broker,
    no changelog, a query bug) costs one line, never the exit code the children earned."""
    config = group.config
    try:
        text = render_group_summary(summary(config.connection, config.group_id), config.processes)
    except Exception as exc:  # any failure: the summary is a report, not the command's result
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        group.say(group.err, f"warning: cannot read the group summary from {config.bootstrap_servers}: "
                             f"{detail}")
        return
    group.say(group.out, text)
