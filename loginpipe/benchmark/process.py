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
