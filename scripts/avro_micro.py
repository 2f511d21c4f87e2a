"""Per-record cost of writing a processed record: orjson, fastavro (core/avro.py), confluent-kafka's
AvroSerializer. The figures behind the choice of the Avro library (docs/performance.md).

    .venv/bin/python scripts/avro_micro.py                 # CPU µs per record, 50,000 records
    .venv/bin/python scripts/avro_micro.py --callgrind     # instructions per record (repeatable)
    .venv/bin/python scripts/avro_micro.py --records 20000 --schema-registry-url http://127.0.0.1:18081/apis/ccompat/v7

Without --schema-registry-url (or $SCHEMA_REGISTRY_URL) it uses the local registry when one answers
on its default port, else starts one on a free port and stops it after. confluent-kafka's
schema-registry packages are installed on first use into bench-results/peers/confluent-sr
(``--confluent skip`` leaves that serializer out). `make bench` runs the CPU measure too.

--callgrind counts instructions under valgrind: each serializer in a process of its own encoding
the first N and then 2N records (the records are made once, outside valgrind, and loaded whole
in both runs); the marginal cost is (I(2N) - I(N)) / N, start-up and the registry calls cancelled.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loginpipe.benchmark.avro import bench_registry  # noqa: E402
from loginpipe.benchmark.serializers import (  # noqa: E402
    CONFLUENT_SR_DIR,
    ENCODER_KEYS,
    build_encoder,
    ensure_confluent_sr,
    processed_records,
    run_measure,
    table,
)
from loginpipe.cli import EnvArgumentParser, positive_int, run_cli  # noqa: E402
from loginpipe.errors import UserError  # noqa: E402


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(prog="scripts/avro_micro.py", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=positive_int, default=None,
                        help="processed records to encode (default 50,000; with --callgrind N = 5,000)")
    parser.add_argument("--seed", type=int, default=7, help="generator seed")
    parser.add_env_argument("--schema-registry-url", env="SCHEMA_REGISTRY_URL", default=None,
                            help="the registry to register the contract with (a fresh subject)")
    parser.add_argument("--confluent", choices=["auto", "skip"], default="auto",
                        help="auto installs confluent-kafka's schema-registry packages on first use")
    parser.add_argument("--callgrind", action="store_true",
                        help="instructions per record instead of CPU time")
    parser.add_argument("--json", action="store_true", help="print the result as JSON, not a table")
    return parser


def callgrind_total(key: str, records_file: Path, count: int, url: str | None, topic: str, out: Path) -> int:
    """Instructions of a child encoding the first ``count`` records with serializer ``key``."""
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
           "--child", key, str(records_file), str(count), url or "", topic]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{key} under callgrind failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    match = re.search(r"^(?:summary|totals):\s+(\d+)", out.read_text(), re.M)
    if match is None:
        raise UserError(f"no instruction total in {out}")
    return int(match.group(1))


def measure_callgrind(count: int, url: str | None, confluent: bool, seed: int) -> list[dict]:
    """Marginal instructions per record of each serializer (those that can run here)."""
    keys = [k for k in ENCODER_KEYS if (url and confluent) or not k.startswith("confluent")]
    topic = f"avro-micro-{uuid.uuid4().hex[:8]}"
    if url:
        from loginpipe.core import avro
        from loginpipe.registry_client import SchemaRegistryClient
        from loginpipe.serde import register_contract

        register_contract(SchemaRegistryClient(url), topic, avro.OUTPUT_SCHEMA, warn=print)
    rows = []
    with tempfile.TemporaryDirectory(prefix="avro-micro-") as tmp:
        records_file = Path(tmp) / "records.pickle"
        records_file.write_bytes(pickle.dumps(processed_records(2 * count, seed)))
        for key in keys:
            small, large = (callgrind_total(key, records_file, n, url, topic, Path(tmp) / f"cg.{key}.{n}")
                            for n in (count, 2 * count))
            rows.append({"serializer": key, "instructions_per_record": round((large - small) / count)})
            print(f"{key}: {rows[-1]['instructions_per_record']:,} instructions per record", flush=True)
    return rows


def child(key: str, records_file: str, count: int, url: str, topic: str) -> int:
    """Encode the first ``count`` records (all are loaded either way) with serializer ``key``."""
    if CONFLUENT_SR_DIR.is_dir():
        sys.path.append(str(CONFLUENT_SR_DIR))
    records = pickle.loads(Path(records_file).read_bytes())
    encode = build_encoder(key, url or None, topic)
    for record in records[:count]:
        encode(record)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        key, records_file, count, url, topic = argv[1:6]
        return child(key, records_file, int(count), url, topic)
    args = build_parser().parse_args(argv)
    why = ensure_confluent_sr() if args.confluent == "auto" else "--confluent skip"
    if why:
        print(f"confluent-kafka AvroSerializer left out: {why}", file=sys.stderr)
    else:
        sys.path.append(str(CONFLUENT_SR_DIR))  # after ours: only what we lack comes from there
    with tempfile.TemporaryDirectory(prefix="avro-micro-") as tmp, \
            bench_registry(args.schema_registry_url, Path(tmp)) as registry:
        if registry.url is None:
            print(f"Avro serializers left out: {registry.how}", file=sys.stderr)
        if args.callgrind:
            rows = measure_callgrind(args.records or 5_000, registry.url, why is None, args.seed)
            print(json.dumps(rows, indent=2) if args.json else "")
            return 0
        # a fresh topic name: its subject collides with nobody's
        result = run_measure(args.records or 50_000, registry.url, f"avro-micro-{uuid.uuid4().hex[:8]}",
                             args.seed, confluent=why is None)
    print(json.dumps(result, indent=2) if args.json else "\n".join(table(result)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same hashing in both callgrind runs
    sys.exit(run_cli(main))
