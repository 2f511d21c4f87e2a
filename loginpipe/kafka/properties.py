"""Kafka client properties files (``--client-config FILE``): the file a Kafka CLI user already
has for a PEM-based cluster, mapped onto ``Connection``'s fields.

The syntax is Java's ``.properties``: ``key=value``, ``key: value`` or ``key value``; ``#`` and
``!`` start comments; a backslash at the end of a line continues it; ``\\t``, ``\\n``, ``\\uXXXX``
and ``\\<char>`` escapes. A key this project cannot honour is a one-line error naming it, never
silently ignored: a setting the user believes is in force must be.
"""

from __future__ import annotations

import re
from pathlib import Path

from loginpipe.errors import UserError

_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # Java's only line terminators (not \f, \v, \x85, \u2028...)
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
# sasl.jaas.config, as Kafka's JaasConfig reads it (java.io.StreamTokenizer): words, "..." or '...'
# strings with backslash escapes, "=" and ";"
_JAAS_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'|([=;])|([^\s=;"\']+))', re.S)
_JAAS_ESCAPE = re.compile(r"\\([0-3][0-7]{0,2}|[4-7][0-7]?|.)", re.S)
_JAAS_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_JAAS_FLAGS = ("required", "requisite", "sufficient", "optional")
_CLASS_NAME = re.compile(r"[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*")
_LOGIN_MODULES = {
    "org.apache.kafka.common.security.plain.PlainLoginModule": ("PLAIN",),
    "org.apache.kafka.common.security.scram.ScramLoginModule": ("SCRAM-SHA-256", "SCRAM-SHA-512"),
}


