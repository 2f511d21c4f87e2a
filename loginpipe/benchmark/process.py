"""Child processes of the benchmark's steps: output to files, CPU seconds and peak RSS from wait4(2)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from loginpipe.benchmark.common import RESULT_PREFIX, say
from loginpipe.errors import UserError
from loginpipe.local.broker import PROJECT_ROOT
from loginpipe.waiting import wait_until


@dataclass
class ChildResult:
    name: str
    returncode: int
    wall_s: float
    cpu_s: float  # user + system
    peak_rss_kib: int  # ru_maxrss: KiB on Linux
    out_path: Path
    err_path: Path

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def tail(self, lines: int = 15) -> str:
        text = (self.stdout + self.stderr).strip().splitlines()
        return "\n".join(text[-lines:]) or "(no output)"

    def check(self) -> ChildResult:
        if self.returncode != 0:
            raise UserError(f"{self.name} exited with code {self.returncode}; output tail:\n{self.tail()}")
        return self

    def result_json(self) -> dict:
        """The last ``BENCH-RESULT {json}`` line that one of our own subcommands printed."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])
        raise UserError(f"{self.name} printed no result; output tail:\n{self.tail()}")


_LIVE: set[Child] = set()  # children still running, stopped on the way out


def child_env(code: Path) -> dict[str, str]:
    """This environment with ``code`` first on the import path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(code), os.environ.get("PYTHONPATH", "")) if p)}


class Child:
    """One child process of a benchmark step."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, code: Path = PROJECT_ROOT,
                 stdin_path: Path | None = None) -> None:
        """Start ``cmd`` in ``code`` (a copy of the project: this one, or another version's),
        with ``code`` first on the import path, so it imports that copy's ``loginpipe``; its
        standard input is ``stdin_path``, or nothing."""
        self.name = name
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        self.out_path = log_dir / f"{slug}.out"
        self.err_path = log_dir / f"{slug}.err"
        given = stdin_path.open("rb") if stdin_path else contextlib.nullcontext(subprocess.DEVNULL)
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err, given as stdin:
            self.proc = subprocess.Popen(cmd, cwd=code, stdout=out, stderr=err,
                                         stdin=stdin, env=child_env(code))
        self.started = time.monotonic()
        self.result: ChildResult | None = None
        self._shown = ""
        _LIVE.add(self)

    def poll(self) -> ChildResult | None:
        """The result once the process has exited (reaping it), else None."""
        if self.result is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid == 0:
                return None
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            self.result = ChildResult(self.name, self.proc.returncode, time.monotonic() - self.started,
                                      usage.ru_utime + usage.ru_stime, usage.ru_maxrss,
                                      self.out_path, self.err_path)
            _LIVE.discard(self)
        return self.result

    def wait(self, timeout_s: float, progress_every_s: float = 10.0) -> ChildResult:
        """Wait for the exit; echo the child's latest progress line now and then."""
        deadline = time.monotonic() + timeout_s
        next_progress = time.monotonic() + progress_every_s
        while (result := self.poll()) is None:
            now = time.monotonic()
            if now >= deadline:
                stopped = self.stop()
                raise UserError(f"{self.name} did not finish within {timeout_s:.0f}s; output tail:\n"
                                f"{stopped.tail() if stopped else '(still running)'}")
            if progress_every_s and now >= next_progress:
                next_progress = now + progress_every_s
                self._show_progress()
            time.sleep(0.05)
        return result

    def _show_progress(self) -> None:
        with contextlib.suppress(OSError):
            lines = [x for x in self.err_path.read_text(errors="replace").splitlines() if x.strip()]
            if lines and lines[-1] != self._shown:
                self._shown = lines[-1]
                say(f"      {self._shown.strip()}")

    def stop(self, grace_s: float = 15.0) -> ChildResult | None:
        """SIGTERM (a clean stop for our commands), SIGKILL after ``grace_s``."""
        if self.poll() is not None:
            return self.result
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        if wait_until(self.poll, grace_s, interval_s=0.05) is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            wait_until(self.poll, 5.0, interval_s=0.05)
        return self.result


def stop_live_children(grace_s: float = 10.0) -> None:
    """Stop every child still running."""
    live = list(_LIVE)
    if live:  # after Ctrl+C they got the signal too: let them finish their clean stop first
        wait_until(lambda: all(child.poll() for child in live), 5.0, interval_s=0.05)
    for child in list(_LIVE):
        child.stop(grace_s=grace_s)


# --- the machine around a run ------------------------------------------------------------------

def listening_pid(bootstrap: str) -> int | None:
    """The local process listening on the first bootstrap address's port (the broker), if any."""
    import psutil

    try:
        port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
        connections = psutil.net_connections(kind="tcp")
    except (IndexError, ValueError, psutil.Error):
        return None
    return next((c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr
                 and c.laddr.port == port and c.pid), None)


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine spent not idle, all cores added up, since boot."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _process_cpu_s(pid: int | None) -> float | None:
    import psutil

    if pid is None:
        return None
    try:
        cpu = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return cpu.user + cpu.system


@dataclass
class MachineUsage:
    """The machine's CPU over one run, split into the run's child, the broker and everything else:
    where a run stops when the cores are shared."""

    broker_pid: int | None
    started: float
    busy_at_start: float
    broker_at_start: float | None

    @classmethod
    def start(cls, bootstrap: str) -> MachineUsage:
        pid = listening_pid(bootstrap)
        return cls(pid, time.monotonic(), _busy_cpu_s(), _process_cpu_s(pid))

    def finish(self, run_cpu_s: float) -> dict:
        """Cores busy on average over the run: the machine, the run, the broker, the rest."""
        wall = time.monotonic() - self.started
        broker_end = _process_cpu_s(self.broker_pid)
        broker = (broker_end - self.broker_at_start
                  if broker_end is not None and self.broker_at_start is not None else None)
        return cpu_split(wall, _busy_cpu_s() - self.busy_at_start, run_cpu_s, broker, os.cpu_count() or 1)


def cpu_split(wall_s: float, machine_cpu_s: float, run_cpu_s: float, broker_cpu_s: float | None,
              cores: int) -> dict:
    """Average cores busy over ``wall_s``: the machine's, the run's, the broker's and the rest's
    (the machine less the two; never below 0: the counters are sampled at slightly different times)."""
    def cores_busy(cpu_s: float) -> float:
        return round(cpu_s / wall_s, 2) if wall_s > 0 else 0.0

    other = machine_cpu_s - run_cpu_s - (broker_cpu_s or 0.0)
    return {"wall_s": round(wall_s, 2), "cores": cores, "machine_cores_busy": cores_busy(machine_cpu_s),
            "run_cores_busy": cores_busy(run_cpu_s),
            "broker_cores_busy": None if broker_cpu_s is None else cores_busy(broker_cpu_s),
            "other_cores_busy": cores_busy(max(other, 0.0)),
            "machine_busy_pct": round(100 * machine_cpu_s / (wall_s * cores), 1) if wall_s > 0 else 0.0,
            "load_average": [round(x, 2) for x in os.getloadavg()]}
