"""The pure core's cost per event: instructions under callgrind (repeatable) or CPU time (noisy).

    .venv/bin/python scripts/callgrind_core.py               # instructions per event (callgrind)
    .venv/bin/python scripts/callgrind_core.py --cpu 200000  # CPU µs per event, process_time
    .venv/bin/python scripts/callgrind_core.py --annotate    # also the top functions (callgrind_annotate)

Events come from the generator (``loginpipe.local.generator``, fixed seed and clock) and go
through ``process_batch`` in polls of 2,000 records over 4 partitions, keyed by user as the
generator keys them, with the runtime's GC settings. Callgrind counts everything, start-up
included, so the figure is the marginal cost: (instructions at 20,000 events - at 10,000) / 10,000.
Both runs load the same 20,000 events, so loading them cancels out too.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loginpipe.core.batch import LocalState, Topology, process_batch  # noqa: E402
from loginpipe.core.events import RawRecord  # noqa: E402
from loginpipe.core.records import Routes  # noqa: E402
from loginpipe.local.generator import EventGenerator  # noqa: E402

PARTITIONS = 4
POLL = 2_000  # the runtime's default max_poll_records
START_S = 1_700_000_000.0
STEP_S = 0.001  # one event per millisecond of event time: 20,000 events span 20 seconds
TOPOLOGY = Topology(Routes("out", "dlq", keep_partition=True, partitions=PARTITIONS))


def generate(count: int, seed: int = 7) -> list[tuple[int, bytes, bytes, int]]:
    """(partition, key, value, timestamp ms) of ``count`` generated records."""
    clock_s = [START_S]

    def clock() -> float:
        clock_s[0] += STEP_S
        return clock_s[0]

    rows = []
    for record in EventGenerator(seed=seed).generate(count, clock=clock):
        # Partitioned by a hash of the key, as a keyed producer does (which hash does not matter here).
        rows.append((zlib.crc32(record.key) % PARTITIONS, record.key, record.value, int(clock_s[0] * 1000)))
    return rows


def raw_records(rows: list[tuple[int, bytes, bytes, int]]) -> list[RawRecord]:
    offsets = [0] * PARTITIONS
    records = []
    for partition, key, value, timestamp in rows:
        records.append(RawRecord("logins", partition, offsets[partition], timestamp, key, value))
        offsets[partition] += 1
    return records


def run(records: list[RawRecord]) -> int:
    """Every record through the core in polls of POLL; the number of outputs."""
    gc.freeze()  # as the runtime does (runtime.app.tune_gc)
    gc.set_threshold(50_000, 20, 100)
    state, outputs = LocalState(), 0
    now_s = START_S + len(records) * STEP_S + 0.5
    for start in range(0, len(records), POLL):
        outputs += len(process_batch(records[start:start + POLL], state, TOPOLOGY, now_s).outputs)
    return outputs


def callgrind_instructions(events_file: str, count: int, out_file: str) -> int:
    """Total instructions of a child that runs the first ``count`` events under callgrind."""
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
                    sys.executable, __file__, "--child", events_file, str(count)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    text = Path(out_file).read_text()
    match = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
    if match is None:
        raise SystemExit(f"no totals in {out_file}")
    return int(match.group(1))


def measure_instructions(small: int, large: int, annotate: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        events_file = os.path.join(folder, "events.pickle")
        Path(events_file).write_bytes(pickle.dumps(generate(large)))
        totals = {}
        for count in (small, large):
            totals[count] = callgrind_instructions(events_file, count, os.path.join(folder, f"cg.{count}"))
            print(f"{count:>7,} events: {totals[count]:,} instructions", flush=True)
        per_event = (totals[large] - totals[small]) / (large - small)
        print(f"marginal: {per_event:,.0f} instructions per event")
        if annotate:
            report = subprocess.run(["callgrind_annotate", os.path.join(folder, f"cg.{large}")],
                                    check=True, capture_output=True, text=True).stdout
            print("\n".join(report.splitlines()[:80]))


def measure_cpu(count: int, rounds: int) -> None:
    records = raw_records(generate(count))
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        run(records)
        best = min(best, time.process_time() - started)
        gc.unfreeze()
        gc.collect()
    print(f"{count:,} events: best of {rounds}: {best:.3f} CPU s, {best / count * 1e6:.2f} µs per event")


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        rows = pickle.loads(Path(sys.argv[2]).read_bytes())
        records = raw_records(rows)  # all of them in both runs: the difference is processing only
        run(records[:int(sys.argv[3])])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=20_000)
    parser.add_argument("--annotate", action="store_true",
                        help="print callgrind_annotate's top functions (self cost)")
    parser.add_argument("--cpu", type=int, metavar="EVENTS", help="measure CPU time instead, over EVENTS")
    parser.add_argument("--rounds", type=int, default=3, help="with --cpu: best of this many runs")
    args = parser.parse_args()
    if args.cpu:
        measure_cpu(args.cpu, args.rounds)
    else:
        measure_instructions(args.small, args.large, args.annotate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
