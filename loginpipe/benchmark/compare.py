"""Drain throughput of two versions of the code in one run: ``python -m loginpipe.benchmark compare``.

Each version (a git ref, extracted with ``git archive``, or the working tree as it is on disk) is
copied into a temporary folder. One input topic is preloaded once, as the benchmark does; then
each round drains it with both versions, taking turns (round 1: before then after, round 2:
after then before, ...) so that drift in the machine's load falls on both alike. A drain is the
version's own ``create_kafka_consumer.py`` (every version has it, whatever its module layout),
started in its folder with this interpreter, so it imports its own ``loginpipe``; it reads from
the start with a fresh group and fresh output topics and stops when idle. Its rate, CPU seconds
and peak RSS are read as the benchmark's pipeline step reads them; medians are reported.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from loginpipe.benchmark.common import bootstrap_servers, interrupt, new_run, say
from loginpipe.benchmark.process import Child, child_env
from loginpipe.benchmark.report import compare_markdown, describe_machine
from loginpipe.benchmark.steps import (
    IDLE_STOP_S,
    Bench,
    check_accounting,
    drain_command,
    pipeline_topics,
    python_run,
    step_preload,
)
from loginpipe.errors import UserError
from loginpipe.local.broker import PROJECT_ROOT
from loginpipe.topics import TopicSpec

LABELS = ("before", "after")


# --- versions of the code --------------------------------------------------------------------

@dataclass
class Version:
    """One version of the code and the folder it runs from."""

    label: str  # "before" or "after"
    ref: str | None  # None: the working tree
    commit: str  # the ref's commit; HEAD's for the working tree
    path: Path
    changes: list[str] = field(default_factory=list)  # working tree only: `git status --porcelain`

    def describe(self) -> str:
        """The ref (or "working tree") and its short commit."""
        if self.ref is None:
            return f"working tree ({self.commit[:7]}{' + changes' if self.changes else ''})"
        return self.commit[:7] if self.commit.startswith(self.ref) else f"{self.ref} ({self.commit[:7]})"


def git(*args: str) -> str:
    """Run git in the repository; its stdout, or a UserError with its message."""
    result = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        raise UserError(f"git {' '.join(args)}: {lines[-1]}")
    return result.stdout.strip()


def resolve_commit(ref: str) -> str:
    """The commit ``ref`` names, or a UserError."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except UserError:
        raise UserError(f"{ref!r} is not a commit of this repository") from None


