"""--processes N (runtime/processes.py) with small fake children: no broker. Synchronization waits
on output lines with deadlines; fake children give up on their own (alarm) if a test goes wrong."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from loginpipe.config import PipelineConfig, build_pipeline_parser
from loginpipe.errors import UserError
from loginpipe.runtime.processes import (
    INDEX_ENV,
    PARENT_ENV,
    PER_CHILD_OPTIONS,
    child_argv,
    child_env,
    run_processes,
)

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 20.0

# Prelude of every fake child: its index, and an alarm so that it never outlives a failed test.
PRELUDE = "import os, signal, sys\ni = int(os.environ['LOGINPIPE_PROCESS_INDEX'])\nsignal.alarm(30)\n"
# Prints "ready", then exits 0 on SIGTERM, saying so.
STOPS_ON_SIGTERM = PRELUDE + """
def stop(signum, frame):
    print(f"{i} stopping on {signal.Signals(signum).name}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    signal.pause()
"""


class Sink:
    """A thread-safe text stream whose lines a test can wait for."""

    def __init__(self) -> None:
        self.text = ""
        self.changed = threading.Condition()

    def write(self, text: str) -> int:
        with self.changed:
            self.text += text
            self.changed.notify_all()
        return len(text)

    def flush(self) -> None:
        pass

    def lines(self) -> list[str]:
        with self.changed:
            return self.text.splitlines()

    def wait_for(self, *lines: str, timeout_s: float = WAIT_S) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: all(line in self.text.splitlines() for line in lines),
                                         timeout_s)


def fake(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def config(processes: int = 2, **changes) -> PipelineConfig:
    return PipelineConfig(processes=processes, connection="broker:9092", group_id="g", **changes)


def no_summary(bootstrap: str, group: str) -> dict:
    raise UserError("no summary in this test")


def signal_parent_after(sink: Sink, *steps: tuple[str, ...]) -> threading.Thread:
    """SIGTERM this process once each step's lines are out; nothing when they never come (the fake
    children's alarm then ends the run, and the test fails on its output)."""
    def run() -> None:
        for lines in steps:
            if not sink.wait_for(*lines):
                return
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def run(code: str, cfg: PipelineConfig | None = None, argv: list[str] | None = None,
        summary=no_summary, **kwargs) -> tuple[int, Sink, Sink]:
    out, err = Sink(), Sink()
    kwargs.setdefault("install_signals", False)
    code_ = run_processes(cfg or config(), argv or [], child_command=fake(code), summary=summary,
                          out=out, err=err, **kwargs)
    return code_, out, err


# --- child argv and environment -------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--processes", "4", "--threads", "2"],
    ["--threads", "2", "--processes=4"],
    ["--processe", "4", "--threads", "2"],
    ["--processe=4", "--threads", "2"],
])
def test_processes_is_removed_from_the_child_argv(argv: list[str]) -> None:
    assert child_argv(argv) == ["--threads", "2"]


def test_other_flags_and_values_stay() -> None:
    argv = ["--privacy", "--group-id", "processes", "--group-id=--processes", "--metrics-topic", "m",
            "--quiet"]
    assert child_argv(argv) == argv


def test_per_child_flags_are_removed() -> None:
    argv = ["--group-instance-id", "x", "--metrics-port=9100", "--group-in", "y", "--metrics-p", "1"]
    assert child_argv(argv) == []


def test_the_shortest_abbreviations_are_the_ones_argparse_accepts() -> None:
    """One letter less would also abbreviate another flag: the stripping must keep up with new flags."""
    options = [s for action in build_pipeline_parser()._actions for s in action.option_strings]
    for option, shortest in PER_CHILD_OPTIONS.items():
        assert [o for o in options if o.startswith(shortest)] == [option]
        assert len([o for o in options if o.startswith(shortest[:-1])]) > 1


def test_child_env_forces_one_process_and_numbers_the_children() -> None:
    env = child_env(config(3), 2, {"PROCESSES": "3", "THREADS": "2", "PYTHONPATH": "/x"})
    assert env["PROCESSES"] == "1" and env[INDEX_ENV] == "2" and env["THREADS"] == "2"
    assert env[PARENT_ENV] == str(os.getpid())
    assert env["PYTHONPATH"] == f"{ROOT}{os.pathsep}/x"
    assert "GROUP_INSTANCE_ID" not in env and "METRICS_PORT" not in env


