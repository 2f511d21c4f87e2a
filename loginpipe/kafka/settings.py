"""How every tool connects: the bootstrap servers, TLS, SASL and the offset reset, in one value.

``Connection`` is built once from flags, their environment twins and an optional Kafka client
properties file (``--client-config``, the file a Kafka CLI user passes as ``--command-config``),
then handed to whatever makes a client. Pure: no Kafka client is imported here; ``kafka_options``
turns it into kafka-python's keyword arguments.

Secrets: the SASL password comes from ``$SASL_PASSWORD``, a file (``--sasl-password-file``) or
the properties file, never from a flag value (``ps`` shows those). It is kept out of ``repr``,
``describe`` and every message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from loginpipe.errors import UserError

DEFAULT_BOOTSTRAP = "127.0.0.1:29092"
PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL = "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"
PROTOCOLS = (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
OFFSET_RESETS = ("earliest", "latest")
PASSWORD_ENV = "SASL_PASSWORD"


@dataclass(frozen=True)
class Connection:
    """Where the cluster is and how to talk to it."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    security_protocol: str = PLAINTEXT
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None  # PEM; None: the system's trust store
    ssl_certfile: str | None = None  # mutual TLS: this client's certificate chain (PEM)
    ssl_keyfile: str | None = None  # and its key (PEM; may be the same file as the chain)
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True
    offset_reset: str = "earliest"  # a group without committed offsets starts here

    @classmethod
    def of(cls, where: str | Connection) -> Connection:
        """A plain ``host:port`` string means a PLAINTEXT cluster (tests, the local broker)."""
        return where if isinstance(where, Connection) else cls(bootstrap_servers=where)

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in (SSL, SASL_SSL)

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in (SASL_PLAINTEXT, SASL_SSL)

    def describe(self) -> str:
        """For messages: where and how, never the password."""
        how = self.security_protocol
        if self.uses_sasl:
            how += f" ({self.sasl_mechanism}, user {self.sasl_username})"
        if self.ssl_certfile:
            how += " with a client certificate"
        return f"{self.bootstrap_servers} over {how}"

    def __str__(self) -> str:
        return self.bootstrap_servers

    def check(self) -> Connection:
        """A UserError naming the first setting that cannot work; the connection otherwise."""
        if self.security_protocol not in PROTOCOLS:
            raise UserError(f"unknown security protocol {self.security_protocol!r} "
                            f"(one of {', '.join(PROTOCOLS)})")
        if self.offset_reset not in OFFSET_RESETS:
            raise UserError(f"unknown offset reset {self.offset_reset!r} (earliest or latest)")
        if self.uses_sasl:
            if self.sasl_mechanism not in MECHANISMS:
                raise UserError(f"{self.security_protocol} needs a SASL mechanism, one of "
                                f"{', '.join(MECHANISMS)} (--sasl-mechanism)")
            if not self.sasl_username:
                raise UserError(f"{self.security_protocol} needs a user name (--sasl-username)")
            if self.sasl_password is None:
                raise UserError(f"{self.security_protocol} needs a password: set ${PASSWORD_ENV}, "
                                "--sasl-password-file or sasl.jaas.config in --client-config")
        elif self.sasl_mechanism or self.sasl_username:
            raise UserError(f"a SASL user or mechanism was given, but the security protocol is "
                            f"{self.security_protocol} (use SASL_SSL or SASL_PLAINTEXT)")
        if not self.uses_tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise UserError(f"TLS files were given, but the security protocol is {self.security_protocol} "
                            "(use SSL or SASL_SSL)")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise UserError("mutual TLS needs both a certificate (--ssl-certfile) and its key "
                            "(--ssl-keyfile)")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise UserError(f"--{name.replace('_', '-')}: no such file: {path}")
        return self


def kafka_options(where: str | Connection) -> dict:
    """kafka-python's keyword arguments for any client (consumer, producer, admin)."""
    connection = Connection.of(where)
    options: dict = {"bootstrap_servers": connection.bootstrap_servers,
                     "security_protocol": connection.security_protocol}
    if connection.uses_sasl:
        options.update(sasl_mechanism=connection.sasl_mechanism,
                       sasl_plain_username=connection.sasl_username,
                       sasl_plain_password=connection.sasl_password)
    if connection.uses_tls:
        options.update(ssl_cafile=connection.ssl_cafile, ssl_certfile=connection.ssl_certfile,
                       ssl_keyfile=connection.ssl_keyfile, ssl_password=connection.ssl_key_password,
                       ssl_check_hostname=connection.ssl_check_hostname)
    return options


def build_connection(flags: Mapping[str, object], environ: Mapping[str, str] | None = None,
                     config_file: str | None = None) -> Connection:
    """The connection from a properties file (optional), then the flags given (and their
    environment twins), which override it; the password from ``$SASL_PASSWORD`` or a file."""
    from loginpipe.kafka.properties import connection_fields, read_properties

    environ = os.environ if environ is None else environ
    fields: dict = connection_fields(read_properties(config_file)) if config_file else {}
    fields.update({name: value for name, value in flags.items()
                   if value is not None and name != "sasl_password_file"})
    password_file = flags.get("sasl_password_file")
    if password_file:
        fields["sasl_password"] = _read_secret(str(password_file))
    elif environ.get(PASSWORD_ENV):
        fields["sasl_password"] = environ[PASSWORD_ENV]
    return replace(Connection(), **fields).check()


def _read_secret(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise UserError(f"--sasl-password-file: cannot read {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"--sasl-password-file: {path} is not UTF-8 text") from None


def connection_env(connection: Connection) -> dict[str, str]:
    """Environment variables that give a child process (generator, dashboard) this connection,
    the password included: a child's environment is readable by its user only, unlike its
    command line."""
    env = {"BOOTSTRAP_SERVERS": connection.bootstrap_servers,
           "SECURITY_PROTOCOL": connection.security_protocol, "OFFSET_RESET": connection.offset_reset}
    named = {"SASL_MECHANISM": connection.sasl_mechanism, "SASL_USERNAME": connection.sasl_username,
             PASSWORD_ENV: connection.sasl_password, "SSL_CAFILE": connection.ssl_cafile,
             "SSL_CERTFILE": connection.ssl_certfile, "SSL_KEYFILE": connection.ssl_keyfile}
    env.update({name: value for name, value in named.items() if value is not None})
    return env
