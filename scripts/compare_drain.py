#!/usr/bin/env python3
"""Compare the consumer pipeline's drain throughput of two versions of this code, in one run.

Both versions drain the same preloaded input topic on the same broker, taking turns (round 1:
before then after, round 2: after then before, ...), so that drift in the machine's load falls
on both alike. Each version runs from its own copy of the code under bench-results/compare/
(``git archive`` of a ref, or a copy of the working tree's top-level *.py and loginpipe/), with
this interpreter, so each imports its own ``loginpipe``.

    .venv/bin/python scripts/compare_drain.py --before HEAD [--after REF] [--events 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, NoReturn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from scripts/: the package is one folder up

from loginpipe.config import positive_int, run_cli  # noqa: E402
from loginpipe.errors import UserError  # noqa: E402
from loginpipe.local.broker import LocalBroker, broker_answers  # noqa: E402
from loginpipe.topics import TopicSpec, admin_client, delete_topics, ensure_topics  # noqa: E402

RESULTS_DIR = ROOT / "bench-results"
COMPARE_DIR = RESULTS_DIR / "compare"
IDLE_S = 3  # the consumer's --stop-when-idle: it exits this long after the input is drained
POLL_S = 0.5
STOP_GRACE_S = 20.0
MIB = 2**20

SUMMARY_RE = re.compile(r"consumed ([\d,]+) in [\d.,]+s \([\d,]+ msg/s\): processed ([\d,]+), "
                        r"filtered ([\d,]+), dead-lettered ([\d,]+)")
CONSUMED_RE = re.compile(r"consumed ([\d,]+) in")  # older summaries may not split the counts alike
TIMING_RE = re.compile(r"timing: first record to last processed in ([\d.]+)s")
GENERATOR_RE = re.compile(r"generator: sent ([\d,]+)(?:/[\d,]+)? events \(([\d,]+) events/s\)")


# --- command line ----------------------------------------------------------------------------

class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and the description's line breaks kept."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # "(default: None)" says nothing: those flags state their default in words.
        return action.help if action.default is None else super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes end as one ``error:`` line and exit code 1 (via run_cli)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see --help)")


def build_parser() -> _Parser:
    """The command line: flags, defaults and the help text."""
    parser = _Parser(
        prog="scripts/compare_drain.py", formatter_class=_Formatter,
        description=__doc__.split("\n\n    ")[0] + """

One input topic is preloaded once with --events events by the working tree's generator. Each run
is the version's own create_kafka_consumer.py draining it from the start with a fresh group and
fresh output and dead-letter topics, then stopping after 3 s idle. Its rate is consumed events /
"first record to last processed" from the consumer's summary; a run that did not consume exactly
--events counts as failed. CPU seconds and peak RSS are the consumer process's own (wait4).

