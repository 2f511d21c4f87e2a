"""A real single-node Apache Kafka (KRaft) broker on 127.0.0.1, fetched from Maven Central.

For machines without Docker. The jars come from the official ``org.apache.kafka`` artifacts
(see ``maven/pom.xml``); data, logs and the pid file live under one ignored folder.

    python -m loginpipe.local.broker start|stop|status|logs|fetch
    python -m loginpipe.local.broker start --secure [--secure-only] [--mtls]

``--secure`` adds a SASL_SSL listener (SCRAM-SHA-512 over TLS) and turns ACLs on; its CA, users
and client properties files are in ``<home>/secrets`` (see ``secrets.py``).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loginpipe.cli import EnvArgumentParser, flag, port_number, positive_int, run_cli
from loginpipe.errors import UserError
from loginpipe.local.background import Background, log_tail
from loginpipe.local.secrets import (
    ADMIN_USER,
    PIPELINE_USER,
    SCRAM_LOGIN_MODULE,
    SCRAM_MECHANISM,
    USERS,
    Secrets,
    client_settings,
    generate,
    grant,
    local_broker_acls,
    write_client_files,
)
from loginpipe.waiting import wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout (site-packages when installed)
POM = Path(__file__).resolve().parent / "maven" / "pom.xml"


def default_home(root: Path = PROJECT_ROOT) -> Path:
    """The broker's folder (jars, data, logs): ``.kafka/`` in a source checkout, where the Makefile
    and the tests look; for an installed package, whose folder may be read-only and is replaced on
    upgrade, the user's cache folder."""
    if (root / "pyproject.toml").is_file():
        return root / ".kafka"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "loginpipe" / "kafka"


DEFAULT_HOME = default_home()
DEFAULT_PORT = 29092
DEFAULT_CONTROLLER_PORT = 29093
DEFAULT_SECURE_PORT = 29094
DEFAULT_MTLS_PORT = 29095
DEFAULT_HEAP_MB = 768
START_TIMEOUT_S = 60.0


def kafka_version() -> str:
    """The Kafka version pinned in the pom."""
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    return match.group(1) if match else "unknown"


