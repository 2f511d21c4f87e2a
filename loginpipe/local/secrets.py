"""Credentials and permissions of the local secure broker (``broker start --secure``).

Everything is generated into ``<home>/secrets/`` (``.kafka`` is git-ignored): a private CA, the
broker's TLS key and certificate, a random SCRAM password per user, and one Kafka client
properties file per user. Secrets belong to one storage format: the broker regenerates them when
it formats its storage anew and reuses them otherwise (see ``Secrets.belongs_to``).

The permissions are data (``pipeline_acls``), so the README can print them as ``kafka-acls``
commands (``acl_commands``) and a broker or a test can apply them (``grant``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from secrets import token_urlsafe
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from loginpipe.errors import UserError
from loginpipe.topics import (
    DEFAULT_GROUP,
    DLQ_TOPIC,
    FILTERED_TOPIC,
    INPUT_TOPIC,
    METRICS_TOPIC,
    OUTPUT_TOPIC,
    SUMMARY_TOPIC,
    InternalTopics,
)

SCRAM_MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "admin"  # a super user: provisions users and ACLs; never the pipeline's identity
PIPELINE_USER = "loginpipe"  # the pipeline's user: only the ACLs of pipeline_acls
NOWRITE_USER = "nowrite"  # like loginpipe minus WRITE on the output topic: shows a missing permission
USERS = (ADMIN_USER, PIPELINE_USER, NOWRITE_USER)
BROKER_HOSTS = ("127.0.0.1", "localhost")
SCRATCH_PREFIX = "test-"  # the tests' unique topic and group names (tests/conftest.py topic_name)
OUTPUT_TOPICS = (OUTPUT_TOPIC, DLQ_TOPIC, FILTERED_TOPIC, SUMMARY_TOPIC, METRICS_TOPIC)
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
_KEY = ec.SECP256R1()  # EC keys: generated in milliseconds, accepted by Java's PEM keystore and OpenSSL
_CA_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)


@dataclass(frozen=True)
class Secrets:
    """The files of one ``secrets`` folder; passwords are read from disk, never kept in logs."""

    dir: Path

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.dir / "ca-key.pem"

    @property
    def broker_keystore(self) -> Path:
        """The broker's key, certificate and CA in one PEM file (``ssl.keystore.location``)."""
        return self.dir / "broker.pem"

    @property
    def other_ca_file(self) -> Path:
        return self.dir / "other-ca.pem"

    def password_file(self, user: str) -> Path:
        return self.dir / f"{user}.password"

    def password(self, user: str) -> str:
        return self.password_file(user).read_text().strip()

    def properties_file(self, user: str) -> Path:
        """Kafka client settings of ``user``: client.properties is the pipeline's own."""
        return self.dir / ("client.properties" if user == PIPELINE_USER else f"{user}.properties")

    def keystore(self, user: str) -> Path:
        """``user``'s mutual-TLS key and certificate in one PEM file."""
        return self.dir / f"{user}-keystore.pem"

    def mtls_properties_file(self, user: str) -> Path:
        return self.dir / f"{user}-mtls.properties"

    @property
    def _owner_file(self) -> Path:
        return self.dir / "cluster-id"

    def belongs_to(self, cluster_id: str) -> bool:
        """True when these secrets were made for (and their users exist in) storage ``cluster_id``."""
        try:
            return self._owner_file.read_text().strip() == cluster_id
        except OSError:
            return False

    def mark_owner(self, cluster_id: str) -> None:
        self._owner_file.write_text(f"{cluster_id}\n")