Prints a table (each round's events/s, medians, after/before ratio of the medians), writes all
of it as JSON to --out, and deletes the topics and groups it made, also on Ctrl+C.
Exit code 0, 1 when a run failed or on an error, 130 when interrupted.""",
        epilog="example: .venv/bin/python scripts/compare_drain.py --before HEAD --events 200000 --rounds 3")
    parser.add_argument("--before", required=True, metavar="REF", help="git ref of the baseline version")
    parser.add_argument("--after", metavar="REF", default=None,
                        help="git ref of the version to compare; default: the working tree as it is on "
                             "disk, uncommitted changes included")
    parser.add_argument("--events", type=positive_int, default=1_000_000, help="events to preload and drain")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds; each runs both versions")
    parser.add_argument("--partitions", type=positive_int, default=4,
                        help="partitions of the input, output and dead-letter topics")
    parser.add_argument("--bootstrap-servers", default=None,
                        help="Kafka to use; default: one answering on 127.0.0.1:29092, else the local "
                             "broker, started (python -m loginpipe.local.broker)")
    parser.add_argument("--seed", type=int, default=7, help="generator seed")
    parser.add_argument("--out", default=None,
                        help="JSON results file; default: bench-results/compare-drain-<timestamp>.json")
    return parser


# --- versions of the code --------------------------------------------------------------------

@dataclass
class Version:
    """One version of the code and the folder it runs from."""

    label: str  # "before" or "after"
    ref: str | None  # None: the working tree
    commit: str  # the ref's commit; HEAD's for the working tree
    path: Path
    changes: list[str] = field(default_factory=list)  # working tree only: `git status --short` lines

    def describe(self) -> str:
        """The ref (or "working tree") and its short commit, for tables and messages."""
        if self.ref is None:
            return f"working tree ({self.commit[:7]}{' + changes' if self.changes else ''})"
        return f"{self.ref} ({self.commit[:7]})"


def git(*args: str) -> str:
    """Run git in the repository; its stdout, or a UserError with its message."""
    result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        raise UserError(f"git {' '.join(args)}: {lines[-1]}")
    return result.stdout.strip()


def resolve_commit(ref: str) -> str:
    """The commit ``ref`` names, or a UserError."""
    result = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                            cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"{ref!r} is not a commit of this repository")
    return result.stdout.strip()


def extract_commit(commit: str, dest: Path) -> None:
    """``git archive commit | tar -x -C dest``."""
    archive = subprocess.Popen(["git", "archive", commit], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    tar = subprocess.Popen(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, stderr=subprocess.PIPE)
    archive.stdout.close()  # tar holds the pipe now; git gets SIGPIPE if tar dies
    _, tar_err = tar.communicate()
    git_err = archive.stderr.read()
    archive.wait()
    if archive.returncode or tar.returncode:
        raise UserError(f"could not extract {commit[:7]}: {(git_err or tar_err).decode().strip()}")


def copy_working_tree(dest: Path) -> None:
    """The top-level *.py files and loginpipe/ as they are on disk now."""
    for script in ROOT.glob("*.py"):
        shutil.copy2(script, dest / script.name)
    shutil.copytree(ROOT / "loginpipe", dest / "loginpipe",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def child_env(path: Path) -> dict[str, str]:
    """This environment with ``path`` as the import path."""
    # The version's folder first on the import path, whatever PYTHONPATH the caller has set.
    return {**os.environ, "PYTHONPATH": str(path)}


def check_own_package(version: Version) -> None:
    """Fail unless ``import loginpipe`` in the version's folder finds that folder's copy."""
    probe = subprocess.run([sys.executable, "-c", "import loginpipe; print(loginpipe.__file__)"],
                           cwd=version.path, env=child_env(version.path), capture_output=True, text=True)
    found = Path(probe.stdout.strip() or "/").resolve()
    if probe.returncode != 0 or not found.is_relative_to(version.path.resolve()):
        detail = (probe.stderr.strip().splitlines() or [str(found)])[-1]
        raise UserError(f"{version.label} ({version.describe()}) does not import its own loginpipe: {detail}")


def materialize(label: str, ref: str | None, run_dir: Path) -> Version:
    """Copy one version of the code into ``run_dir/label``."""
    dest = run_dir / label
    dest.mkdir(parents=True)
    if ref is None:
        changes = [line.strip() for line in git("status", "--porcelain").splitlines()]
        version = Version(label, None, git("rev-parse", "HEAD"), dest, changes)
        copy_working_tree(dest)
    else:
        version = Version(label, ref, resolve_commit(ref), dest)
        extract_commit(version.commit, dest)
    check_own_package(version)
    return version


# --- child processes -------------------------------------------------------------------------

@dataclass
class Usage:
    """How a child ended and what it used."""

    returncode: int
    wall_s: float
    cpu_s: float  # user + system, the child's own
    peak_rss_mib: float
    timed_out: bool = False


def start_child(cmd: list[str], cwd: Path, stdout: IO, stderr: IO) -> subprocess.Popen:
    """Start a child in its own session running ``cmd`` with ``cwd`` first on its import path."""
    # Its own session: Ctrl+C in the terminal reaches only this script, which then stops the
    # child with one SIGTERM (the project's commands stop cleanly on it).
    return subprocess.Popen(cmd, cwd=cwd, env=child_env(cwd), stdin=subprocess.DEVNULL,
                            stdout=stdout, stderr=stderr, start_new_session=True)


def stop_child(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE_S; reaped either way."""
    with suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_child(proc: subprocess.Popen, timeout_s: float, echo: Path | None = None) -> Usage:
    """Wait for ``proc`` (echoing new lines of ``echo``); stopped at the deadline or on the way out."""
    started = time.monotonic()
    shown = 0
    try:
        while True:
            # wait4, not wait: the kernel's account of this child alone (CPU time, peak RSS).
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if echo is not None:
                shown = echo_new_lines(echo, shown)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return Usage(proc.returncode, time.monotonic() - started, usage.ru_utime + usage.ru_stime,
                             usage.ru_maxrss * 1024 / MIB)  # ru_maxrss is in KiB on Linux
            if time.monotonic() - started > timeout_s:
                stop_child(proc)
                return Usage(proc.returncode, time.monotonic() - started, 0.0, 0.0, timed_out=True)
            time.sleep(POLL_S)
    finally:
        if proc.returncode is None:  # interrupted: do not leave it running
            stop_child(proc)


def echo_new_lines(path: Path, shown: int) -> int:
    """Print the lines of ``path`` after the first ``shown``; the new count."""
    with suppress(OSError):
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        for line in lines[shown:]:
            say(f"    {line.strip()}")
        return len(lines)
    return shown


def tail(path: Path, lines: int = 5) -> str:
    """The last ``lines`` lines of a log file ("" when unreadable)."""
    with suppress(OSError):
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


def say(text: str) -> None:
    """Print a progress line now, not when the buffer fills."""
    print(text, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler."""
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl+C: children stopped, topics deleted


# --- one comparison --------------------------------------------------------------------------

@dataclass
class Drain:
    """One consumer run of one version."""

    round: int
    version: str
    order: int  # 1: ran first in its round
    output_topic: str
    group: str
    log: str
    returncode: int | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss_mib: float | None = None
    consumed: int | None = None
    processed: int | None = None
    filtered: int | None = None
    dead_lettered: int | None = None
    busy_s: float | None = None
    events_per_s: float | None = None
    error: str | None = None


@dataclass
class Session:
    """This comparison: settings, broker, the topics and groups it made, its results."""

    args: argparse.Namespace
    bootstrap: str
    run_id: str
    run_dir: Path
    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        """Where the children's stdout and stderr go."""
        return self.run_dir / "logs"

    @property
    def input_topic(self) -> str:
        """The one input topic every run drains."""
        return f"cmp-in-{self.run_id}"

    def create_topics(self, *specs: TopicSpec) -> None:
        """Create fresh topics with --partitions partitions; fail if one already exists."""
        # Listed before creating: whatever part was made is deleted at the end.
        self.topics.extend(spec.name for spec in specs)
        for result in ensure_topics(self.bootstrap, list(specs), partitions=self.args.partitions):
            if result.status != "created":
                raise UserError(f"topic {result.describe()}: expected a fresh topic")

    def timeout_s(self) -> float:
        """How long one child may take."""
        return max(180.0, self.args.events / 1500)  # generous: about 4x a slow run

    def cleanup(self) -> None:
        """Delete the topics and consumer groups this comparison made (best effort)."""
        if not self.topics:
            return
        say(f"cleaning up: deleting the topics ({len(self.topics)}) and consumer groups "
            f"({len(self.groups)}) this comparison made")
        with suppress(Exception):
            delete_topics(self.bootstrap, self.topics)
        with suppress(Exception):
            admin = admin_client(self.bootstrap)
            try:
                admin.delete_groups(self.groups)  # the runs ended cleanly, so their groups are empty
            finally:
                admin.close()


def bootstrap_servers(given: str | None) -> str:
    """The broker to use: the one given, which must answer, or the local one, reused or started."""
    if given is None:
        broker = LocalBroker()
        say(f"kafka: {broker.start_or_reuse()}")
        return broker.bootstrap_servers
    if not broker_answers(given, timeout_s=5.0):
        raise UserError(f"cannot reach a Kafka broker at {given}; is it running? (make kafka-start)")
    return given


def preload(session: Session) -> dict:
    """Fill the input topic with the working tree's generator; its rate and time."""
    args = session.args
    topic = session.input_topic
    session.create_topics(TopicSpec(topic, "compare input"))
    say(f"preloading {args.events:,} events (seed {args.seed}) into {topic} ({args.partitions} partitions)")
    err_path = session.log_dir / "generator.err"
    cmd = [sys.executable, "-m", "loginpipe.local.generator", "--bootstrap-servers", session.bootstrap,
           "--topic", topic, "--count", str(args.events), "--rate", "0", "--seed", str(args.seed),
           "--progress-every", "5"]
    with open(session.log_dir / "generator.out", "wb") as out, open(err_path, "wb") as err:
        proc = start_child(cmd, ROOT, out, err)
    usage = wait_child(proc, session.timeout_s(), echo=err_path)
    sent = GENERATOR_RE.search(err_path.read_text(errors="replace"))
    if usage.returncode != 0 or not sent or int(sent.group(1).replace(",", "")) != args.events:
        raise UserError(f"the generator did not send {args.events:,} events; output tail:\n{tail(err_path)}")
    return {"topic": topic, "events": args.events, "seed": args.seed, "wall_s": round(usage.wall_s, 2),
            "events_per_s": int(sent.group(2).replace(",", ""))}


def create_default_topics(session: Session, version: Version) -> None:
    """The version's own create_kafka_topic.py: the default topics it expects (idempotent)."""
    cmd = [sys.executable, "create_kafka_topic.py", "--bootstrap-servers", session.bootstrap]
    result = subprocess.run(cmd, cwd=version.path, env=child_env(version.path), capture_output=True,
                            text=True, timeout=120)
    # Exit code 2 means a default topic has fewer partitions than asked: the runs do not use
    # the default topics, so it is only worth a mention.
    if result.returncode not in (0, 2):
        raise UserError(f"{version.label}'s create_kafka_topic.py exited with code {result.returncode}:\n"
                        f"{(result.stdout + result.stderr).strip()}")
    if result.returncode == 2:
        say(f"  note: {version.label}'s create_kafka_topic.py: {result.stdout.strip()}")


def drain(session: Session, version: Version, round_no: int, order: int) -> Drain:
    """One run of the version's consumer over the whole input, with fresh output topics and group."""
    tag = f"{version.label}-r{round_no}"
    out_topic, dlq_topic = f"cmp-out-{session.run_id}-{tag}", f"cmp-dlq-{session.run_id}-{tag}"
    session.create_topics(TopicSpec(out_topic, "compare output", configs={"compression.type": "producer"}),
                          TopicSpec(dlq_topic, "compare dead letters"))
    group = f"cmp-{session.run_id}-{tag}"
    session.groups.append(group)
    out_path, err_path = session.log_dir / f"{tag}.out", session.log_dir / f"{tag}.err"
    cmd = [sys.executable, "create_kafka_consumer.py", "--bootstrap-servers", session.bootstrap,
           "--input-topic", session.input_topic, "--output-topic", out_topic, "--dlq-topic", dlq_topic,
           "--group-id", group, "--stop-when-idle", str(IDLE_S), "--quiet"]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = start_child(cmd, version.path, out, err)
    usage = wait_child(proc, session.timeout_s())
    run = Drain(round_no, version.label, order, out_topic, group, str(out_path.relative_to(ROOT)),
                usage.returncode, round(usage.wall_s, 2), round(usage.cpu_s, 2), round(usage.peak_rss_mib, 1))
    read_summary(run, out_path.read_text(errors="replace"), session.args.events)
    if usage.timed_out:
        run.error = f"did not finish within {session.timeout_s():.0f}s"
    elif usage.returncode != 0 and run.error is None:
        run.error = f"exit code {usage.returncode}"
    if run.error and not run.consumed:
        run.error += f"; last line on stderr: {tail(err_path, 1) or '(none)'}"
    return run


def read_summary(run: Drain, stdout: str, events: int) -> None:
    """Fill ``run``'s counts and rate from the consumer's summary, or its error."""
    counts, consumed, timing = SUMMARY_RE.search(stdout), CONSUMED_RE.search(stdout), TIMING_RE.search(stdout)
    if not consumed or not timing:
        run.error = "no summary in its output"
        return
    run.consumed = int(consumed.group(1).replace(",", ""))
    if counts:
        processed, filtered, dead = (int(g.replace(",", "")) for g in counts.groups()[1:])
        run.processed, run.filtered, run.dead_lettered = processed, filtered, dead
    run.busy_s = float(timing.group(1))
    if run.busy_s > 0:
        run.events_per_s = round(run.consumed / run.busy_s, 1)
    if run.consumed != events:
        run.error = f"consumed {run.consumed:,} of {events:,} events"
    elif not run.events_per_s:
        run.error = "no first-to-last timing"


def show_drain(run: Drain) -> None:
    """One line about a finished run."""
    head = f"  round {run.round}, {run.version}: "
    if run.error:
        say(head + f"FAILED: {run.error}")
    else:
        say(head + f"{run.consumed:,} events in {run.busy_s:.2f}s = {run.events_per_s:,.0f} events/s, "
            f"CPU {run.cpu_s:.1f}s, peak RSS {run.peak_rss_mib:,.0f} MiB")


def run_rounds(session: Session, before: Version, after: Version) -> None:
    """Every round, both versions, alternating which goes first."""
    for round_no in range(1, session.args.rounds + 1):
        # Alternate the order: a version that always ran second would always meet a warmer cache
        # and a busier broker (log cleanup, the last run's group leaving).
        pair = (before, after) if round_no % 2 else (after, before)
        say(f"round {round_no}/{session.args.rounds}: {pair[0].label}, then {pair[1].label}")
        for order, version in enumerate(pair, start=1):
            run = drain(session, version, round_no, order)
            session.drains.append(run)
            show_drain(run)


# --- report ----------------------------------------------------------------------------------

def summarize(session: Session, versions: list[Version]) -> dict:
    """Per version: each round's rate, the medians, the peak RSS; and the after/before ratios."""
    summary: dict = {}
    for version in versions:
        runs = sorted((r for r in session.drains if r.version == version.label), key=lambda r: r.round)
        ok = [r for r in runs if not r.error]
        summary[version.label] = {
            "version": version.describe(),
            "events_per_s_by_round": [r.events_per_s if not r.error else None for r in runs],
            "median_events_per_s": round(statistics.median(r.events_per_s for r in ok), 1) if ok else None,
            "median_cpu_s": round(statistics.median(r.cpu_s for r in ok), 2) if ok else None,
            "peak_rss_mib": max((r.peak_rss_mib for r in ok), default=None),
            "failed_runs": len(runs) - len(ok),
        }
    before, after = summary["before"], summary["after"]
    summary["ratio_after_before"] = _ratio(after["median_events_per_s"], before["median_events_per_s"])
    summary["cpu_ratio_after_before"] = _ratio(after["median_cpu_s"], before["median_cpu_s"])
    return summary


def _ratio(after: float | None, before: float | None) -> float | None:
    """after / before, or None when either is missing."""
    return round(after / before, 4) if after and before else None


def table(summary: dict, rounds: int) -> str:
    """The summary as an aligned text table and a ratio line."""
    header = ["version", "code", *(f"round {i}" for i in range(1, rounds + 1)),
              "median events/s", "median CPU s", "peak RSS MiB"]

    def num(value: float | None, digits: int = 0) -> str:
        """A number with thousands separators, or "failed"."""
        return "failed" if value is None else f"{value:,.{digits}f}"

    rows = [header]
    for label in ("before", "after"):
        row = summary[label]
        rows.append([label, row["version"], *(num(v) for v in row["events_per_s_by_round"]),
                     num(row["median_events_per_s"]), num(row["median_cpu_s"], 1), num(row["peak_rss_mib"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    # Text columns left-aligned, numbers right-aligned.
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ratio = summary["ratio_after_before"]
    if ratio is None:
        lines.append("after/before: no ratio (a version has no successful run)")
    else:
        cpu = summary["cpu_ratio_after_before"]
        lines.append(f"after/before, median events/s: {ratio:.3f} ({ratio - 1:+.1%})"
                     + (f"; median CPU s: {cpu:.3f} ({cpu - 1:+.1%})" if cpu else ""))
    return "\n".join(lines)


def output_path(given: str | None, stamp: str) -> Path:
    """Where the JSON goes; its folder is made now, so a bad path fails before the runs."""
    path = Path(given) if given else RESULTS_DIR / f"compare-drain-{stamp}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {path.parent}: {exc.strerror}") from None
    return path


def write_report(path: Path, report: dict) -> None:
    """Write the report as indented JSON."""
    try:
        path.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None


# --- main ------------------------------------------------------------------------------------

def compare(session: Session) -> tuple[list[Version], dict]:
    """Materialize both versions, preload the input, run the rounds; the versions and preload facts."""
    args = session.args
    session.log_dir.mkdir(parents=True)
    versions = [materialize("before", args.before, session.run_dir),
                materialize("after", args.after, session.run_dir)]
    for version in versions:
        say(f"{version.label}: {version.describe()} in {version.path.relative_to(ROOT)}")
    loaded = preload(session)
    say(f"  preloaded at {loaded['events_per_s']:,} events/s")
    for version in versions:
        create_default_topics(session, version)
    run_rounds(session, *versions)
    return versions, loaded


def main(argv: list[str] | None = None) -> int:
    """Compare, print the table, write the JSON; 1 when a run failed."""
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for ref in (args.before, args.after):
        if ref is not None:
            resolve_commit(ref)  # a typo in a ref fails before anything starts
    out = output_path(args.out, stamp)
    run_id = uuid.uuid4().hex[:8]
    load_at_start = os.getloadavg()
    session = Session(args, bootstrap_servers(args.bootstrap_servers), run_id,
                      COMPARE_DIR / f"{stamp}-{run_id}")
    rounds = f"{args.rounds} round{'s' if args.rounds > 1 else ''}"
    say(f"compare-drain {run_id}: {args.events:,} events, {rounds}, {args.partitions} partitions; "
        f"code and logs in {session.run_dir.relative_to(ROOT)}")
    try:
        versions, loaded = compare(session)
    finally:
        session.cleanup()
    summary = summarize(session, versions)
    report = {
        "run_id": run_id, "started": stamp, "duration_s": round(time.monotonic() - started, 1),
        "settings": {**vars(args), "bootstrap_servers": session.bootstrap, "stop_when_idle_s": IDLE_S},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "load_average_at_start": [round(x, 2) for x in load_at_start],
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": {v.label: {**asdict(v), "path": str(v.path), "describe": v.describe()} for v in versions},
        "preload": loaded,
        "runs": [{**asdict(r), "ok": r.error is None} for r in session.drains],
        "summary": summary,
    }
    write_report(out, report)
    say("")
    say(table(summary, args.rounds))
    say(f"results: {out}")
    failed = sum(1 for r in session.drains if r.error)
    if failed:
        say(f"{failed} of {len(session.drains)} runs failed (see above and the logs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