def test_static_ids_and_metrics_ports_differ_per_child() -> None:
    env = child_env(config(3, group_instance_id="host", metrics_port=9100), 2, {})
    assert env["GROUP_INSTANCE_ID"] == "host-p2" and env["METRICS_PORT"] == "9102"


def test_metrics_ports_past_the_last_one_are_refused() -> None:
    with pytest.raises(UserError, match="65535"):
        run("", config(3, metrics_port=65534))


def test_children_get_the_flags_without_processes() -> None:
    code = PRELUDE + "print(sys.argv[1:], os.environ['PROCESSES'], flush=True)"
    exit_code, out, _ = run(code, argv=["--threads", "2", "--processes", "2"])
    assert exit_code == 0
    assert "[p0] ['--threads', '2'] 1" in out.lines() and "[p1] ['--threads', '2'] 1" in out.lines()


# --- output, stops, exit codes --------------------------------------------------------------------

def test_output_lines_are_prefixed_per_child() -> None:
    code = PRELUDE + "print(f'out {i}'); print(); print(f'err {i}', file=sys.stderr)"
    exit_code, out, err = run(code)
    assert exit_code == 0
    assert {"[p0] out 0", "[p1] out 1"} <= set(out.lines())
    assert {"[p0] err 0", "[p1] err 1"} <= set(err.lines())
    assert "[p0] " not in out.lines()  # blank lines are dropped


def test_sigterm_to_the_parent_stops_every_child_gracefully() -> None:
    out, err = Sink(), Sink()
    signal_parent_after(out, ("[p0] ready", "[p1] ready"))
    exit_code = run_processes(config(), [], child_command=fake(STOPS_ON_SIGTERM), summary=no_summary,
                              out=out, err=err)
    assert exit_code == 0
    assert {"[p0] 0 stopping on SIGTERM", "[p1] 1 stopping on SIGTERM"} <= set(out.lines())
    assert any(line.startswith("SIGTERM: stopping the 2 processes") for line in err.lines())
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


def test_a_second_signal_makes_the_children_exit_at_once() -> None:
    code = PRELUDE + """
stops = 0
def stop(signum, frame):
    global stops
    stops += 1
    if stops == 1:
        print("graceful", flush=True)
    else:
        print("at once", flush=True)
        os._exit(130)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    signal.pause()
"""
    both = Sink()  # one stream: the order of the parent's and the children's lines shows
    calls: list[str] = []
    signal_parent_after(both, ("[p0] ready", "[p1] ready"), ("[p0] graceful", "[p1] graceful"))
    exit_code = run_processes(config(), [], child_command=fake(code), out=both, err=both,
                              summary=lambda b, g: calls.append(g) or {})
    assert exit_code == 130
    lines = both.lines()
    again = next(n for n, line in enumerate(lines) if line.startswith("SIGTERM again"))
    # Each child got exactly one signal per signal to the parent.
    assert lines.index("[p0] at once") > again and lines.index("[p1] at once") > again
    assert calls == []  # "exit at once" does not wait on the broker for the summary


def test_a_child_killed_by_the_stop_before_its_handler_counts_as_stopped() -> None:
    code = PRELUDE + "print('ready', flush=True)\nwhile True:\n    signal.pause()\n"
    out, err = Sink(), Sink()
    signal_parent_after(out, ("[p0] ready", "[p1] ready"))
    exit_code = run_processes(config(), [], child_command=fake(code), summary=no_summary,
                              out=out, err=err)
    assert exit_code == 0
    assert {"[p0] stopped by SIGTERM while starting", "[p1] stopped by SIGTERM while starting"} <= set(
        err.lines())


def test_a_failing_child_stops_the_others_and_fails_the_command(tmp_path: Path) -> None:
    # Child 1 fails once child 0 is ready (its handler in place): they meet at a FIFO, whose
    # opening blocks until both ends are open (the children's alarm bounds the wait).
    ready = tmp_path / "ready"
    os.mkfifo(ready)
    code = STOPS_ON_SIGTERM.replace('print("ready", flush=True)', f"""print("ready", flush=True)
if i == 0:
    open({str(ready)!r}, "w").close()
else:
    open({str(ready)!r}).read()
    print("last words", file=sys.stderr)
    sys.exit(3)""")
    exit_code, out, err = run(code)
    assert exit_code == 3
    lines = err.lines()
    exited = lines.index("[p1] exited with code 3; stopping the other processes")
    assert lines.index("[p1] last words") < exited  # the child's last lines come first
    assert "[p0] 0 stopping on SIGTERM" in out.lines()


