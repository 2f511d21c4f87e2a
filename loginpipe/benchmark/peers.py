"""The benchmark's peers: the pipeline on the confluent-kafka client, and a Quix Streams
application doing the same job (quix_app.py) in its own virtual environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from loginpipe.benchmark.common import DEFAULT_OUT_DIR, say
from loginpipe.benchmark.process import Child, MachineUsage
from loginpipe.benchmark.steps import (
    CLIENT_FLAG_RE,
    Bench,
    end_offsets,
    python_run,
    step_pipeline,
    step_pipeline_processes,
)
from loginpipe.errors import UserError
from loginpipe.local.broker import PROJECT_ROOT
from loginpipe.topics import TopicSpec

QUIX_VERSION = "3.28.1"
DEFAULT_QUIX_VENV = DEFAULT_OUT_DIR / "peers" / "quix-venv"
QUIX_APP = Path(__file__).with_name("quix_app.py")
QUIX_IDLE_STOP_S = 3  # the Quix app stops once nothing was consumed this long (its run timeout)


# --- the pipeline on confluent-kafka -----------------------------------------------------------

def confluent_missing() -> str | None:
    """Why the pipeline cannot run on confluent-kafka here, or None when it can."""
    probe = subprocess.run([sys.executable, "-c", "import confluent_kafka"], capture_output=True)
    if probe.returncode != 0:
        return "confluent-kafka is not installed (pip install confluent-kafka)"
    usage = subprocess.run([sys.executable, "create_kafka_consumer.py", "--help"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=60)
    if not CLIENT_FLAG_RE.search(usage.stdout):
        return "the pipeline has no --client flag yet"
    return None


def step_pipeline_confluent(bench: Bench, topic: str, processes: int, notes: list[str]) -> dict | None:
    """The pipeline drained with ``--client confluent`` (``processes`` > 1: with --processes); None,
    with a note, when it cannot run here or fails (the backend is optional)."""
    missing = confluent_missing()
    if missing:
        bench.announce(f"the pipeline, {processes} process(es), --client confluent")
        say(f"      skipped: {missing}")
        notes.append(f"pipeline on confluent-kafka, {processes} process(es), skipped: {missing}")
        return None
    try:
        if processes > 1:
            return step_pipeline_processes(bench, topic, processes, client="confluent")
        return step_pipeline(bench, topic, 1, client="confluent")
    except UserError as exc:  # a failed optional run is reported, the benchmark goes on
        first = str(exc).splitlines()[0].removesuffix("; output tail:")
        say(f"      failed, left out: {first}")
        notes.append(f"pipeline on confluent-kafka, {processes} process(es), failed: {first} (its log: "
                     f"{bench.log_dir})")
        return None


# --- Quix Streams -------------------------------------------------------------------------------

def quix_python(venv: Path) -> Path:
    """The interpreter of ``venv`` with quixstreams QUIX_VERSION, made on first use (python -m venv,
    pip install): its own environment, so its pins never touch ours."""
    python = venv / "bin" / "python"
    if quix_version(python) == QUIX_VERSION:
        return python
    say(f"      installing quixstreams=={QUIX_VERSION} into {venv} (first use; about 150 MB)")
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True,
                           timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"quixstreams=={QUIX_VERSION}"],
                       check=True, capture_output=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        reason = detail.decode(errors="replace").strip().splitlines()[-1:] or [str(exc)]
        raise UserError(f"could not install quixstreams into {venv}: {reason[0]}") from None
    if quix_version(python) != QUIX_VERSION:
        raise UserError(f"{venv}: quixstreams {QUIX_VERSION} does not import after installing it")
    return python


def quix_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run([str(python), "-c", "import quixstreams; print(quixstreams.__version__)"],
                           capture_output=True, text=True, timeout=120)
    return probe.stdout.strip() if probe.returncode == 0 else None


def quix_accounting(row: dict, events: int) -> bool:
    """Every input record consumed and counted once as kept, filtered or invalid, and every kept
    one on the output topic (at least once)."""
    return (row["consumed"] == events == row["valid"] + row["filtered"] + row["invalid"]
            and row["outputs"] >= row["valid"] and row["output_records"] >= row["valid"])


def step_quix(bench: Bench, topic: str, notes: list[str]) -> dict | None:
    """The Quix Streams app (quix_app.py) on the same input, measured like the other children."""
    args = bench.args
    bench.announce(f"Quix Streams {QUIX_VERSION} app doing the same job (state per user, group_by device, "
                   "counts per version and locale)")
    if args.quix == "skip":
        say("      skipped: --quix skip")
        notes.append("Quix Streams app skipped (--quix skip)")
        return None
    try:
        python = quix_python(Path(args.quix_venv))
    except UserError as exc:
        say(f"      skipped: {exc}")
        notes.append(f"Quix Streams app skipped: {exc}")
        return None
    out = bench.name("quix-out")
    bench.create_topics(TopicSpec(out, "benchmark output", configs={"compression.type": "producer"}))
    group = bench.name("quix")
    bench.groups.append(group)
    state_dir = Path(args.out_dir) / "peers" / "quix-state" / bench.run_id
    cmd = [str(python), str(QUIX_APP), "--bootstrap-servers", bench.bootstrap, "--input-topic", topic,
           "--output-topic", out, "--group", group, "--state-dir", str(state_dir),
           "--expected", str(args.events), "--idle-stop", str(QUIX_IDLE_STOP_S)]
    usage = MachineUsage.start(bench.bootstrap)
    try:
        child = Child("quix app", cmd, bench.log_dir)
        row = python_run(bench, f"Quix Streams {QUIX_VERSION} app", "quix", child, group=group)
    finally:
        _forget_quix_topics(bench, group)
        shutil.rmtree(state_dir, ignore_errors=True)  # RocksDB files: the run's only, like its topics
    row["machine"] = usage.finish(row["cpu_s"])
    row["output_records"] = sum(end_offsets(bench.bootstrap, out).values())
    row["accounting_ok"] = quix_accounting(row, args.events)
    say(f"      kept {row['valid']:,}, filtered {row['filtered']:,}, invalid (dropped) {row['invalid']:,}; "
        f"output topic {row['output_records']:,}; accounting {'ok' if row['accounting_ok'] else 'MISMATCH'}")
    return row


def _forget_quix_topics(bench: Bench, group: str) -> None:
    """Quix names its repartition and changelog topics after the group: delete them with the run's."""
    from loginpipe.kafka.admin import admin_client

    admin = admin_client(bench.bootstrap)
    try:
        bench.topics.extend(t for t in admin.list_topics() if group in t and t not in bench.topics)
    finally:
        admin.close()