def broker_answers(bootstrap_servers: str, timeout_s: float = 3.0,
                   settings: Mapping[str, Any] | None = None) -> bool:
    """True when a broker at ``bootstrap_servers`` answers a metadata request; ``settings`` are
    kafka-python's security options (``secrets.client_settings``), which may name the servers too."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = int(timeout_s * 1000)
    options = {"bootstrap_servers": bootstrap_servers, **(settings or {})}
    try:
        admin = KafkaAdminClient(
            **options,
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
    secure: bool = False  # also a SASL_SSL listener, users and ACLs
    secure_port: int = DEFAULT_SECURE_PORT
    secure_only: bool = False  # no PLAINTEXT listener for clients at all
    mtls_port: int | None = None  # a mutual-TLS listener (client certificates) on this port

    def __post_init__(self) -> None:
        # Both build on the secure setup: its CA signs the client certificates, its users own the ACLs.
        if self.secure_only or self.mtls_port is not None:
            self.secure = True

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    @property
    def mtls_bootstrap_servers(self) -> str | None:
        return None if self.mtls_port is None else f"127.0.0.1:{self.mtls_port}"

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

    @property
    def secrets(self) -> Secrets:
        return Secrets(self.home / "secrets")

    def client_listeners(self) -> dict[str, str]:
        """Listener name -> address, of the listeners clients may use in this broker's mode."""
        listeners = {} if self.secure_only else {"PLAINTEXT": self.bootstrap_servers}
        if self.secure:
            listeners["SASL_SSL"] = self.secure_bootstrap_servers
        if self.mtls_bootstrap_servers:
            listeners["MTLS"] = self.mtls_bootstrap_servers
        return listeners

    def running_listeners(self) -> dict[str, str]:
        """The client listeners of the broker as it was last started (its properties file)."""
        try:
            text = self.properties_file.read_text()
        except OSError:
            return {}
        match = re.search(r"^listeners=(.*)$", text, re.M)
        found = dict(item.split("://", 1) for item in match.group(1).split(",")) if match else {}
        found.pop("CONTROLLER", None)
        return found

    @property
    def process(self) -> Background:
        # A recycled pid belongs to some other program: only ours names our properties file.
        return Background(self.pid_file, self.log_file, str(self.properties_file))

    def pid(self) -> int | None:
        """The broker's pid when our broker process is alive, else None."""
        return self.process.pid()

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout_s: float = START_TIMEOUT_S, quiet: bool = False) -> str:
        """Start the broker (idempotent) and return once it answers a metadata request; in secure
        mode, once its users and ACLs are in place and the pipeline's user is let in."""
        if self.is_running():
            return self._already_running()
        for port in self._ports():
            if not port_is_free(port):
                raise UserError(f"port {port} is already in use by another program; stop it or choose "
                                f"other ports (--port/--controller-port/--secure-port/--mtls-port)")
        ensure_jars(self.libs_dir, quiet=quiet)
        secrets, users_missing = self._prepare_secrets() if self.secure else (None, False)
        self._write_config(secrets)
        self._format_storage(secrets)
        started = time.monotonic()
        deadline = started + timeout_s
        proc = self._launch()
        self._wait_for(proc, self._probe_settings(), deadline)
        if secrets is not None:
            try:
                self._provision(proc, secrets, users_missing, deadline)
            except BaseException:
                self.stop()  # half provisioned is no state to leave running
                raise
        message = (f"started Kafka {kafka_version()} at {_describe(self.client_listeners())} "
                   f"(pid {proc.pid}) in {time.monotonic() - started:.1f}s")
        return message + self._secrets_note()

    def _ports(self) -> list[int]:
        return [int(address.rpartition(":")[2]) for address in self.client_listeners().values()] + [
            self.controller_port]

    def _already_running(self) -> str:
        """Idempotent start; a one-line error when the running broker lacks what was asked for."""
        running = self.running_listeners()
        differences = [f"no {name} listener" for name in self.client_listeners() if name not in running]
        if self.secure_only and "PLAINTEXT" in running:
            differences.append("a PLAINTEXT listener (--secure-only has none)")
        if differences:
            raise UserError(f"the broker running at {_describe(running)} (pid {self.pid()}) has "
                            f"{' and '.join(differences)}: stop it first (python -m loginpipe.local.broker "
                            f"stop), then start it with these options")
        return f"already running at {_describe(running)} (pid {self.pid()})" + self._secrets_note()

    def _secrets_note(self) -> str:
        """Where a client finds its settings (never the passwords themselves)."""
        if not self.secure:
            return ""
        secrets = self.secrets
        return (f"\n  pipeline user {PIPELINE_USER}: {secrets.properties_file(PIPELINE_USER)}"
                f"\n  admin user {ADMIN_USER}: {secrets.properties_file(ADMIN_USER)}"
                f"\n  CA certificate: {secrets.ca_file}")

    def _prepare_secrets(self) -> tuple[Secrets, bool]:
        """This storage's secrets, and whether its SCRAM users still have to be created.

        Secrets belong to one storage format: new storage gets new ones (its users are created by
        the format); storage formatted earlier without them (a plain start) gets new ones too, whose
        users are created once the broker runs (``_provision``). Otherwise they are reused."""
        cluster_id = self._cluster_id()
        secrets = self.secrets
        users_missing = cluster_id is not None and not secrets.belongs_to(cluster_id)
        if users_missing and self.secure_only:
            # Creating them needs a listener that lets us in without them: the PLAINTEXT one.
            raise UserError(f"the storage in {self.data_dir} has no users yet: start it once with --secure "
                            f"(which keeps PLAINTEXT and creates them), stop it, then use --secure-only")
        if cluster_id is None or users_missing:
            secrets = generate(secrets.dir)
        write_client_files(secrets, self.secure_bootstrap_servers, self.mtls_bootstrap_servers)
        return secrets, users_missing

    def _cluster_id(self) -> str | None:
        """The formatted storage's cluster id; None before the first format."""
        try:
            text = (self.data_dir / "meta.properties").read_text()
        except OSError:
            return None
        match = re.search(r"^cluster\.id=(\S+)", text, re.M)
        return match.group(1) if match else None

    def _probe_settings(self) -> dict[str, Any]:
        """How to ask the broker whether it answers: over PLAINTEXT when it has it, else as the admin."""
        if not self.secure_only:
            return {"bootstrap_servers": self.bootstrap_servers}
        return client_settings(self.secrets.properties_file(ADMIN_USER))

    def _launch(self) -> subprocess.Popen:
        return self.process.launch(self._java("kafka.Kafka", str(self.properties_file)))

    def _wait_for(self, proc: subprocess.Popen, settings: dict[str, Any], deadline: float) -> None:
        """Return once the broker answers with ``settings``; stop it and raise if it exits or never does."""
        address = settings["bootstrap_servers"]

        def answered_or_exited() -> bool:
            return proc.poll() is not None or broker_answers(address, timeout_s=1.0, settings=settings)

        wait_until(answered_or_exited, max(deadline - time.monotonic(), 0.0), interval_s=0.2)
        if proc.poll() is not None:
            self.pid_file.unlink(missing_ok=True)
            raise UserError(f"the broker exited with code {proc.returncode}; log tail:\n{self.tail()}")
        if not broker_answers(address, timeout_s=1.0, settings=settings):
            self.stop()
            who = f" to user {settings['sasl_plain_username']}" if "sasl_plain_username" in settings else ""
            raise UserError(f"the broker did not answer at {address}{who} in time; log tail:\n{self.tail()}")

    def _provision(self, proc: subprocess.Popen, secrets: Secrets, users_missing: bool,
                   deadline: float) -> None:
        """Users (when the storage predates them), then ACLs, then wait for the pipeline's user."""
        if users_missing:
            _create_users(self.bootstrap_servers, secrets)
            cluster_id = self._cluster_id()
            assert cluster_id is not None  # the broker runs: its storage is formatted
            secrets.mark_owner(cluster_id)
        admin = client_settings(secrets.properties_file(ADMIN_USER))
        self._wait_for(proc, admin, deadline)  # new credentials reach the broker a moment after creation
        for user, acls in local_broker_acls().items():
            grant(admin, f"User:{user}", acls)
        self._wait_for(proc, client_settings(secrets.properties_file(PIPELINE_USER)), deadline)

    def start_or_reuse(self) -> str:
        """Start this broker, or use a Kafka that already answers on its port (compose, another
        checkout) rather than fail on the port."""
        if not self.is_running() and broker_answers(self.bootstrap_servers, timeout_s=2.0):
            return f"a Kafka broker already answers at {self.bootstrap_servers}: using it"
        return self.start()

    def stop(self, timeout_s: float = 20.0) -> str:
        """Stop cleanly with SIGTERM; SIGKILL after ``timeout_s``."""
        return self.process.stop(timeout_s)

    def kill(self) -> str:
        """Kill the broker at once (SIGKILL, as a crash would): for outage tests."""
        return self.process.kill()

    def status(self) -> str:
        """Which listeners the running broker has, and whether it answers on the first of them."""
        pid = self.pid()
        if pid is None:
            return "not running"
        running = self.running_listeners()
        if "PLAINTEXT" in running:
            settings: dict[str, Any] = {"bootstrap_servers": running["PLAINTEXT"]}
        else:  # secure-only: ask as the admin, whose settings name the SASL_SSL listener
            settings = client_settings(self.secrets.properties_file(ADMIN_USER))
        health = "answering" if broker_answers(settings["bootstrap_servers"], settings=settings) else \
            "not answering"
        return f"running at {_describe(running)} (pid {pid}), {health}"

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log_file, lines, "(no broker log yet)")

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

    def _write_config(self, secrets: Secrets | None = None) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        text = _server_properties(self) + (_security_properties(self, secrets) if secrets else "")
        # In secure-only mode it holds the admin's password (the broker's own login): owner only.
        fd = os.open(self.properties_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        self.properties_file.chmod(0o600)
        (self.home / "log4j2.properties").write_text(_LOG4J2)

    def _format_storage(self, secrets: Secrets | None = None) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # KIP-900: SCRAM users written with the first metadata, so they exist before the broker
        # starts (secure-only needs the admin's for its own inter-broker login). StorageTool takes
        # them on its command line only, visible to local `ps` for the second it runs; the salted
        # form it also accepts would be no safer, as a SCRAM salted password logs in as well.
        scram = [arg for user in USERS for arg in
                 ("--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={secrets.password(user)}]")
                 ] if secrets else []
        result = subprocess.run(
            # "=" form: a random id may start with "-", which would read as a flag.
            self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                       "-c", str(self.properties_file), "--standalone", *scram),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise UserError(f"could not format broker storage:\n{_redact(result.stdout + result.stderr)}")
        if secrets:
            secrets.mark_owner(cluster_id)


def _describe(listeners: Mapping[str, str]) -> str:
    """``127.0.0.1:29092`` for a plain broker; each address with its protocol otherwise."""
    if list(listeners) == ["PLAINTEXT"]:
        return listeners["PLAINTEXT"]
    names = {"SASL_SSL": f"SASL_SSL, {SCRAM_MECHANISM}", "MTLS": "SSL, client certificates"}
    return ", ".join(f"{address} ({names.get(name, name)})" for name, address in listeners.items())


def _redact(text: str) -> str:
    """A tool's output without the passwords our command line gave it."""
    return re.sub(r"password=[^\]\s,]*", "password=***", text)


def _create_users(plaintext_bootstrap: str, secrets: Secrets) -> None:
    """SCRAM users in storage formatted without them. Over PLAINTEXT, whose principal ANONYMOUS is
    a super user: kafka-python's admin speaks AlterUserScramCredentials (KIP-554) itself, which
    saves a JVM start of ConfigCommand and keeps the passwords off any command line."""
    from kafka import KafkaAdminClient
    from kafka.admin import UserScramCredentialUpsertion

    admin = KafkaAdminClient(bootstrap_servers=plaintext_bootstrap)
    try:
        errors = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(user, SCRAM_MECHANISM, secrets.password(user)) for user in USERS])
    finally:
        admin.close()
    failed = {user: error for user, error in errors.items() if error}
    if failed:
        raise UserError(f"could not create the SCRAM users: {failed}")


