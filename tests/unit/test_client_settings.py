"""Connection settings without a broker: the Java ``.properties`` reader, the client.properties keys
mapped onto ``Connection``, and ``build_connection`` (flags > environment > file).

The expected values of the tricky ``.properties`` examples were taken once from Java 17's
``java.util.Properties.load`` (a throw-away ``java Props.java FILE`` printing the loaded map); the
property-based tests round-trip through a writer that escapes as ``Properties.store`` does.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loginpipe.errors import UserError
from loginpipe.kafka.properties import connection_fields, parse_properties, read_properties
from loginpipe.kafka.settings import (
    PASSWORD_ENV,
    SASL_SSL,
    Connection,
    build_connection,
    kafka_options,
)

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- parse_properties: examples -------------------------------------------------------------

BASICS = [
    ("a=1\n", {"a": "1"}),
    ("a: 1\n", {"a": "1"}),
    ("a 1\n", {"a": "1"}),
    ("a\t1\n", {"a": "1"}),
    ("a\f1\n", {"a": "1"}),
    ("  a  =  1  \n", {"a": "1  "}),  # trailing whitespace belongs to the value
    ("a\t:\t1\n", {"a": "1"}),
    ("a=\n", {"a": ""}),
    ("a\n", {"a": ""}),
    ("a   \n", {"a": ""}),
    ("a=1", {"a": "1"}),  # no final line break
    ("", {}),
    ("\n\n   \n\t\f\n", {}),
    ("a=1\na=2\n", {"a": "2"}),  # the last duplicate wins
    ("a=x=y:z\n", {"a": "x=y:z"}),  # only the first separator separates
]

# (name, file text, what java.util.Properties.load (Java 17) made of it)
JAVA = [
    ("mixed separators", "a=1\nb: 2\nc 3\n  d  =  4  \ne\t:\t5\nf\n g=\n",
     {"a": "1", "b": "2", "c": "3", "d": "4  ", "e": "5", "f": "", "g": ""}),
    ("comments", "# c\n! c\n  # indented\n\t! tab\nk=v # not a comment\n", {"k": "v # not a comment"}),
    ("continuation", "k=one \\\n    two\\\n\tthree\nnext=1\n", {"k": "one twothree", "next": "1"}),
    ("comment text in a continued value", "k=a\\\n  # not comment\\\n  ! still\n",
     {"k": "a# not comment! still"}),
    ("even backslashes do not continue", "k=a\\\\\nj=b\nm=c\\\\\\\n  d\n",
     {"k": "a\\", "j": "b", "m": "c\\d"}),
    ("escapes", "k=\\t\\n\\r\\f\\\\\\=\\:\\u00e9\\u20AC\\q\\#\\!\n",
     {"k": "\t\n\r\f\\=:\u00e9\u20acq#!"}),
    ("escaped separators in keys", "a\\=b\\:c\\ d=v\nx\\ y z\n\\#notcomment=1\n",
     {"a=b:c d": "v", "x y": "z", "#notcomment": "1"}),
    ("duplicates", "k=1\nk=2\n", {"k": "2"}),
    ("CRLF and CR", "a=1\r\nb=2\\\r\n  3\r\nc=4\rd=5\r", {"a": "1", "b": "23", "c": "4", "d": "5"}),
    ("lone backslash line, then a comment", "\\\n#key=v\n", {}),
    ("only \\r and \\n end lines", "k=a\x0cb\x85c\u2028d\x0be\x1cf\n", {"k": "a\x0cb\x85c\u2028d\x0be\x1cf"}),
    ("surrogate pair escapes", "k=\\ud83d\\ude00\n", {"k": "\U0001f600"}),
    ("backslash at end of file", "k=v\\", {"k": "v"}),
    ("a comment line is never continued", "# c \\\nk=v\n", {"k": "v"}),
    ("continuation then blank line", "k=v\\\n\nj=w\n", {"k": "v", "j": "w"}),
    ("continuation then whitespace line", "k=v\\\n   \nj=1\n", {"k": "v", "j": "1"}),
    ("one separator only", "k:=v\nk2 = = v\nk3 : : v\nk4==v\n",
     {"k": "=v", "k2": "= v", "k3": ": v", "k4": "=v"}),
    ("continued key", "a\\\n  b=c\n", {"ab": "c"}),
    ("empty key", "=v\n", {"": "v"}),
    ("empty key, colon", ": v\n", {"": "v"}),
    ("escaped leading spaces of a key", "\\ \\ k = v\n", {"  k": "v"}),
    ("non-ASCII", "clé=välue ☃\n", {"clé": "välue ☃"}),
    ("form feed is whitespace", "k\x0cv\n\x0ck2=v2\n", {"k": "v", "k2": "v2"}),
    ("backslash before trailing whitespace", "k=a\\ \nj=b\\\t\n", {"k": "a ", "j": "b\t"}),
    ("unicode escapes in a key", "\\u0041\\u003d=x\n", {"A=": "x"}),
    ("CR continuation then CR LF", "k=a\\\r\r\n  b\n", {"k": "a", "b": ""}),
    ("escaped backslashes", "k=\\\\\\\\x\n", {"k": "\\\\x"}),
]


@pytest.mark.parametrize(("text", "expected"), BASICS)
def test_parse_basics(text: str, expected: dict) -> None:
    assert parse_properties(text) == expected


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in JAVA], ids=[case[0] for case in JAVA])
def test_parse_agrees_with_java(text: str, expected: dict) -> None:
    assert parse_properties(text) == expected


@pytest.mark.parametrize("text", ["k=\\u12\n", "k=\\u12zz\n", "k=x\\u"])
def test_malformed_unicode_escape_is_an_error_as_in_java(text: str) -> None:
    # Java: IllegalArgumentException("Malformed \\uxxxx encoding.") for the whole file
    with pytest.raises(UserError, match=r"\\uXXXX.*'k'"):
        parse_properties(text)


def test_malformed_escape_in_the_jaas_value_does_not_show_the_value() -> None:
    text = 'sasl.jaas.config=x required username="alice" password="S3cr3t\\u00";\n'
    with pytest.raises(UserError) as error:
        parse_properties(text)
    assert "sasl.jaas.config" in str(error.value) and "S3cr3t" not in str(error.value)


def test_read_properties(tmp_path: Path) -> None:
    path = tmp_path / "client.properties"
    path.write_bytes("\ufeffsecurity.protocol=SSL\r\nssl.truststore.location=/x/é.pem\r\n".encode())
    assert read_properties(str(path)) == {"security.protocol": "SSL", "ssl.truststore.location": "/x/é.pem"}
    with pytest.raises(UserError, match=r"--client-config: cannot read .*nope"):
        read_properties(str(tmp_path / "nope"))
    (tmp_path / "binary").write_bytes(b"k=\xff\xfe\n")
    with pytest.raises(UserError, match="not a text file"):
        read_properties(str(tmp_path / "binary"))
    (tmp_path / "bad").write_text("k=\\uZZZZ\n")
    with pytest.raises(UserError, match=r"--client-config: .*bad.*\\uXXXX"):
        read_properties(str(tmp_path / "bad"))


# --- parse_properties: properties -----------------------------------------------------------

_STORE_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f",
                  "=": "\\=", ":": "\\:", "#": "\\#", "!": "\\!"}


def store_escape(text: str, *, key: bool) -> str:
    """As ``Properties.store(Writer, ...)``: spaces escaped everywhere in keys and leading in values;
    other characters (non-ASCII, \\x85, \\u2028, \\v...) written as they are."""
    out = []
    for index, char in enumerate(text):
        if char == " ":
            out.append("\\ " if key or index == 0 else " ")
        else:
            out.append(_STORE_ESCAPES.get(char, char))
    return "".join(out)


TRICKY = st.sampled_from("=:#! \\\t\n\r\f\x0b\x85\u2028\u00e9\u2603u0aZ\U0001f600")
TEXT = st.text(st.one_of(TRICKY, st.characters()), max_size=10)
MAPS = st.dictionaries(TEXT, TEXT, max_size=6)
EOLS = st.sampled_from(["\n", "\r\n", "\r"])
INDENT = st.sampled_from(["", " ", "\t ", "\f", "  \t"])
NO_BREAK = st.text(st.characters(blacklist_characters="\r\n"), max_size=8)


@FAST
@given(MAPS)
def test_store_then_parse_round_trips(properties: dict[str, str]) -> None:
    text = "".join(f"{store_escape(key, key=True)}={store_escape(value, key=False)}\n"
                   for key, value in properties.items())
    assert parse_properties(text) == properties


@st.composite
def laid_out(draw) -> tuple[dict[str, str], str]:
    """A map and one of the many files that mean it: any separator, indentation, line ending,
    comment and blank lines, and earlier values of the same key that the last one overrides."""
    properties = draw(MAPS)
    eol = draw(EOLS)
    lines = []
    for key, value in properties.items():
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["comment", "blank", "decoy"]))
            if kind == "comment":
                lines.append(draw(INDENT) + draw(st.sampled_from("#!")) + draw(NO_BREAK))
            elif kind == "blank":
                lines.append(draw(INDENT))
            else:
                lines.append(f"{store_escape(key, key=True)}=old {store_escape(draw(TEXT), key=False)}")
        separators = ["=", ":", " = ", "\t: ", " =\f"] + ([" ", "\t", "\f", "  "] if key else [])
        separator = draw(st.sampled_from(separators))
        lines.append(draw(INDENT) + store_escape(key, key=True) + separator + store_escape(value, key=False))
    return properties, "".join(line + eol for line in lines)


@FAST
@given(laid_out())
def test_any_layout_parses_to_the_same_map(case: tuple[dict[str, str], str]) -> None:
    properties, text = case
    assert parse_properties(text) == properties


def _units(line: str) -> list[str]:
    """A written line in units a continuation may not split: an escape pair stays whole."""
    return re.findall(r"\\.|.", line, re.S)


@FAST
@given(MAPS, st.data())
def test_continuation_lines_anywhere_change_nothing(properties: dict[str, str], data) -> None:
    lines = []
    for key, value in properties.items():
        units = _units(f"{store_escape(key, key=True)}={store_escape(value, key=False)}")
        # a break before unescaped whitespace would drop it (the next line's indentation is skipped)
        safe = [i for i in range(len(units) + 1) if i == len(units) or units[i] not in (" ", "\t", "\f")]
        cuts = data.draw(st.lists(st.sampled_from(safe), max_size=4))
        eol = data.draw(EOLS)
        for cut in sorted(cuts, reverse=True):
            units.insert(cut, "\\" + eol + data.draw(INDENT))
        lines.append("".join(units) + eol)
    assert parse_properties("".join(lines)) == properties


# --- connection_fields ----------------------------------------------------------------------

# A quote inside a JAAS value is \" in the JAAS string, so \\" in a .properties file (whose own
# escapes come first): Java's Properties.load turns a bare \" into ", and Kafka then rejects the line.
PASSWORD = 'p@ss \\\\"quoted\\\\"'  # as written in the file
JAAS = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="alice" password="{PASSWORD}";')
PEM_CLIENT = f"""\
# a PEM-based SASL_SSL cluster, as a Kafka CLI user has it
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config={JAAS}
ssl.truststore.type=PEM
ssl.truststore.location=/x/ca.pem
ssl.keystore.type=PEM
ssl.keystore.location=/x/client.pem
ssl.endpoint.identification.algorithm=
"""
PEM_FIELDS = {
    "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "alice",
    "sasl_password": 'p@ss "quoted"', "ssl_cafile": "/x/ca.pem", "ssl_certfile": "/x/client.pem",
    "ssl_keyfile": "/x/client.pem", "ssl_check_hostname": False,
}


def test_pem_client_properties_map_onto_connection_fields() -> None:
    assert connection_fields(parse_properties(PEM_CLIENT)) == PEM_FIELDS


def test_jaas_config_continued_over_lines_as_in_kafkas_docs() -> None:
    text = PEM_CLIENT.replace(
        f"sasl.jaas.config={JAAS}",
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n"
        "    username=\"alice\" \\\n"
        f"    password=\"{PASSWORD}\";")
    assert connection_fields(parse_properties(text)) == PEM_FIELDS


def test_a_single_backslash_quote_in_the_file_is_an_error_as_in_kafka() -> None:
    # Properties.load makes password="p@ss "quoted"" of it; Kafka: "Value not specified for key 'quoted'"
    text = PEM_CLIENT.replace(PASSWORD, 'p@ss \\"quoted\\"')
    with pytest.raises(UserError, match="cannot read the options") as error:
        connection_fields(parse_properties(text))
    assert "p@ss" not in str(error.value) and "quoted" not in str(error.value)


def test_other_keys_and_case() -> None:
    fields = connection_fields({
        "bootstrap.servers": "a:9093,b:9093", "security.protocol": "sasl_plaintext ",
        "sasl.mechanism": "plain",
        "sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule Required "
                            "username=bob password=unquoted ;",
        "ssl.key.password": "kp", "ssl.endpoint.identification.algorithm": "HTTPS",
        "auto.offset.reset": "Latest"})
    assert fields == {"bootstrap_servers": "a:9093,b:9093", "security_protocol": "SASL_PLAINTEXT",
                      "sasl_mechanism": "PLAIN", "sasl_username": "bob", "sasl_password": "unquoted",
                      "ssl_key_password": "kp", "ssl_check_hostname": True, "offset_reset": "latest"}


@pytest.mark.parametrize(("quoted", "password"), [
    # what Kafka's JAAS parser (java.io.StreamTokenizer) made of the quoted string, Java 17
    ('"p@ss \\"quoted\\""', 'p@ss "quoted"'),
    ('"a\\\\b"', "a\\b"),
    ('"end\\\\"', "end\\"),
    ('"tab\\there"', "tab\there"),
    ('"oct\\101"', "octA"),
    ('"q\\\'x"', "q'x"),
    ("'single \"quoted\"'", 'single "quoted"'),
    ('"spaces; and = signs"', "spaces; and = signs"),
])
def test_jaas_quoting(quoted: str, password: str) -> None:
    jaas = f"org.apache.kafka.common.security.scram.ScramLoginModule required username=u password={quoted};"
    assert connection_fields({"sasl.jaas.config": jaas})["sasl_password"] == password


SECRET = "S3cr3t-pw"
SCRAM = "org.apache.kafka.common.security.scram.ScramLoginModule"
PLAIN = "org.apache.kafka.common.security.plain.PlainLoginModule"
SECRET_JAAS = f'{SCRAM} required username="alice" password="{SECRET}";'


@pytest.mark.parametrize(("extra", "message"), [
    ({"sasl.login.class": "x"}, "unsupported key 'sasl.login.class'"),
    ({"ssl.truststore.type": "JKS"}, "ssl.truststore.type=JKS is not supported"),
    ({"ssl.keystore.type": "PKCS12"}, "ssl.keystore.type=PKCS12 is not supported"),
    ({"ssl.keystore.key": "-----BEGIN PRIVATE KEY-----"}, "ssl.keystore.key (PEM text inline)"),
    ({"ssl.truststore.certificates": "-----BEGIN CERTIFICATE-----"}, "ssl.truststore.certificates"),
    ({"ssl.endpoint.identification.algorithm": "none"}, "ssl.endpoint.identification.algorithm=none"),
    ({"sasl.mechanism": "PLAIN"}, "sasl.mechanism=PLAIN does not go with"),
    ({"sasl.jaas.config": SECRET_JAAS.replace(SCRAM, PLAIN)},
     "sasl.mechanism=SCRAM-SHA-512 does not go with"),
    ({"sasl.jaas.config": SECRET_JAAS.replace(SCRAM, "com.example.OtherLoginModule")},
     "uses com.example.OtherLoginModule"),
    ({"sasl.jaas.config": f'password="{SECRET}" username="alice";'}, "no login module"),
    ({"sasl.jaas.config": f'password={SECRET} required;'}, "no login module"),
    ({"sasl.jaas.config": SECRET_JAAS.replace(" required", "")}, "control flag"),
    ({"sasl.jaas.config": SECRET_JAAS.replace('username="alice" ', "")}, 'needs username="..."'),
    ({"sasl.jaas.config": f"{SCRAM} required username=\"alice\";"}, 'and password="..."'),
    ({"sasl.jaas.config": f'{SCRAM} required username="alice" password="{SECRET};'}, "not closed"),
    ({"sasl.jaas.config": f'{SCRAM} required username="alice" password="{SECRET}" {SECRET};'},
     "cannot read the options"),
    ({"sasl.jaas.config": f'{SCRAM} required username="alice" password={SECRET}; {SCRAM} required;'},
     "one login module only"),
    ({"sasl.jaas.config": ""}, "no login module"),
])
def test_errors_name_the_problem_never_the_password(extra: dict, message: str) -> None:
    properties = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                  "sasl.jaas.config": SECRET_JAAS, "ssl.key.password": SECRET, **extra}
    with pytest.raises(UserError) as error:
        connection_fields(properties)
    assert message in str(error.value)
    assert SECRET not in str(error.value)


def test_unknown_key_error_names_the_key_and_the_supported_ones() -> None:
    with pytest.raises(UserError) as error:
        connection_fields({"securty.protocol": "SSL"})
    assert "'securty.protocol'" in str(error.value) and "security.protocol" in str(error.value)


# --- build_connection, Connection.check, kafka_options --------------------------------------

NO_FLAGS = {"bootstrap_servers": None, "security_protocol": None, "sasl_mechanism": None,
            "sasl_username": None, "sasl_password_file": None, "ssl_cafile": None,
            "ssl_certfile": None, "ssl_keyfile": None, "offset_reset": None}


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    """A client.properties naming PEM files that exist."""
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "client.pem").write_text("key and chain")
    config = tmp_path / "client.properties"
    config.write_text(PEM_CLIENT.replace("/x/", f"{tmp_path}/") + "bootstrap.servers=file:9093\n")
    return {"config": str(config), "dir": str(tmp_path)}


def flags(**given) -> dict:
    return {**NO_FLAGS, **given}


def test_the_file_alone(pem: dict) -> None:
    connection = build_connection(flags(), {}, pem["config"])
    assert connection == Connection(
        bootstrap_servers="file:9093", security_protocol=SASL_SSL, sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice", sasl_password='p@ss "quoted"', ssl_cafile=f"{pem['dir']}/ca.pem",
        ssl_certfile=f"{pem['dir']}/client.pem", ssl_keyfile=f"{pem['dir']}/client.pem",
        ssl_check_hostname=False)


def test_flags_override_the_file(pem: dict) -> None:
    connection = build_connection(flags(bootstrap_servers="flag:9094", sasl_username="bob",
                                        sasl_mechanism="SCRAM-SHA-256", offset_reset="latest"),
                                  {}, pem["config"])
    assert (connection.bootstrap_servers, connection.sasl_username, connection.sasl_mechanism,
            connection.offset_reset) == ("flag:9094", "bob", "SCRAM-SHA-256", "latest")
    assert connection.security_protocol == SASL_SSL and connection.ssl_cafile == f"{pem['dir']}/ca.pem"


def test_password_from_the_environment_then_the_password_file(pem: dict, tmp_path: Path) -> None:
    assert build_connection(flags(), {PASSWORD_ENV: "from-env"}, pem["config"]).sasl_password == "from-env"
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    connection = build_connection(flags(sasl_password_file=str(secret)), {PASSWORD_ENV: "from-env"},
                                  pem["config"])
    assert connection.sasl_password == "from-file"


def test_password_only_from_flags_and_environment(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(" spaced pw \r\n")
    given = flags(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u")
    assert build_connection({**given, "sasl_password_file": str(secret)}, {}).sasl_password == " spaced pw "
    assert build_connection(given, {PASSWORD_ENV: "pw"}).sasl_password == "pw"
    with pytest.raises(UserError, match=r"needs a password: set \$SASL_PASSWORD"):
        build_connection(given, {})
    with pytest.raises(UserError, match=r"needs a password"):
        build_connection(given, {PASSWORD_ENV: ""})
    with pytest.raises(UserError, match=r"--sasl-password-file: cannot read .*nope"):
        build_connection({**given, "sasl_password_file": str(tmp_path / "nope")}, {})
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match=r"--sasl-password-file: .*binary"):
        build_connection({**given, "sasl_password_file": str(tmp_path / "binary")}, {})


def test_defaults_without_anything() -> None:
    connection = build_connection(flags(), {})
    assert connection == Connection()
    assert kafka_options(connection) == {"bootstrap_servers": "127.0.0.1:29092",
                                         "security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize(("given", "message"), [
    (dict(security_protocol="PLAINTEXT", sasl_username="u"), "but the security protocol is PLAINTEXT"),
    (dict(security_protocol="SSL", sasl_mechanism="PLAIN"), "but the security protocol is SSL"),
    (dict(security_protocol="SASL_SSL", sasl_username="u"), "SASL_SSL needs a SASL mechanism"),
    (dict(security_protocol="SASL_SSL", sasl_mechanism="PLAIN"), "SASL_SSL needs a user name"),
    (dict(security_protocol="PLAINTEXT", ssl_cafile="CA"), "TLS files were given"),
    (dict(security_protocol="SSL", ssl_certfile="CA"), "needs both a certificate"),
    (dict(security_protocol="SSL", ssl_keyfile="CA"), "needs both a certificate"),
    (dict(security_protocol="SSL", ssl_cafile="missing.pem"), "--ssl-cafile: no such file"),
    (dict(security_protocol="SSL", ssl_certfile="missing.pem", ssl_keyfile="CA"), "--ssl-certfile: no such"),
    (dict(security_protocol="SSL", ssl_certfile="CA", ssl_keyfile="missing.pem"), "--ssl-keyfile: no such"),
    (dict(security_protocol="TLS"), "unknown security protocol 'TLS'"),
    (dict(offset_reset="newest"), "unknown offset reset 'newest'"),
])
def test_connection_check_errors(tmp_path: Path, given: dict, message: str) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    given = {name: str(tmp_path / "ca.pem") if value == "CA" else
             str(tmp_path / value) if value == "missing.pem" else value for name, value in given.items()}
    with pytest.raises(UserError, match=re.escape(message)) as error:
        build_connection(flags(**given), {PASSWORD_ENV: SECRET})
    assert SECRET not in str(error.value)
    with pytest.raises(UserError, match=re.escape(message)):
        Connection(**given, sasl_password=SECRET).check()


def test_check_errors_after_a_file_with_a_password_do_not_show_it(pem: dict) -> None:
    Path(pem["dir"], "ca.pem").unlink()
    with pytest.raises(UserError, match="no such file") as error:
        build_connection(flags(), {}, pem["config"])
    assert "p@ss" not in str(error.value)
    with pytest.raises(UserError, match="PLAINTEXT") as error:
        build_connection(flags(security_protocol="PLAINTEXT"), {}, pem["config"])
    assert "p@ss" not in str(error.value)


def test_kafka_options_for_sasl_ssl(pem: dict) -> None:
    connection = build_connection(flags(), {}, pem["config"])
    assert kafka_options(connection) == {
        "bootstrap_servers": "file:9093", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "alice",
        "sasl_plain_password": 'p@ss "quoted"', "ssl_cafile": f"{pem['dir']}/ca.pem",
        "ssl_certfile": f"{pem['dir']}/client.pem", "ssl_keyfile": f"{pem['dir']}/client.pem",
        "ssl_password": None, "ssl_check_hostname": False}


def test_kafka_options_for_plaintext_and_sasl_plaintext() -> None:
    assert kafka_options("h:1") == {"bootstrap_servers": "h:1", "security_protocol": "PLAINTEXT"}
    options = kafka_options(Connection(bootstrap_servers="h:1", security_protocol="SASL_PLAINTEXT",
                                       sasl_mechanism="PLAIN", sasl_username="u", sasl_password="pw"))
    assert options == {"bootstrap_servers": "h:1", "security_protocol": "SASL_PLAINTEXT",
                       "sasl_mechanism": "PLAIN", "sasl_plain_username": "u", "sasl_plain_password": "pw"}
    tls = kafka_options(Connection(bootstrap_servers="h:1", security_protocol="SSL"))
    assert not any(name.startswith("sasl") for name in tls) and tls["ssl_check_hostname"] is True


def test_the_password_is_never_shown(pem: dict) -> None:
    connection = build_connection(flags(), {PASSWORD_ENV: SECRET}, pem["config"])
    connection = Connection(**{**connection.__dict__, "ssl_key_password": "KeyPw-42"})
    for shown in (repr(connection), connection.describe(), str(connection), f"{connection}",
                  f"{connection!r}"):
        assert SECRET not in shown and "KeyPw-42" not in shown
    assert connection.describe() == ("file:9093 over SASL_SSL (SCRAM-SHA-512, user alice) "
                                     "with a client certificate")
    assert str(connection) == "file:9093"
    assert "alice" in repr(connection)


def test_connection_of() -> None:
    connection = Connection(bootstrap_servers="x:1", security_protocol="SSL")
    assert Connection.of(connection) is connection
    assert Connection.of("y:2") == Connection(bootstrap_servers="y:2")
    assert Connection.of("y:2").describe() == "y:2 over PLAINTEXT"
