"""Why a kafka-python client could not connect, in one line.

kafka-python 3.0.12 raises the same ``KafkaTimeoutError: Unable to bootstrap`` for a wrong
password, an untrusted certificate, a PLAINTEXT client on a TLS port and a broker that is not
there: the cause is only logged (``kafka.net.manager``: "Bootstrap connection to ... failed:
<cause>"). ``watch()`` keeps those causes and ``explain`` turns them into advice.
"""

from __future__ import annotations

import logging
import threading

from loginpipe.kafka.settings import DEFAULT_BOOTSTRAP, Connection

# the loggers kafka-python reports a failed connection attempt on
_LOGGERS = ("kafka.net.manager", "kafka.net.connection", "kafka.conn")
KEPT = 50


class _LastCause(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.causes: list[str] = []  # since the last forget(); the telling one may not be the last
        self._lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call must never break the client
            return
        # the attempt's cause, not the final "Bootstrap failed: ... Unable to bootstrap" that hides it
        if ("failed" in message or "Error" in message) and "Unable to bootstrap" not in message:
            with self._lock_:
                self.causes = [*self.causes[-(KEPT - 1):], message]


_handler = _LastCause()


def watch() -> None:
    """Keep kafka-python's connection failures for ``explain`` (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _handler not in logger.handlers:
            logger.addHandler(_handler)
            # WARNING even where "kafka" is quieter (the consumer sets it to CRITICAL); with a
            # handler found, Python's last-resort stderr handler stays silent, so nothing prints
            # unless the caller configured logging itself
            logger.setLevel(logging.WARNING)


def causes() -> str:
    return "\n".join(_handler.causes)


def forget() -> None:
    """Before a new client starts: a cause seen earlier must not explain this one's failure."""
    _handler.causes = []


def explain(where: str | Connection, exc: BaseException | None = None) -> str:
    """One line: what went wrong connecting to ``where``, and what to check."""
    connection = Connection.of(where)
    at = connection.describe()
    cause = causes()  # every attempt's: after a refused login the next attempts only see a hang-up
    if "SaslAuthenticationFailed" in cause or "Authentication failed" in cause:
        return (f"authentication failed at {at}: wrong user name or password? (the password comes "
                "from $SASL_PASSWORD, --sasl-password-file or --client-config)")
    if "UnsupportedSaslMechanism" in cause:
        return f"the broker at {at} does not offer SASL mechanism {connection.sasl_mechanism}"
    if "CERTIFICATE_VERIFY_FAILED" in cause:
        detail = "it has expired" if "expired" in cause else "wrong or missing --ssl-cafile?"
        return f"TLS: the broker's certificate at {at} is not trusted ({detail})"
    if "ALERT_BAD_CERTIFICATE" in cause or "CERTIFICATE_UNKNOWN" in cause or "ALERT_CERTIFICATE" in cause:
        return (f"TLS: the broker at {at} refused this client's certificate (missing, expired or "
                "not signed by a CA it trusts: --ssl-certfile/--ssl-keyfile)")
    if "WRONG_VERSION_NUMBER" in cause or "record layer failure" in cause:
        return (f"TLS: the listener at {connection.bootstrap_servers} does not speak TLS "
                "(use --security-protocol PLAINTEXT or SASL_PLAINTEXT)")
    if "Invalid frame length: 3525" in cause and not connection.uses_tls:
        # 352518912.. is 0x1503..: a TLS alert record read as a Kafka frame's length
        return (f"TLS: the listener at {connection.bootstrap_servers} speaks TLS; this client does not "
                "(--security-protocol SSL or SASL_SSL, or --client-config)")
    if "socket disconnected" in cause and not connection.uses_tls:
        return (f"the broker at {connection.bootstrap_servers} closed the connection at once: is it a "
                "TLS or SASL listener? (--security-protocol SSL or SASL_SSL, or --client-config)")
    if "socket disconnected" in cause and connection.uses_sasl and connection.uses_tls:
        # TLS worked, then the broker hung up: it drops a failed SASL login, and its error
        # response often never reaches kafka-python (Java's "terminated during authentication")
        return (f"authentication failed at {at}: the broker closed the connection during the login; "
                "wrong user name or password? (the password comes from $SASL_PASSWORD, "
                "--sasl-password-file or --client-config)")
    if "Connection refused" in cause or "ECONNREFUSED" in cause or exc is None or not cause:
        return f"cannot reach a Kafka broker at {at}; {unreachable_hint(connection)}"
    last = cause.splitlines()[-1]
    return f"cannot connect to {at}: {last.split(' failed: ', 1)[-1][:200]}"


LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def unreachable_hint(where: str | Connection) -> str:
    """What to check when no broker answers at ``where``: the local broker's start command only
    where that broker would be (it listens on 127.0.0.1:29092); for another address, the things
    that keep a remote cluster out of reach."""
    connection = Connection.of(where)
    servers = [s.strip().lower() for s in connection.bootstrap_servers.split(",") if s.strip()]
    hosts_ports = [server.rpartition(":")[::2] for server in servers]
    default_port = DEFAULT_BOOTSTRAP.rpartition(":")[2]
    if servers and all(host in LOCAL_HOSTS for host, _ in hosts_ports):
        if all(port == default_port for _, port in hosts_ports):
            return "is it running? (make kafka-start)"
        return (f"is it running, and on that port? (the local broker, make kafka-start, listens on "
                f"{default_port})")
    hint = ("check the address, that this machine can reach it (network, firewall), and that the "
            "broker's advertised.listeners name an address reachable from here")
    if not (connection.uses_tls or connection.uses_sasl):
        hint += "; a secured cluster also needs its settings (--client-config)"
    return hint