def _server_properties(broker: LocalBroker) -> str:
    clients = ",".join(f"{name}://{address}" for name, address in broker.client_listeners().items())
    # Secure-only: brokers talk to each other over SASL_SSL as the admin (_security_properties),
    # rather than over a hidden PLAINTEXT listener, which would be a way around authentication.
    inter_broker = "SASL_SSL" if broker.secure_only else "PLAINTEXT"
    return f"""\
# Written by loginpipe.local.broker: one local KRaft node acting as broker and controller.
process.roles=broker,controller
node.id=1
listeners={clients},CONTROLLER://127.0.0.1:{broker.controller_port}
advertised.listeners={clients}
controller.listener.names=CONTROLLER
inter.broker.listener.name={inter_broker}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,MTLS:SSL
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


def _security_properties(broker: LocalBroker, secrets: Secrets) -> str:
    # The broker logs in to itself as the admin only in secure-only mode (inter-broker over SASL_SSL);
    # otherwise the listener's login module needs no user of its own.
    own_login = (f' username="{ADMIN_USER}" password="{secrets.password(ADMIN_USER)}"'
                 if broker.secure_only else "")
    text = f"""\
# --- start --secure: SASL_SSL with {SCRAM_MECHANISM}, TLS keys in PEM, ACLs (loginpipe/local/secrets.py)
sasl.enabled.mechanisms={SCRAM_MECHANISM}
listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config={SCRAM_LOGIN_MODULE} required{own_login};
ssl.keystore.type=PEM
ssl.keystore.location={secrets.broker_keystore.resolve()}
ssl.truststore.type=PEM
ssl.truststore.location={secrets.ca_file.resolve()}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
# ANONYMOUS is whoever comes over PLAINTEXT: the client listener (local plaintext work keeps working
# unchanged) and the controller listener, where this node's broker registers with its controller
# and so needs cluster rights. In secure-only mode the controller port (127.0.0.1 only) thus stays an
# unauthenticated door for local processes: closing it would need SASL or TLS on the controller too.
super.users=User:{ADMIN_USER};User:ANONYMOUS
"""
    if broker.secure_only:
        text += f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}\n"
    if broker.mtls_port is not None:
        # A certificate whose subject is CN=loginpipe is User:loginpipe, so the same ACLs apply.
        text += ("listener.name.mtls.ssl.client.auth=required\n"
                 "ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT\n")
    return text


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
    parser.add_env_argument("--port", env="KAFKA_PORT", type=port_number, default=DEFAULT_PORT,
                            help="client (PLAINTEXT) port")
    parser.add_env_argument("--controller-port", env="KAFKA_CONTROLLER_PORT", type=port_number,
                            default=DEFAULT_CONTROLLER_PORT, help="KRaft controller port")
    parser.add_env_argument("--heap-mb", env="KAFKA_HEAP_MB", type=positive_int, default=DEFAULT_HEAP_MB,
                            help="JVM heap cap in MiB")
    parser.add_env_argument("--secure", env="KAFKA_SECURE", type=flag, default=False, nargs="?", const=True,
                            help="with 'start': also a SASL_SSL listener (SCRAM-SHA-512 over TLS), users "
                                 "and ACLs; client settings in <home>/secrets")
    parser.add_env_argument("--secure-only", env="KAFKA_SECURE_ONLY", type=flag, default=False, nargs="?",
                            const=True, help="like --secure, without the PLAINTEXT listener")
    parser.add_env_argument("--secure-port", env="KAFKA_SECURE_PORT", type=port_number,
                            default=DEFAULT_SECURE_PORT, help="SASL_SSL port")
    parser.add_env_argument("--mtls", env="KAFKA_MTLS", type=flag, default=False, nargs="?", const=True,
                            help="like --secure, plus a mutual-TLS listener (client certificates)")
    parser.add_env_argument("--mtls-port", env="KAFKA_MTLS_PORT", type=port_number, default=DEFAULT_MTLS_PORT,
                            help="mutual-TLS port")
    parser.add_argument("--lines", type=positive_int, default=50, help="with 'logs': how many lines")
    return parser


def port_clash(args: argparse.Namespace) -> str | None:
    """Two listeners asked to share a port (the broker would fail a minute later): which ones."""
    used = {"--port": args.port, "--controller-port": args.controller_port}
    if args.secure or args.secure_only or args.mtls:
        used["--secure-port"] = args.secure_port
    if args.mtls:
        used["--mtls-port"] = args.mtls_port
    seen: dict[int, str] = {}
    for name, port in used.items():
        if port in seen:
            return f"{seen[port]} and {name} are both {port}: each listener needs its own port"
        seen[port] = name
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    clash = port_clash(args) if args.command == "start" else None
    if clash:
        parser.error(clash)
    broker = LocalBroker(Path(args.home), args.port, args.controller_port, args.heap_mb,
                         secure=args.secure, secure_port=args.secure_port, secure_only=args.secure_only,
                         mtls_port=args.mtls_port if args.mtls else None)
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