def read_properties(path: str) -> dict[str, str]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte order mark is not part of a key
    except OSError as exc:
        raise UserError(f"--client-config: cannot read {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"--client-config: {path} is not a text file") from None
    try:
        return parse_properties(text)
    except UserError as exc:
        raise UserError(f"--client-config: {path}: {exc}") from None


def parse_properties(text: str) -> dict[str, str]:
    """Keys and values of a ``.properties`` text (the last of a repeated key wins, as in Java).
    UserError for a malformed ``\\uXXXX`` escape, which Java refuses too (naming the key, never the
    value: it may be a password)."""
    result: dict[str, str] = {}
    for line in _logical_lines(text):
        key, value = _split(line)
        key = _unescape(key, "a key")
        result[key] = _unescape(value, f"the value of {key!r}")
    return result


def _logical_lines(text: str):
    pending = ""
    for raw in _LINE_BREAK.split(text):
        line = raw.lstrip(" \t\f")
        if not pending and (not line or line[0] in "#!"):
            continue
        if _continues(line):
            pending += line[:-1]
            continue
        pending += line
        if pending:
            yield pending
        pending = ""
    if pending:
        yield pending


def _continues(line: str) -> bool:
    """An odd number of trailing backslashes: the last one joins the next line."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _split(line: str) -> tuple[str, str]:
    """The key ends at the first unescaped ``=``, ``:`` or whitespace."""
    i = 0
    while i < len(line):
        char = line[i]
        if char == "\\":
            i += 2
            continue
        if char in "=: \t\f":
            break
        i += 1
    key, rest = line[:i], line[i:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):  # whitespace around one separator is not part of the value
        rest = rest[1:].lstrip(" \t\f")
    return key, rest


def _unescape(text: str, where: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u":
            if not _HEX4.fullmatch(text[i + 2:i + 6]):
                raise UserError(f"malformed \\uXXXX escape in {where} (four hex digits expected)")
            out.append(chr(int(text[i + 2:i + 6], 16)))
            i += 6
            continue
        out.append(_ESCAPES.get(nxt, nxt))
        i += 2
    result = "".join(out)
    if any("\ud800" <= char <= "\udfff" for char in result):
        # \uXXXX escapes are UTF-16 code units, as in Java: a surrogate pair is one character
        result = result.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return result


# --- the keys this project maps onto Connection

def connection_fields(properties: dict[str, str]) -> dict:
    """``Connection`` field values from a client properties file; UserError for a key or value
    that cannot be honoured."""
    fields: dict = {}
    for key, value in properties.items():
        handler = _KEYS.get(key)
        if handler is None:
            raise UserError(f"--client-config: unsupported key {key!r} "
                            f"(supported: {', '.join(sorted(_KEYS))})")
        handler(value.strip(), fields)
    allowed = fields.pop("_jaas_mechanisms", None)
    if allowed and fields.get("sasl_mechanism", allowed[0]) not in allowed:
        raise UserError(f"--client-config: sasl.mechanism={fields['sasl_mechanism']} does not go with the "
                        f"login module in sasl.jaas.config (it serves {', '.join(allowed)})")
    return fields


def _set(name: str):
    def handler(value: str, fields: dict) -> None:
        fields[name] = value
    return handler


def _pem_only(key: str):
    def handler(value: str, fields: dict) -> None:
        if value.upper() != "PEM":
            raise UserError(f"--client-config: {key}={value} is not supported; this client reads PEM "
                            "files only (convert with keytool/openssl and set it to PEM)")
    return handler


def _keystore(value: str, fields: dict) -> None:
    # A PEM keystore file holds the private key and the certificate chain together.
    fields["ssl_certfile"] = fields["ssl_keyfile"] = value


def _inline_pem(key: str):
    def handler(value: str, fields: dict) -> None:
        raise UserError(f"--client-config: {key} (PEM text inline) is not supported; put the key and "
                        "its chain in one PEM file and set ssl.keystore.location")
    return handler


def _endpoint_identification(value: str, fields: dict) -> None:
    if value.lower() not in ("", "https"):
        raise UserError(f"--client-config: ssl.endpoint.identification.algorithm={value} "
                        "(https, or empty to skip the host name check)")
    fields["ssl_check_hostname"] = value.lower() == "https"


def _jaas(value: str, fields: dict) -> None:
    """``<LoginModule> required username="..." password="...";`` into the user and password.
    No message shows any part of the value after the login module: it holds the password."""
    tokens = _jaas_tokens(value)
    module = tokens[0][1] if tokens and tokens[0][0] == "word" else ""
    if module not in _LOGIN_MODULES:
        named = _CLASS_NAME.fullmatch(module) and tokens[1:2] != [("=", "=")]
        raise UserError(f"--client-config: sasl.jaas.config uses {module if named else 'no login module'}; "
                        "supported: PlainLoginModule, ScramLoginModule")
    if len(tokens) < 2 or tokens[1][0] != "word" or tokens[1][1].lower() not in _JAAS_FLAGS:
        raise UserError(f"--client-config: sasl.jaas.config: {module} needs a control flag after it "
                        "(required)")
    options, rest = {}, tokens[2:]
    while rest and rest[0][0] != ";":
        if len(rest) < 3 or rest[0][0] != "word" or rest[1][0] != "=" or rest[2][0] not in ("word", "quoted"):
            raise UserError("--client-config: sasl.jaas.config: cannot read the options after the login "
                            'module: write name="value" pairs (in a .properties file, a quote inside a '
                            'value is written \\\\")')
        options[rest[0][1]] = rest[2][1]
        rest = rest[3:]
    if rest[1:]:
        raise UserError("--client-config: sasl.jaas.config: one login module only, ending with ;")
    if "username" not in options or "password" not in options:
        raise UserError("--client-config: sasl.jaas.config needs username=\"...\" and password=\"...\"")
    fields["sasl_username"], fields["sasl_password"] = options["username"], options["password"]
    fields["_jaas_mechanisms"] = _LOGIN_MODULES[module]


def _jaas_tokens(value: str) -> list[tuple[str, str]]:
    """(kind, text) pairs: "word", "quoted" (unescaped as StreamTokenizer does), "=" and ";"."""
    tokens, i = [], 0
    while value[i:].strip():
        match = _JAAS_TOKEN.match(value, i)
        if not match:  # an unterminated quote
            raise UserError("--client-config: sasl.jaas.config: a quoted value is not closed")
        double, single, symbol, word = match.groups()
        if symbol:
            tokens.append((symbol, symbol))
        elif word is not None:
            tokens.append(("word", word))
        else:
            tokens.append(("quoted", _JAAS_ESCAPE.sub(_jaas_escape, single if double is None else double)))
        i = match.end()
    return tokens


def _jaas_escape(match: re.Match) -> str:
    escaped = match.group(1)
    if escaped[0] in "01234567":
        return chr(int(escaped, 8))
    return _JAAS_ESCAPES.get(escaped, escaped)


_KEYS = {
    "bootstrap.servers": _set("bootstrap_servers"),
    "security.protocol": lambda value, fields: fields.__setitem__("security_protocol", value.upper()),
    "sasl.mechanism": lambda value, fields: fields.__setitem__("sasl_mechanism", value.upper()),
    "sasl.jaas.config": _jaas,
    "ssl.truststore.type": _pem_only("ssl.truststore.type"),
    "ssl.truststore.location": _set("ssl_cafile"),
    "ssl.keystore.type": _pem_only("ssl.keystore.type"),
    "ssl.keystore.location": _keystore,
    "ssl.keystore.key": _inline_pem("ssl.keystore.key"),
    "ssl.keystore.certificate.chain": _inline_pem("ssl.keystore.certificate.chain"),
    "ssl.truststore.certificates": _inline_pem("ssl.truststore.certificates"),
    "ssl.key.password": _set("ssl_key_password"),
    "ssl.endpoint.identification.algorithm": _endpoint_identification,
    "auto.offset.reset": lambda value, fields: fields.__setitem__("offset_reset", value.lower()),
}