def generate(directory: Path, users: Sequence[str] = USERS, hosts: Sequence[str] = BROKER_HOSTS) -> Secrets:
    """A new CA, broker certificate, per-user client certificates and passwords, replacing any old ones."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    secrets = Secrets(directory)
    for stale in directory.iterdir():  # nothing of an older format may survive (an old owner, a password)
        if stale.is_file():
            stale.unlink()
    ca_key, ca_cert = make_ca("loginpipe local CA")
    _write_private(secrets.ca_key_file, _key_pem(ca_key))
    _write_public(secrets.ca_file, _cert_pem(ca_cert))
    broker_key, broker_cert = issue_cert(ca_key, ca_cert, hosts[0], hosts=hosts)
    chain = _cert_pem(broker_cert) + _cert_pem(ca_cert)
    _write_private(secrets.broker_keystore, _key_pem(broker_key) + chain)
    for user in users:
        _write_private(secrets.password_file(user), token_urlsafe(24) + "\n")
        user_key, user_cert = issue_cert(ca_key, ca_cert, user)
        _write_private(secrets.keystore(user), _key_pem(user_key) + _cert_pem(user_cert))
    return secrets


def write_client_files(secrets: Secrets, bootstrap: str, mtls_bootstrap: str | None = None,
                       users: Sequence[str] = USERS) -> None:
    """(Re)write every user's client properties: the ports may change between starts, the
    passwords do not."""
    for user in users:
        _write_private(secrets.properties_file(user), _sasl_properties(secrets, user, bootstrap))
        if mtls_bootstrap:
            mtls = _mtls_properties(secrets, user, mtls_bootstrap)
            _write_private(secrets.mtls_properties_file(user), mtls)


def _sasl_properties(secrets: Secrets, user: str, bootstrap: str) -> str:
    jaas = f'{SCRAM_LOGIN_MODULE} required username="{user}" password="{secrets.password(user)}";'
    return (f"# {user}'s settings for the local secure broker (SASL_SSL, {SCRAM_MECHANISM}); keep private.\n"
            f"bootstrap.servers={bootstrap}\nsecurity.protocol=SASL_SSL\nsasl.mechanism={SCRAM_MECHANISM}\n"
            f"sasl.jaas.config={jaas}\n"
            f"ssl.truststore.type=PEM\nssl.truststore.location={secrets.ca_file.resolve()}\n")


def _mtls_properties(secrets: Secrets, user: str, bootstrap: str) -> str:
    return (f"# {user}'s settings for the local broker's mutual-TLS listener; keep private.\n"
            f"bootstrap.servers={bootstrap}\nsecurity.protocol=SSL\n"
            f"ssl.keystore.type=PEM\nssl.keystore.location={secrets.keystore(user).resolve()}\n"
            f"ssl.truststore.type=PEM\nssl.truststore.location={secrets.ca_file.resolve()}\n")


def write_other_ca(secrets: Secrets) -> Path:
    """``other-ca.pem``: a CA unrelated to the broker's, for showing "wrong CA" failures."""
    _, cert = make_ca("unrelated CA")
    _write_public(secrets.other_ca_file, _cert_pem(cert))
    return secrets.other_ca_file


def write_expired_keystore(secrets: Secrets, user: str) -> Path:
    """A keystore for ``user`` signed by the right CA but expired yesterday (mutual-TLS failures)."""
    ca_key = serialization.load_pem_private_key(secrets.ca_key_file.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(secrets.ca_file.read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key, cert = issue_cert(ca_key, ca_cert, user, expired=True)
    path = secrets.dir / f"{user}-expired-keystore.pem"
    _write_private(path, _key_pem(key) + _cert_pem(cert))
    return path


def make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(_KEY)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = _validity(x509.CertificateBuilder(), days=3650, expired=False)
    cert = (builder.subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
               hosts: Sequence[str] = (), expired: bool = False) -> tuple[ec.EllipticCurvePrivateKey,
                                                                         x509.Certificate]:
    """A leaf certificate signed by the CA: a server one when ``hosts`` are given (they become its
    subjectAltNames, which clients check), else a client one whose CN names the user."""
    key = ec.generate_private_key(_KEY)
    # Servers also authenticate as clients (the broker to itself over its inter-broker listener).
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if hosts else \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = _validity(x509.CertificateBuilder(), days=825, expired=expired)
    builder = (builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                              critical=False))
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]),
                                        critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _validity(builder: x509.CertificateBuilder, days: int, expired: bool) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    if expired:
        day = dt.timedelta(days=1)
        return builder.not_valid_before(now - 2 * day).not_valid_after(now - day)
    # An hour of slack: a clock slightly behind ours must not see a certificate "not yet valid".
    start = now - dt.timedelta(hours=1)
    return builder.not_valid_before(start).not_valid_after(now + dt.timedelta(days=days))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS#8: the one form both Java's PEM keystore (no ssl.key.password) and Python's
    # ssl module read; the 0600 file mode protects it.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, content: str | bytes) -> None:
    """Write a file only its owner may read, with no moment at a wider mode."""
    data = content.encode() if isinstance(content, str) else content
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    path.chmod(0o600)  # O_CREAT's mode does not apply to a file that existed already


