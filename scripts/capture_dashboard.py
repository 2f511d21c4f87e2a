#!/usr/bin/env python3
"""Remake ``docs/dashboard.png`` from a live run, as `make run` shows it in a browser.

Starts the local broker, then what `make run` runs, ``python -m loginpipe.local.stack``: the
generator at 1,000 events/s, the consumer and the dashboard, on a free port. The topics the run
writes and its group are fresh ones (INPUT_TOPIC, OUTPUT_TOPIC, DLQ_TOPIC, GROUP_ID in its
environment), so the user's own are never touched; the dashboard shows that group only. Once the
page shows ``--events`` processed events, Debian's Chromium (headless, driven by Playwright, as
tests/integration/test_dashboard.py does) takes a full-page screenshot; then Ctrl+C stops the run
and its topics are deleted, whatever happens.

    .venv/bin/python scripts/capture_dashboard.py [--events 60000] [--output docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from scripts/: the package is one folder up

from loginpipe.kafka.admin import delete_topics  # noqa: E402
from loginpipe.local.broker import LocalBroker, free_port  # noqa: E402
from loginpipe.topics import InternalTopics  # noqa: E402
from loginpipe.waiting import wait_until  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
RATE = 1000  # events per second, as `make run`
# Tall enough for the whole page: Streamlit scrolls inside its own container, so a full-page
# screenshot of a shorter window would show the first screen only.
VIEWPORT = {"width": 1500, "height": 3200}
STOP_TIMEOUT_S = 60.0


def wait_for(what: str, condition: Callable[[], object], timeout_s: float, interval_s: float = 0.5):
    """Poll ``condition`` until it is truthy and return its value; fail naming ``what`` at the deadline."""
    value = wait_until(condition, timeout_s, interval_s)
    if not value:
        raise TimeoutError(f"gave up after {timeout_s:g}s waiting for {what}")
    return value


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def figures(page) -> dict[str, str]:
    """The page's top row: label -> value, as Streamlit renders st.metric."""
    return page.evaluate("""() => Object.fromEntries(
        [...document.querySelectorAll('[data-testid="stMetric"]')].map(m => [
            m.querySelector('[data-testid="stMetricLabel"]').innerText.trim(),
            m.querySelector('[data-testid="stMetricValue"]').innerText.trim()]))""")


def processed(page) -> int:
    text = figures(page).get("processed", "")
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else 0


def stop(stack: subprocess.Popen) -> None:
    """Ctrl+C, as a user stops `make run`: the consumer drains, the stack ends its children."""
    if stack.poll() is None:
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stack.kill()
            stack.wait(timeout=10)


def screenshot(url: str, events: int, output: Path, stack: subprocess.Popen, log: Path) -> None:
    from playwright.sync_api import sync_playwright

    def alive() -> None:
        if stack.poll() is not None:
            raise RuntimeError(f"the run ended early (exit {stack.returncode}):\n{log.read_text()[-3000:]}")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url)

            def enough() -> bool:
                alive()
                return processed(page) >= events and "● live" in page.inner_text("body") \
                    and figures(page).get("messages/s", "–") != "–"

            wait_for(f"{events:,} processed events on the page", enough, events / RATE * 3 + 120)
            page.screenshot(path=str(output), full_page=True)
            print(f"{output}: {figures(page)}", flush=True)
        finally:
            browser.close()


def capture(events: int, output: Path) -> Path:
    if not CHROMIUM.exists():
        raise SystemExit(f"error: {CHROMIUM} is missing: run scripts/ensure_chromium.sh")
    broker = LocalBroker()
    print(broker.start_or_reuse(), flush=True)
    bootstrap = broker.bootstrap_servers
    run_id = uuid.uuid4().hex[:6]
    topics = {"INPUT_TOPIC": f"capture-{run_id}-in", "OUTPUT_TOPIC": f"capture-{run_id}-out",
              "DLQ_TOPIC": f"capture-{run_id}-dlq"}
    group = f"capture-{run_id}"
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"loginpipe-capture-dashboard-{run_id}.log"
    command = [sys.executable, "-m", "loginpipe.local.stack", "--rate", str(RATE),
               "--dashboard-port", str(port), "--bootstrap-servers", bootstrap]
    print(f"running {' '.join(command[1:])} (topics {', '.join(topics.values())}, group {group}; log {log})",
          flush=True)
    with log.open("w") as out:
        stack = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                 env={**os.environ, **topics, "GROUP_ID": group})
    try:
        wait_for("the dashboard", lambda: answers(port) or stack.poll() is not None, 120)
        screenshot(f"http://127.0.0.1:{port}/", events, output, stack, log)
    finally:
        stop(stack)
        try:
            internal = [spec.name for spec in InternalTopics.of(group).specs()]
            delete_topics(bootstrap, [*topics.values(), *internal])
        except Exception as exc:  # cleanup must not hide the real outcome
            print(f"warning: could not delete the capture topics: {exc}", file=sys.stderr)
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000,
                        help="take the picture once the page shows this many processed events")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    print(f"wrote {capture(args.events, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
