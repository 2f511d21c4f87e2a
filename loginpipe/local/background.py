"""What the local broker and the local registry share: a process of ours left running in the
background, found again through its pid file, stopped with SIGTERM (SIGKILL past a deadline), and
its log's last lines for error messages.

A pid file can outlive its process and the pid be given to another program: a pid counts as ours
only while that process's command line still holds ``signature`` (the broker's properties file,
the registry's jar), so ``stop`` never signals a stranger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from loginpipe.waiting import wait_until


@dataclass(frozen=True)
class Background:
    pid_file: Path
    log_file: Path
    signature: str  # text only our process's command line holds

    def pid(self) -> int | None:
        """The process's pid while it is alive and ours, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        command_line = read_command_line(pid)
        return pid if command_line is not None and self.signature.encode() in command_line else None

    def launch(self, command: list[str], cwd: Path | None = None) -> subprocess.Popen:
        """Start ``command`` in its own session, its output appended to the log, its pid saved."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                start_new_session=True,  # Ctrl+C in the caller's terminal must not reach it
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def stop(self, timeout_s: float = 20.0) -> str:
        """Stop cleanly with SIGTERM; SIGKILL after ``timeout_s``."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        os.kill(pid, signal.SIGTERM)
        how = "stopped"
        if not wait_for_exit(pid, timeout_s):
            os.kill(pid, signal.SIGKILL)
            wait_for_exit(pid, 5.0)
            how = f"killed after {timeout_s:.0f}s"
        self.pid_file.unlink(missing_ok=True)
        return f"{how} (pid {pid})"

    def kill(self) -> str:
        """SIGKILL at once, as a crash would (outage tests)."""
        pid = self.pid()
        if pid is None:
            return "not running"
        os.kill(pid, signal.SIGKILL)
        wait_for_exit(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)
        return f"killed (pid {pid})"


def read_command_line(pid: int) -> bytes | None:
    """A process's NUL-separated command line; None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def log_tail(path: Path, lines: int, missing: str | None = None) -> str:
    """The last ``lines`` lines of a log, or ``missing`` when there is none yet."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return missing or f"(no {path.name} yet)"


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    return bool(wait_until(lambda: not alive(pid), timeout_s, interval_s=0.1))


def alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child (tests start brokers in-process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