def _write_public(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    path.chmod(0o644)


def client_settings(properties_file: Path) -> dict[str, Any]:
    """kafka-python keyword arguments from a Kafka client properties file, read as every command
    reads ``--client-config``."""
    from loginpipe.kafka.settings import build_connection, kafka_options

    return kafka_options(build_connection({}, {}, str(properties_file)))


class Acl(NamedTuple):
    """One allowed operation: kafka-python enum names (``ResourceType``, ``ACLResourcePatternType``,
    ``ACLOperation``), which are also kafka-acls' words."""

    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER
    name: str
    pattern: str  # LITERAL or PREFIXED
    operation: str


def pipeline_acls(group: str = DEFAULT_GROUP, input_topic: str = INPUT_TOPIC,
                  output_topics: Sequence[str] = OUTPUT_TOPICS) -> list[Acl]:
    """What the pipeline needs, and no more, to run as consumer group ``group``.

    - The declared topics are created by the admin (create_kafka_topic.py with admin.properties):
      the pipeline only checks that they exist, so it gets no CREATE on them and cannot make a new
      topic from a typo.
    - The group's own topics (changelogs, repartition) are named from the group and created by
      the consumer at start: a PREFIXED pattern on the group name covers them; likewise the
      transactional ids of exactly-once mode (``<group>-<instance>-<worker>``) and the group itself
      (PREFIXED, so instances and test groups named from it work).
    - No IDEMPOTENT_WRITE on the cluster: since Kafka 3.0 (KIP-679) WRITE on a topic suffices for an
      idempotent producer.
    """
    # The internal topics' common start, "<group>-" (with odd characters replaced, as topics.py does).
    internal = _common_start(dataclasses.astuple(InternalTopics.of(group)))
    acls = [Acl("TOPIC", input_topic, "LITERAL", op) for op in ("READ", "DESCRIBE")]
    for topic in output_topics:
        acls += [Acl("TOPIC", topic, "LITERAL", op) for op in ("WRITE", "DESCRIBE")]
    acls += [Acl("TOPIC", internal, "PREFIXED", op) for op in ("READ", "WRITE", "DESCRIBE", "CREATE")]
    # READ on a group implies DESCRIBE (offset fetches); transactions commit offsets with it too.
    acls.append(Acl("GROUP", group, "PREFIXED", "READ"))
    acls += [Acl("TRANSACTIONAL_ID", f"{group}-", "PREFIXED", op) for op in ("WRITE", "DESCRIBE")]
    return acls


def _common_start(names: Sequence[str]) -> str:
    """The longest start all ``names`` share (character by character: topic names are not paths)."""
    first, last = min(names), max(names)
    # min and max of the names differ first where any two do; zip stops at the shorter one.
    pairs = enumerate(zip(first, last, strict=False))
    return first[:next((i for i, (a, b) in pairs if a != b), min(len(first), len(last)))]


def scratch_acls(prefix: str = SCRATCH_PREFIX) -> list[Acl]:
    """Everything a test does on its own unique names (``test-<what>-<random>``): it creates, writes,
    reads and deletes its topics, and names its groups and transactional ids the same way. Granted
    on the local broker only, where tests run."""
    topic_ops = ("READ", "WRITE", "DESCRIBE", "CREATE", "DELETE", "DESCRIBE_CONFIGS")
    return ([Acl("TOPIC", prefix, "PREFIXED", op) for op in topic_ops]
            + [Acl("GROUP", prefix, "PREFIXED", op) for op in ("READ", "DELETE")]
            + [Acl("TRANSACTIONAL_ID", prefix, "PREFIXED", op) for op in ("WRITE", "DESCRIBE")])


def without(acls: Iterable[Acl], resource: str, name: str, operation: str) -> list[Acl]:
    """``acls`` minus one permission, e.g. the nowrite user's: no WRITE on the output topic."""
    return [acl for acl in acls if (acl.resource, acl.name, acl.operation) != (resource, name, operation)]


def local_broker_acls() -> dict[str, list[Acl]]:
    """Who may do what on the local secure broker (the admin is a super user and needs none)."""
    pipeline = pipeline_acls()
    return {PIPELINE_USER: pipeline + scratch_acls(),
            NOWRITE_USER: without(pipeline, "TOPIC", OUTPUT_TOPIC, "WRITE")}


_RESOURCE_FLAG = {"TOPIC": "--topic", "GROUP": "--group", "TRANSACTIONAL_ID": "--transactional-id"}


def acl_commands(acls: Sequence[Acl], principal: str = f"User:{PIPELINE_USER}",
                 bootstrap: str = "127.0.0.1:29094",
                 command_config: str = ".kafka/secrets/admin.properties") -> list[str]:
    """``kafka-acls.sh`` lines granting ``acls``: one per resource pattern, with all its operations."""
    by_resource: dict[tuple[str, str, str], list[str]] = {}
    for acl in acls:
        by_resource.setdefault((acl.resource, acl.name, acl.pattern), []).append(acl.operation)
    lines = []
    for (resource, name, pattern), operations in by_resource.items():
        target = "--cluster" if resource == "CLUSTER" else f"{_RESOURCE_FLAG[resource]} {name}"
        ops = " ".join(f"--operation {_camel(op)}" for op in operations)
        prefixed = " --resource-pattern-type prefixed" if pattern == "PREFIXED" else ""
        lines.append(f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {command_config} "
                     f"--add --allow-principal {principal} {ops} {target}{prefixed}")
    return lines


def _camel(operation: str) -> str:
    """kafka-acls' spelling of an operation: DESCRIBE_CONFIGS -> DescribeConfigs."""
    return "".join(part.capitalize() for part in operation.split("_"))


def grant(admin_settings: dict[str, Any], principal: str, acls: Sequence[Acl]) -> None:
    """Allow ``principal`` (``User:name``) ``acls``, as the admin; granting twice is harmless."""
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePattern,
        ResourceType,
    )

    entries = [ACL(principal, "*", ACLOperation[acl.operation], ACLPermissionType.ALLOW,
                   ResourcePattern(ResourceType[acl.resource], acl.name, ACLResourcePatternType[acl.pattern]))
               for acl in acls]
    admin = KafkaAdminClient(**admin_settings)
    try:
        result = admin.create_acls(entries)
    finally:
        admin.close()
    if result["failed"]:
        raise UserError(f"could not grant {principal} {len(result['failed'])} ACL(s): {result['failed'][0]}")