def extract_commit(commit: str, dest: Path) -> None:
    """``git archive commit | tar -x -C dest``."""
    archive = subprocess.Popen(["git", "archive", commit], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
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
    for script in PROJECT_ROOT.glob("*.py"):
        shutil.copy2(script, dest / script.name)
    shutil.copytree(PROJECT_ROOT / "loginpipe", dest / "loginpipe",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def check_own_package(version: Version) -> None:
    """Fail unless ``import loginpipe`` in the version's folder finds that folder's copy."""
    probe = subprocess.run([sys.executable, "-c", "import loginpipe; print(loginpipe.__file__)"],
                           cwd=version.path, env=child_env(version.path), capture_output=True, text=True)
    found = Path(probe.stdout.strip() or "/").resolve()
    if probe.returncode != 0 or not found.is_relative_to(version.path.resolve()):
        detail = (probe.stderr.strip().splitlines() or [str(found)])[-1]
        raise UserError(f"{version.label} ({version.describe()}) does not import its own loginpipe: {detail}")


def materialize(label: str, ref: str | None, parent: Path) -> Version:
    """Copy one version of the code into ``parent/label``."""
    dest = parent / label
    dest.mkdir()
    if ref is None:
        changes = [line.strip() for line in git("status", "--porcelain").splitlines()]
        version = Version(label, None, git("rev-parse", "HEAD"), dest, changes)
        copy_working_tree(dest)
    else:
        version = Version(label, ref, resolve_commit(ref), dest)
        extract_commit(version.commit, dest)
    check_own_package(version)
    return version


# --- the runs --------------------------------------------------------------------------------

def create_default_topics(bench: Bench, version: Version) -> None:
    """The version's own create_kafka_topic.py: the default topics it expects (its summary and
    metrics topics, say), idempotent."""
    child = Child(f"{version.label} create topics", [
        sys.executable, "create_kafka_topic.py", "--bootstrap-servers", bench.bootstrap],
        bench.log_dir, code=version.path)
    result = child.wait(120.0, progress_every_s=0)
    # Exit code 2: a default topic has fewer partitions than asked. The drains do not read or
    # write the default input and output topics, so it is only worth a mention.
    if result.returncode not in (0, 2):
        raise UserError(f"{version.label}'s create_kafka_topic.py exited with code {result.returncode}:\n"
                        f"{result.tail()}")
    if result.returncode == 2:
        say(f"      note: {version.label}'s create_kafka_topic.py: {result.stdout.strip()}")


def drain(bench: Bench, source: str, version: Version, round_no: int, order: int) -> dict:
    """One drain of the whole input by ``version``; a failed one is a row with an ``error``."""
    tag = f"{version.label}-r{round_no}"
    bench.announce(f"round {round_no}, {version.label}: {version.describe()}")
    head = {"round": round_no, "version": version.label, "order": order}
    try:
        out, dlq = pipeline_topics(bench, tag)
        cmd = drain_command(bench, source, out, dlq, bench.group(tag))
        row = python_run(bench, tag, "pipeline", Child(tag, cmd, bench.log_dir, code=version.path))
        check_accounting(bench, row, out, dlq)
    except UserError as exc:
        say(f"      FAILED: {exc}")
        return {**head, "error": str(exc).splitlines()[0]}
    if row["accounting_ok"]:
        return {**head, **row, "error": None}
    return {**head, **row, "error": f"consumed {row['consumed']:,} of {bench.args.events:,} events, "
                                    "or the counts do not add up"}


def run_rounds(bench: Bench, source: str, versions: list[Version]) -> list[dict]:
    """Every round, both versions, alternating which goes first."""
    runs = []
    for round_no in range(1, bench.args.rounds + 1):
        # A version that always ran second would always meet a warmer cache and a busier broker
        # (log cleanup, the last run's group leaving).
        pair = versions if round_no % 2 else versions[::-1]
        for order, version in enumerate(pair, start=1):
            runs.append(drain(bench, source, version, round_no, order))
    return runs


# --- summary and main ------------------------------------------------------------------------

def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _ratio(after: float | None, before: float | None) -> float | None:
    return round(after / before, 4) if after and before else None


def summarize(runs: list[dict], versions: list[Version]) -> dict:
    """Per version: each round's rate, the medians, the peak RSS; and the after/before ratios."""
    summary: dict = {}
    for version in versions:
        mine = sorted((r for r in runs if r["version"] == version.label), key=lambda r: r["round"])
        ok = [r for r in mine if not r["error"]]
        summary[version.label] = {
            "code": version.describe(),
            "events_per_s_by_round": [None if r["error"] else r["events_per_s"] for r in mine],
            "median_events_per_s": _median([r["events_per_s"] for r in ok]),
            "median_cpu_s": _median([r["cpu_s"] for r in ok]),
            "peak_rss_mib": max((r["peak_rss_mib"] for r in ok), default=None),
            "failed_runs": len(mine) - len(ok),
        }
    before, after = (summary[label] for label in LABELS)
    summary["ratio_after_before"] = _ratio(after["median_events_per_s"], before["median_events_per_s"])
    summary["cpu_ratio_after_before"] = _ratio(after["median_cpu_s"], before["median_cpu_s"])
    return summary


def _compare(bench: Bench, code_dir: Path) -> tuple[list[Version], dict, list[dict]]:
    """Copy both versions, preload the input, run the rounds."""
    args = bench.args
    versions = [materialize(label, ref, code_dir) for label, ref in zip(LABELS, (args.before, args.after),
                                                                         strict=True)]
    for version in versions:
        say(f"{version.label}: {version.describe()}")
    source = bench.name("in")
    bench.create_topics(TopicSpec(source, "compare input"))
    preload = step_preload(bench, source)
    for version in versions:
        create_default_topics(bench, version)
    return versions, preload, run_rounds(bench, source, versions)


def run_compare(args) -> int:
    """Compare, print the table, write the JSON and markdown; 1 when a run failed."""
    signal.signal(signal.SIGTERM, interrupt)
    started = time.monotonic()
    for ref in (args.before, args.after):
        if ref is not None:
            resolve_commit(ref)  # a typo in a ref fails before anything starts
    run_id, log_dir = new_run(args.out_dir)
    say(f"compare {run_id}: {args.events:,} events, {args.rounds} round(s), {args.partitions} partitions; "
        f"logs in {log_dir}")
    bootstrap = bootstrap_servers(args.bootstrap_servers)
    bench = Bench(args, bootstrap, run_id, log_dir)
    bench.steps = 1 + 2 * args.rounds
    machine = describe_machine()
    try:
        with tempfile.TemporaryDirectory(prefix="loginpipe-compare-") as code_dir:
            versions, preload, runs = _compare(bench, Path(code_dir))
    finally:
        if bench.topics or bench.groups:
            say("cleaning up: deleting the comparison's topics and consumer groups")
        bench.cleanup()
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "run_id": run_id, "machine": machine, "bootstrap_servers": bootstrap,
        "settings": {**vars(args), "stop_when_idle_s": IDLE_STOP_S},
        "versions": {v.label: {"ref": v.ref, "commit": v.commit, "code": v.describe(), "changes": v.changes}
                     for v in versions},
        "preload": preload, "runs": runs, "summary": summarize(runs, versions),
        "duration_s": round(time.monotonic() - started, 1),
    }
    text = compare_markdown(report)
    out_dir = Path(args.out_dir)
    paths = [out_dir / f"compare-{run_id}.json", out_dir / f"compare-{run_id}.md"]
    paths[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths[1].write_text(text)
    say("")
    say(text)
    say("results: " + ", ".join(str(p) for p in paths))
    failed = sum(1 for r in runs if r["error"])
    if failed:
        say(f"{failed} of {len(runs)} runs failed (see above and the logs)")
    return 1 if failed else 0
