"""A real single-node Apache Kafka (KRaft) broker on 127.0.0.1, fetched from Maven Central.

For machines without Docker. The jars come from the official ``org.apache.kafka`` artifacts
(see ``maven/pom.xml``); data, logs and the pid file live under one ignored folder.

    python -m loginpipe.local.broker start|stop|status|logs|fetch
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from loginpipe.cli import EnvArgumentParser, run_cli
from loginpipe.errors import UserError
from loginpipe.waiting import wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POM = Path(__file__).resolve().parent / "maven" / "pom.xml"
DEFAULT_HOME = PROJECT_ROOT / ".kafka"
DEFAULT_PORT = 29092
DEFAULT_CONTROLLER_PORT = 29093
DEFAULT_HEAP_MB = 768
START_TIMEOUT_S = 60.0


def kafka_version() -> str:
    """The Kafka version pinned in the pom."""
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    return match.group(1) if match else "unknown"


def broker_answers(bootstrap_servers: str, timeout_s: float = 3.0) -> bool:
    """True when a broker at ``bootstrap_servers`` answers a metadata request."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
            reconnect_backoff_max_ms=500,
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.describe_cluster()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_jars(libs: Path, quiet: bool = False) -> Path:
    """Fetch Kafka's jars with Maven into ``libs`` unless they are already there."""
    marker = libs / f".complete-{kafka_version()}"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise UserError("Maven ('mvn') is not installed: it is needed once to fetch Kafka's jars")
    if not quiet:
        print(f"fetching Apache Kafka {kafka_version()} from Maven Central into {libs} ...", flush=True)
    if libs.exists():
        shutil.rmtree(libs)
    cmd = [
        "mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}", "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise UserError(f"could not fetch Kafka with Maven:\n{tail}")
    marker.touch()
    if not quiet:
        print(f"fetched {sum(1 for _ in libs.glob('*.jar'))} jars", flush=True)
    return libs


@dataclass
class LocalBroker:
    """One KRaft broker+controller process whose files all live under ``home``."""

    home: Path = DEFAULT_HOME
    port: int = DEFAULT_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    heap_mb: int = DEFAULT_HEAP_MB
    libs: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def libs_dir(self) -> Path:
        return self.libs or self.home / "libs"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def properties_file(self) -> Path:
        return self.home / "server.properties"

    def pid(self) -> int | None:
        """The broker's pid when our broker process is alive, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # A recycled pid belongs to some other program: only ours names our properties file.
        if str(self.properties_file).encode() not in cmdline:
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout_s: float = START_TIMEOUT_S, quiet: bool = False) -> str:
        """Start the broker (idempotent) and return once it answers a metadata request."""
        if self.is_running():
            return f"already running at {self.bootstrap_servers} (pid {self.pid()})"
        for port in (self.port, self.controller_port):
            if not port_is_free(port):
                raise UserError(f"port {port} is already in use by another program; "
                                f"stop it or choose other ports (--port/--controller-port)")
        ensure_jars(self.libs_dir, quiet=quiet)
        self._write_config()
        self._format_storage()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.properties_file)),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl+C in the caller's terminal must not kill the broker
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        def answered_or_exited() -> bool:
            return proc.poll() is not None or broker_answers(self.bootstrap_servers, timeout_s=1.0)

        wait_until(answered_or_exited, timeout_s, interval_s=0.2)
        if proc.poll() is not None:
            self.pid_file.unlink(missing_ok=True)
            raise UserError(f"the broker exited with code {proc.returncode}; log tail:\n{self.tail()}")
        if broker_answers(self.bootstrap_servers, timeout_s=1.0):
            return (f"started Kafka {kafka_version()} at {self.bootstrap_servers} "
                    f"(pid {proc.pid}) in {time.monotonic() - started:.1f}s")
        self.stop()
        raise UserError(f"the broker did not answer within {timeout_s:.0f}s; log tail:\n{self.tail()}")

    def start_or_reuse(self) -> str:
        """Start this broker, or use a Kafka that already answers on its port (compose, another
        checkout) rather than fail on the port."""
        if not self.is_running() and broker_answers(self.bootstrap_servers, timeout_s=2.0):
            return f"a Kafka broker already answers at {self.bootstrap_servers}: using it"
        return self.start()

    def stop(self, timeout_s: float = 20.0) -> str:
        """Stop cleanly with SIGTERM; SIGKILL after ``timeout_s``."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        os.kill(pid, signal.SIGTERM)
        how = "stopped"
        if not _wait_for_exit(pid, timeout_s):
            os.kill(pid, signal.SIGKILL)
            _wait_for_exit(pid, 5.0)
            how = f"killed after {timeout_s:.0f}s"
        self.pid_file.unlink(missing_ok=True)
        return f"{how} (pid {pid})"

    def kill(self) -> str:
        """Kill the broker at once (SIGKILL, as a crash would): for outage tests."""
        pid = self.pid()
        if pid is None:
            return "not running"
        os.kill(pid, signal.SIGKILL)
        _wait_for_exit(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)
        return f"killed (pid {pid})"

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            return "not running"
        health = "answering" if broker_answers(self.bootstrap_servers) else "not answering"
        return f"running at {self.bootstrap_servers} (pid {pid}), {health}"

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log yet)"

    def dump_log_segments(self, topic: str) -> str:
        """Kafka's own DumpLogSegments over every segment of ``topic`` (shows each batch's codec)."""
        segments = sorted(str(p) for p in self.data_dir.glob(f"{topic}-*/*.log"))
        if not segments:
            return ""
        result = subprocess.run(self._java("kafka.tools.DumpLogSegments", "--files", ",".join(segments)),
                                capture_output=True, text=True)
        return result.stdout

    def _java(self, main_class: str, *args: str) -> list[str]:
        return [
            "java", f"-Xmx{self.heap_mb}m", f"-Xms{min(self.heap_mb, 256)}m",
            "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp", f"{self.libs_dir}/*", main_class, *args,
        ]

    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.properties_file.write_text(_server_properties(self))
        (self.home / "log4j2.properties").write_text(_LOG4J2)

    def _format_storage(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(
            # "=" form: a random id may start with "-", which would read as a flag.
            self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                       "-c", str(self.properties_file), "--standalone"),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise UserError(f"could not format broker storage:\n{result.stdout}{result.stderr}")


def _wait_for_exit(pid: int, timeout_s: float) -> bool:
    return bool(wait_until(lambda: not _alive(pid), timeout_s, interval_s=0.1))


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child (tests start brokers in-process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _server_properties(broker: LocalBroker) -> str:
    return f"""\
# Written by loginpipe.local.broker: one local KRaft node acting as broker and controller.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:{broker.port},CONTROLLER://127.0.0.1:{broker.controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{broker.port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:{broker.controller_port}
log.dirs={broker.data_dir}
num.partitions=4
# Topics are created on purpose by create_kafka_topic.py; a typo must not create a new topic.
auto.create.topics.enable=false
# A single node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# No 3 s wait before a new consumer group's first assignment.
group.initial.rebalance.delay.ms=0
"""


_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(prog="python -m loginpipe.local.broker", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status", "logs", "fetch"])
    parser.add_env_argument("--home", env="KAFKA_HOME_DIR", default=str(DEFAULT_HOME),
                            help="folder for jars, data, logs and pid file")
    parser.add_env_argument("--port", env="KAFKA_PORT", type=int, default=DEFAULT_PORT,
                            help="client (PLAINTEXT) port")
    parser.add_env_argument("--controller-port", env="KAFKA_CONTROLLER_PORT", type=int,
                            default=DEFAULT_CONTROLLER_PORT, help="KRaft controller port")
    parser.add_env_argument("--heap-mb", env="KAFKA_HEAP_MB", type=int, default=DEFAULT_HEAP_MB,
                            help="JVM heap cap in MiB")
    parser.add_argument("--lines", type=int, default=50, help="with 'logs': how many lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    broker = LocalBroker(Path(args.home), args.port, args.controller_port, args.heap_mb)
    if args.command == "start":
        print(broker.start())
    elif args.command == "stop":
        print(broker.stop())
    elif args.command == "status":
        text = broker.status()
        print(text)
        return 0 if text.startswith("running") else 3
    elif args.command == "logs":
        print(broker.tail(args.lines))
    elif args.command == "fetch":
        ensure_jars(broker.libs_dir)
        print(f"Kafka {kafka_version()} jars in {broker.libs_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
