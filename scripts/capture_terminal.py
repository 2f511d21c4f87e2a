#!/usr/bin/env python3
"""Capture what `make run` prints, during a real run, and render it to ``image.png``.

Starts the local broker, then, in a detached tmux session of a normal size (100 x 40, typed at a
``$`` prompt so the command shows), runs what `make run` runs: ``python -m loginpipe.local.stack``
(broker check, topics, the generator at 1,000 events/s, the consumer with its live status block).
The only differences: the dashboard is off (``--dashboard-port 0``: it would take the port of a
dashboard the user runs), and the topics and group are fresh ones (INPUT_TOPIC, OUTPUT_TOPIC,
DLQ_TOPIC, GROUP_ID in the shell's environment), so the user's own are never touched. Once the
generator's first progress line has scrolled above the block, the screen is captured and rendered
with Pillow; then Ctrl+C stops the run. Everything it started (tmux server, processes, topics)
is removed again, whatever happens.

    .venv/bin/python scripts/capture_terminal.py [--output image.png]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from scripts/: the package is one folder up

from loginpipe.kafka.admin import delete_topics  # noqa: E402
from loginpipe.local.broker import LocalBroker  # noqa: E402
from loginpipe.topics import InternalTopics  # noqa: E402
from loginpipe.waiting import wait_until  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_REGULAR = FONT_DIR / "DejaVuSansMono.ttf"
FONT_BOLD = FONT_DIR / "DejaVuSansMono-Bold.ttf"

COLS, ROWS = 100, 40  # a normal terminal
COMMAND = ["python", "-m", "loginpipe.local.stack", "--dashboard-port", "0"]
# The generator's progress line comes every 30 s (stack.py): by then the block has a full window.
FIRST_PROGRESS_S = 60.0

BACKGROUND = (30, 32, 36)
FOREGROUND = (214, 218, 224)
TITLE_BAR = (52, 55, 61)
TITLE_TEXT = (170, 176, 186)
# The 16 ANSI colours (normal then bright), tuned to sit on the dark background.
ANSI16 = [
    (40, 42, 46), (224, 108, 117), (152, 195, 121), (229, 192, 123),
    (97, 175, 239), (198, 120, 221), (86, 182, 194), (200, 204, 212),
    (92, 99, 112), (240, 130, 138), (176, 220, 146), (240, 208, 140),
    (128, 196, 255), (220, 150, 240), (110, 206, 218), (255, 255, 255),
]

PROMPT = "$ "
SGR = re.compile(r"\x1b\[([0-9;:]*)m")
OTHER_ESCAPE = re.compile(r"\x1b(\[[0-9;?]*[A-Za-ln-z]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][A-Z0-9])")


def wait_for(what: str, condition: Callable[[], object], timeout_s: float, interval_s: float = 0.1):
    """Poll ``condition`` until it is truthy and return its value; fail naming ``what`` at the deadline."""
    value = wait_until(condition, timeout_s, interval_s)
    if not value:
        raise TimeoutError(f"gave up after {timeout_s:g}s waiting for {what}")
    return value


class Tmux:
    """A tmux server of our own (a private socket), so the user's sessions are never touched."""

    def __init__(self, session: str, env: dict[str, str]) -> None:
        self.socket = session
        self.session = session
        self.env = env
        self.started = False
        self.socket_path: Path | None = None

    def run(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], env=self.env,
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def start(self, shell: list[str], cwd: Path, cols: int, rows: int) -> None:
        self.run("-f", "/dev/null", "new-session", "-d", "-s", self.session,
                 "-x", str(cols), "-y", str(rows), "-c", str(cwd), shlex.join(shell))
        self.started = True
        self.socket_path = Path(self.run("display-message", "-p", "#{socket_path}").strip())
        self.run("set-option", "-t", self.session, "status", "off")
        self.run("set-option", "-t", self.session, "history-limit", "5000")

    def type_line(self, text: str) -> None:
        self.run("send-keys", "-t", self.session, "-l", text)
        self.run("send-keys", "-t", self.session, "Enter")

    def interrupt(self) -> None:
        self.run("send-keys", "-t", self.session, "C-c")

    def text(self, escapes: bool = False, joined: bool = False) -> str:
        """The whole pane from the start of its history; ``joined`` undoes line wrapping."""
        flags = ["-p", "-S", "-"] + (["-e"] if escapes else []) + (["-J"] if joined else [])
        return self.run("capture-pane", "-t", self.session, *flags)

    def current_command(self) -> str:
        return self.run("display-message", "-p", "-t", self.session, "#{pane_current_command}").strip()

    def kill(self) -> None:
        if self.started:
            subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env,
                           capture_output=True, check=False)
            self.started = False
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)  # tmux leaves its socket file behind