def test_a_child_killed_by_a_signal_we_did_not_send_fails_the_command() -> None:
    code = STOPS_ON_SIGTERM.replace('print("ready", flush=True)',
                                    'print("ready", flush=True)\nif i == 1:\n    os.kill(os.getpid(), 9)')
    exit_code, _, err = run(code)
    assert exit_code == 1
    assert "[p1] killed by SIGKILL (exit code 1); stopping the other processes" in err.lines()


def test_a_child_stuck_at_shutdown_is_killed_after_the_timeout() -> None:
    code = STOPS_ON_SIGTERM.replace("signal.signal(signal.SIGTERM, stop)",
                                    "signal.signal(signal.SIGTERM, signal.SIG_IGN if i == 0 else stop)")
    out, err = Sink(), Sink()
    signal_parent_after(out, ("[p0] ready", "[p1] ready"))
    exit_code = run_processes(config(shutdown_timeout_s=0.2), [], child_command=fake(code),
                              summary=no_summary, out=out, err=err, kill_grace_s=0.0)
    assert exit_code == 1
    assert [line for line in err.lines() if line.startswith("[p0] still running")]
    assert "[p1] 1 stopping on SIGTERM" in out.lines()


# --- the group summary ----------------------------------------------------------------------------

SUMMARY = {"events": 1234, "top_app_versions": [("2.4.0", 700), ("2.3.0", 500)],
           "top_locales": [("en_US", 900)], "device_types": [("android", 800), ("ios", 434)],
           "most_common_device_type": "android", "multi_ip_users": 12, "shared_devices": 3,
           "tracked_users": 1000, "tracked_devices": 1100}


def test_the_group_summary_is_read_once_after_every_child_exited() -> None:
    out = Sink()
    calls: list[tuple[str, str, list[str]]] = []

    def summary(bootstrap: str, group: str) -> dict:
        calls.append((bootstrap, group, out.lines()))
        return SUMMARY

    code = PRELUDE + "print(f'bye {i}')"
    exit_code = run_processes(config(quiet=True), [], child_command=fake(code), summary=summary,
                              out=out, err=Sink(), install_signals=False)
    assert exit_code == 0
    assert len(calls) == 1
    bootstrap, group, lines_then = calls[0]
    assert (str(bootstrap), group) == ("broker:9092", "g")
    assert {"[p0] bye 0", "[p1] bye 1"} <= set(lines_then)
    lines = out.lines()
    start = lines.index("group summary (all 2 processes, from the changelogs):")  # even with --quiet
    assert lines[start + 1:start + 3] == ["events:           1,234",
                                          "top app versions: 2.4.0 (700), 2.3.0 (500)"]
    assert "device types:     android (800), ios (434) (most common: android)" in lines
    assert any(line.startswith("multi-IP users: 12   shared devices: 3") for line in lines)


@pytest.mark.parametrize("child_exit", [0, 2])
def test_a_failing_summary_is_one_warning_line_and_keeps_the_exit_code(child_exit: int) -> None:
    def summary(bootstrap: str, group: str) -> dict:
        raise UserError("broker gone\nmore detail")

    code = PRELUDE + f"sys.exit({child_exit} if i == 1 else 0)"
    exit_code, out, err = run(code, summary=summary)
    assert exit_code == child_exit
    warnings = [line for line in err.lines() if "summary" in line]
    assert warnings == ["warning: cannot read the group summary from broker:9092: broker gone"]
    assert not [line for line in out.lines() if line.startswith("group summary")]


# --- a child outlives no parent -------------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_gets_sigterm_when_its_parent_dies() -> None:
    grandchild = ("import signal; signal.alarm(30); from loginpipe.runtime.processes import "
                  "die_with_parent; die_with_parent(); print('ready', flush=True); signal.pause()")
    parent = ("import os, signal, subprocess, sys; "
              f"env = dict(os.environ, {PARENT_ENV}=str(os.getpid())); "
              f"subprocess.Popen([sys.executable, '-c', {grandchild!r}], env=env); signal.pause()")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout.readline() == b"ready\n"  # the grandchild's: its stdout is the same pipe
        proc.kill()
        proc.wait(timeout=WAIT_S)
        # The pipe ends when the grandchild, its last writer, is gone too.
        readable, _, _ = select.select([proc.stdout], [], [], WAIT_S)
        assert readable and proc.stdout.read() == b""
    finally:
        proc.kill()
        proc.stdout.close()