def shell_env() -> dict[str, str]:
    """The environment of the shell in tmux: the venv first on PATH, no history file."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TMUX", "PROMPT_COMMAND", "BASH_FUNC_"))}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
               HISTFILE="/dev/null", VIRTUAL_ENV=str(ROOT / ".venv"), PYTHONUNBUFFERED="1",
               LANG=env.get("LANG", "C.UTF-8"))
    return env


def capture(output: Path) -> Path:
    broker = LocalBroker()
    print(broker.start_or_reuse(), flush=True)
    bootstrap = broker.bootstrap_servers

    run_id = uuid.uuid4().hex[:6]
    topics = {"INPUT_TOPIC": f"capture-{run_id}-in", "OUTPUT_TOPIC": f"capture-{run_id}-out",
              "DLQ_TOPIC": f"capture-{run_id}-dlq"}
    group = f"capture-{run_id}"
    command = [*COMMAND, *(["--bootstrap-servers", bootstrap] if bootstrap != "127.0.0.1:29092" else [])]
    command_line = shlex.join(command)
    env = {**shell_env(), **topics, "GROUP_ID": group}
    tmux = Tmux(f"loginpipe-capture-{run_id}", env)
    try:
        # PS1 goes on the command line: tmux does not hand it down from its own environment.
        tmux.start(["env", f"PS1={PROMPT}", "bash", "--norc", "--noprofile", "-i"], ROOT, COLS, ROWS)
        wait_for("the shell prompt", lambda: tmux.text().rstrip().endswith(PROMPT.strip()), 10)
        tmux.type_line(command_line)
        print(f"running {command_line} (topics {', '.join(topics.values())}, group {group})", flush=True)

        def running() -> bool:
            text = tmux.text(joined=True)
            if tmux.current_command() == "bash" and "Ctrl+C stops" in text:
                raise RuntimeError(f"the run ended early:\n{text[-3000:]}")
            return "generator: generated" in text and "throughput" in text

        wait_for("the generator's first progress line above the live block", running, FIRST_PROGRESS_S + 60)
        screen = tmux.text(escapes=True)
        tmux.interrupt()
        wait_for("the run to stop", lambda: "= summary =" in tmux.text(joined=True)
                 and tmux.current_command() == "bash", 60)
    finally:
        tmux.kill()
        try:
            internal = [spec.name for spec in InternalTopics.of(group).specs()]
            delete_topics(bootstrap, [*topics.values(), *internal])
        except Exception as exc:  # cleanup must not hide the real outcome
            print(f"warning: could not delete the capture topics: {exc}", file=sys.stderr)

    render(screen, f"{PROMPT}{command_line}", output)
    return output


# --- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    fg: tuple[int, int, int] | None = None  # None: the default colour
    bg: tuple[int, int, int] | None = None
    bold: bool = False
    dim: bool = False
    reverse: bool = False


def xterm256(n: int) -> tuple[int, int, int]:
    if n < 16:
        return ANSI16[n]
    if n < 232:
        n -= 16
        levels = (0, 95, 135, 175, 215, 255)
        return levels[n // 36], levels[n // 6 % 6], levels[n % 6]
    grey = 8 + 10 * (n - 232)
    return grey, grey, grey


def apply_sgr(style: Style, params: str) -> Style:
    codes = [int(p) if p.isdigit() else 0 for p in re.split("[;:]", params)] if params else [0]
    i = 0
    while i < len(codes):
        code = codes[i]
        if code == 0:
            style = Style()
        elif code == 1:
            style = replace(style, bold=True)
        elif code == 2:
            style = replace(style, dim=True)
        elif code == 22:
            style = replace(style, bold=False, dim=False)
        elif code == 7:
            style = replace(style, reverse=True)
        elif code == 27:
            style = replace(style, reverse=False)
        elif 30 <= code <= 37:
            style = replace(style, fg=ANSI16[code - 30])
        elif 90 <= code <= 97:
            style = replace(style, fg=ANSI16[code - 90 + 8])
        elif code == 39:
            style = replace(style, fg=None)
        elif 40 <= code <= 47:
            style = replace(style, bg=ANSI16[code - 40])
        elif 100 <= code <= 107:
            style = replace(style, bg=ANSI16[code - 100 + 8])
        elif code == 49:
            style = replace(style, bg=None)
        elif code in (38, 48) and i + 1 < len(codes):
            if codes[i + 1] == 5 and i + 2 < len(codes):
                colour, i = xterm256(codes[i + 2]), i + 2
            elif codes[i + 1] == 2 and i + 4 < len(codes):
                colour, i = (codes[i + 2], codes[i + 3], codes[i + 4]), i + 4
            else:
                colour = None
            style = replace(style, **{"fg" if code == 38 else "bg": colour})
        i += 1
    return style


def parse_line(line: str, style: Style) -> tuple[list[tuple[str, Style]], Style]:
    """Split one captured line into (text, style) runs; the style carries over to the next line."""
    line = OTHER_ESCAPE.sub("", line)
    runs: list[tuple[str, Style]] = []
    pos = 0
    for match in SGR.finditer(line):
        if match.start() > pos:
            runs.append((line[pos:match.start()], style))
        style = apply_sgr(style, match.group(1))
        pos = match.end()
    if pos < len(line):
        runs.append((line[pos:], style))
    return runs, style


def render(screen: str, title: str, output: Path, font_size: int = 15) -> None:
    from PIL import Image, ImageDraw, ImageFont

    regular = ImageFont.truetype(str(FONT_REGULAR), font_size)
    title_font = ImageFont.truetype(str(FONT_REGULAR), font_size - 1)  # the whole command fits
    bold = ImageFont.truetype(str(FONT_BOLD), font_size)
    ascent, descent = regular.getmetrics()
    cell_w = regular.getlength("M")
    cell_h = ascent + descent + 3
    pad_x, pad_y, bar_h = 16, 12, cell_h + 14

    lines = screen.replace("\r", "").split("\n")
    while lines and not SGR.sub("", lines[-1]).strip():
        lines.pop()
    parsed, style = [], Style()
    for line in lines:
        runs, style = parse_line(line, style)
        parsed.append(runs)

    width = round(COLS * cell_w) + 2 * pad_x
    height = bar_h + pad_y + len(parsed) * cell_h + pad_y
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)

    # Title bar: three window buttons and the command line.
    draw.rectangle([0, 0, width, bar_h - 1], fill=TITLE_BAR)
    radius = 6
    for k, colour in enumerate([(237, 106, 94), (245, 191, 79), (98, 197, 84)]):
        cx, cy = pad_x + radius + k * 20, bar_h // 2
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    title_x = pad_x + 3 * 20 + 12
    max_chars = int((width - title_x - pad_x) / title_font.getlength("M"))
    if len(title) > max_chars:
        title = title[:max_chars - 1] + "…"
    draw.text((title_x, (bar_h - cell_h) // 2 + 3), title, font=title_font, fill=TITLE_TEXT)

    for row, runs in enumerate(parsed):
        y = bar_h + pad_y + row * cell_h
        col = 0
        for text, st in runs:
            fg, bg = st.fg or FOREGROUND, st.bg
            if st.reverse:
                fg, bg = bg or BACKGROUND, fg
            if st.dim:
                fg = tuple((c + b) // 2 for c, b in zip(fg, BACKGROUND, strict=True))
            x = pad_x + col * cell_w
            if bg is not None:
                draw.rectangle([x, y, x + len(text) * cell_w, y + cell_h - 1], fill=bg)
            # One cell per character keeps the grid exact even for glyphs the font lacks.
            font = bold if st.bold else regular
            for k, ch in enumerate(text):
                if ch != " ":
                    draw.text((x + k * cell_w, y + 1), ch, font=font, fill=fg)
            col += len(text)

    output.parent.mkdir(parents=True, exist_ok=True)
    image.save(output, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "image.png", help="where to write the PNG")
    args = parser.parse_args(argv)
    started = time.monotonic()
    path = capture(args.output.resolve())
    print(f"wrote {path} in {time.monotonic() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
