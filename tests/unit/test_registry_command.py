"""``python -m loginpipe.registry``: check and register against a stand-in registry (an HTTP server
in a thread), their lines and exit codes, and the local commands it hands to
loginpipe.local.registry. The real registry's answers are in tests/integration/test_registry.py."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loginpipe import commands, registry
from loginpipe.local import registry as local
from tests.fake_registry import API, ScriptedRegistry

SUBJECT = "orders-value"
V1 = {"type": "record", "name": "Order", "fields": [{"name": "id", "type": "string"},
                                                    {"name": "region", "type": "string"}]}
LATEST = {"subject": SUBJECT, "version": 3, "id": 7, "schema": json.dumps(V1)}
SCRATCH = re.compile(r"\.loginpipe-check-[0-9a-f]+")


def _relative(path: str) -> str:
    """The path under the API, with a scratch subject's random part read as ".SCRATCH"."""
    return SCRATCH.sub(".SCRATCH", path.removeprefix(API))


class Registry:
    """The scripted registry as these tests script it: ``answer`` a (method, path) with a status and
    a body (404 40401 otherwise); ``seen`` holds every request as (method, path, body)."""

    def __init__(self, scripted: ScriptedRegistry) -> None:
        self.scripted = scripted
        self.url = scripted.url

    def answer(self, method: str, path: str, status: int, body: Any) -> None:
        self.scripted.answers[(method, path)] = (status, body)

    @property
    def seen(self) -> list[tuple[str, str, Any]]:
        return [(request.method, request.path, request.body) for request in self.scripted.seen]


@pytest.fixture
def fake() -> Iterator[Registry]:
    with ScriptedRegistry(normalize=_relative) as scripted:
        yield Registry(scripted)


@pytest.fixture
def subject(fake: Registry) -> Registry:
    """A subject at version 3 (id 7) under BACKWARD."""
    fake.answer("GET", f"/subjects/{SUBJECT}/versions/latest", 200, LATEST)
    fake.answer("GET", f"/config/{SUBJECT}", 200, {"compatibilityLevel": "BACKWARD"})
    return fake


def schema_file(tmp_path: Path, schema: Any, name: str = "new.avsc") -> str:
    path = tmp_path / name
    path.write_text(schema if isinstance(schema, str) else json.dumps(schema))
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    code = registry.main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def check(capsys: pytest.CaptureFixture[str], fake: Registry, path: str,
          *more: str) -> tuple[int, list[str], list[str]]:
    return run(capsys, "check", path, "--subject", SUBJECT, "--schema-registry-url", fake.url, *more)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


OPTIONAL = {**V1, "fields": [*V1["fields"], {"name": "note", "type": ["null", "string"], "default": None}]}
REQUIRED = {**V1, "fields": [*V1["fields"], {"name": "tenant", "type": "string"}]}
CHECK = f"/compatibility/subjects/{SUBJECT}/versions/latest?verbose=true"


# ---------------------------------------------------------------- check

def test_a_compatible_schema_is_one_line_and_exit_0(subject: Registry, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    subject.answer("POST", CHECK, 200, {"is_compatible": True})
    path = schema_file(tmp_path, OPTIONAL)
    assert check(capsys, subject, path) == (
        0, [f"compatible: {path} with {SUBJECT} version 3 (id 7) under level BACKWARD"], [])
    assert subject.seen[-1] == ("POST", CHECK, {"schema": json.dumps(OPTIONAL)})


def test_confluents_reasons_name_the_field(subject: Registry, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    subject.answer("POST", CHECK, 200, {"is_compatible": False, "messages": [
        "Incompatibility{type:READER_FIELD_MISSING_DEFAULT_VALUE, location:/fields/2, message:tenant, "
        "reader:{...}, writer:{...}}", "{oldSchemaVersion: 3}", "{compatibility: 'BACKWARD'}"]})
    path = schema_file(tmp_path, REQUIRED)
    code, out, err = check(capsys, subject, path)
    assert (code, err) == (1, [])
    assert out == [f"incompatible: {path} with {SUBJECT} version 3 (id 7) under level BACKWARD: "
                   "tenant at /fields/2 (READER_FIELD_MISSING_DEFAULT_VALUE) (BACKWARD: the new schema "
                   "must read data written with the old; added fields need defaults)"]


def test_apicurios_reason_gets_the_field_name_of_a_position(subject: Registry, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    subject.answer("POST", CHECK, 200, {"is_compatible": False, "reason": (
        "Incompatible artifact: orders-value [AVRO], num of incompatible diffs: {1}, list of diff types: "
        "[reader type: INT not compatible with writer type: STRING at /fields/1/type] Causes: reader "
        "type: INT not compatible with writer type: STRING at /fields/1/type")})
    changed = {**V1, "fields": [V1["fields"][0], {"name": "region", "type": "int"}]}
    code, out, _ = check(capsys, subject, schema_file(tmp_path, changed))
    assert code == 1
    assert ": reader type: INT not compatible with writer type: STRING at /fields/1/type (field region) (" \
        in out[0]


def test_apicurios_409_and_a_reported_none_level(subject: Registry, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Apicurio reports NONE for a subject under its global level: a refusal shows it is not NONE.
    subject.answer("GET", f"/config/{SUBJECT}", 200, {"compatibilityLevel": "NONE"})
    subject.answer("POST", CHECK, 409, {"error_code": 0, "message": "Incompatible artifact: orders-value "
                                        "[AVRO] ... Causes: tenant at /fields/2"})
    code, out, _ = check(capsys, subject, schema_file(tmp_path, REQUIRED))
    assert code == 1
    assert out[0].endswith("under the registry's global level: tenant at /fields/2")


def test_a_subject_without_versions_accepts_anything(fake: Registry, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = schema_file(tmp_path, V1)
    assert check(capsys, fake, path) == (
        0, [f"compatible: {SUBJECT} has no versions yet, so {path} would be its first"], [])


def test_a_level_given_is_checked_in_a_scratch_subject_and_the_real_one_is_untouched(
        subject: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scratch = f"{SUBJECT}.SCRATCH"
    subject.answer("GET", f"/subjects/{SUBJECT}/versions", 200, [1, 2, 3])
    subject.answer("GET", f"/subjects/{SUBJECT}/versions/3", 200, LATEST)
    subject.answer("POST", f"/subjects/{scratch}/versions", 200, {"id": 7})
    for level in ("NONE", "FULL"):
        subject.answer("PUT", f"/config/{scratch}", 200, {"compatibility": level})
    subject.answer("DELETE", f"/subjects/{scratch}", 200, [1])
    subject.answer("DELETE", f"/subjects/{scratch}?permanent=true", 200, [1])
    subject.answer("POST", f"/compatibility/subjects/{scratch}/versions/latest?verbose=true", 200, {
        "is_compatible": False, "reason": f"Incompatible artifact: {SUBJECT}.loginpipe-check-0a [AVRO], "
                                          "... Causes: region at /fields/1"})
    dropped = {**V1, "fields": V1["fields"][:1]}
    code, out, _ = check(capsys, subject, schema_file(tmp_path, dropped), "--level", "full")
    assert code == 1 and "under level FULL: region at /fields/1 (FULL: each" in out[0]
    calls = [(method, path) for method, path, _ in subject.seen]
    assert ("GET", f"/subjects/{SUBJECT}/versions/2") not in calls  # FULL compares with the latest only
    assert calls[-2:] == [("DELETE", f"/subjects/{scratch}"),
                          ("DELETE", f"/subjects/{scratch}?permanent=true")]
    assert [body for method, path, body in subject.seen if method == "PUT"] == [
        {"compatibility": "NONE"}, {"compatibility": "FULL"}]
    assert not [path for method, path, _ in subject.seen if method != "GET" and "SCRATCH" not in path]


# ---------------------------------------------------------------- mistakes and outages

@pytest.mark.parametrize(("content", "line"), [
    (None, "error: {path}: no such file"),
    ("{not json", "error: {path} is not JSON: Expecting property name enclosed in double quotes "
                  "(line 1, column 2)"),
    ({"type": "record", "name": "R", "fields": [{"name": "a"}]},
     "error: {path} is not a valid Avro schema: Record field 'a' is missing 'type'"),
    ({"type": "strnig"}, "error: {path} is not a valid Avro schema: "),
])
def test_a_schema_file_that_is_no_avro_schema_is_exit_2(
        fake: Registry, tmp_path: Path, content: Any, line: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "missing.avsc") if content is None else schema_file(tmp_path, content)
    code, out, err = check(capsys, fake, path)
    assert (code, out, len(err)) == (2, [], 1)
    assert err[0].startswith(line.format(path=path))
    assert fake.seen == []  # judged before asking the registry


def test_a_schema_the_registry_finds_invalid_is_exit_2(subject: Registry, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    subject.answer("POST", CHECK, 422, {"error_code": 42201, "message": "Invalid schema"})
    path = schema_file(tmp_path, V1)
    assert check(capsys, subject, path) == (
        2, [], [f"error: the registry finds {path} invalid: Invalid schema"])


def test_no_registry_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_free_port()}{API}"
    code, out, err = run(capsys, "check", schema_file(tmp_path, V1), "--subject", SUBJECT,
                         "--schema-registry-url", url)
    assert (code, out, len(err)) == (3, [], 1)
    assert err[0].startswith(f"error: no answer from {url}: ")
    assert err[0].endswith("start the local registry (python -m loginpipe.registry start) "
                           "or give --schema-registry-url")


def test_the_url_comes_from_the_environment_and_defaults_to_the_local_registry(
        fake: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", fake.url)
    args = registry.build_parser().parse_args(["check", "a", "--subject", "s"])
    assert args.schema_registry_url == fake.url
    monkeypatch.delenv("SCHEMA_REGISTRY_URL")
    assert registry.LOCAL_URL == "http://127.0.0.1:18081/apis/ccompat/v7"


@pytest.mark.parametrize(("status", "answer", "words"), [
    (404, {"message": "Could not find resource"}, "does not answer like a Confluent-compatible registry API"),
    (500, {"error_code": 50001, "message": "storage failed"}, "failed: HTTP 500: storage failed"),
])
def test_a_wrong_url_or_a_failing_registry_is_exit_3(fake: Registry, tmp_path: Path, status: int,
                                                     answer: Any, words: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("GET", f"/subjects/{SUBJECT}/versions/latest", status, answer)
    code, out, err = check(capsys, fake, schema_file(tmp_path, V1))
    assert (code, out, len(err)) == (3, [], 1) and words in err[0]


def test_argument_mistakes_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["check", "a.avsc"], ["check", "a.avsc", "--subject", "s", "--level", "SIDEWAYS"],
                 ["frobnicate"]):
        with pytest.raises(SystemExit) as exit_:
            registry.main(argv)
        err = capsys.readouterr().err.splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and err[0].endswith("--help)"), (argv, err)


def test_the_help_documents_the_exit_codes() -> None:
    result = subprocess.run([sys.executable, "-m", "loginpipe.registry", "check", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m loginpipe.registry check")
    for line in ("  1  incompatible (check) or refused (register)", "  3  no registry answers at the URL"):
        assert line in result.stdout


# ---------------------------------------------------------------- register

def test_register_prints_the_id(fake: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("POST", f"/subjects/{SUBJECT}/versions", 200, {"id": 12})
    path = schema_file(tmp_path, V1)
    assert run(capsys, "register", path, "--subject", SUBJECT, "--schema-registry-url", fake.url) == (
        0, [f"registered: {path} under {SUBJECT} with id 12"], [])


def test_a_refused_registration_is_exit_1_with_the_registrys_words(
        subject: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subject.answer("POST", f"/subjects/{SUBJECT}/versions", 409, {
        "error_code": 409, "message": "Schema being registered is incompatible with an earlier schema"})
    path = schema_file(tmp_path, REQUIRED)
    code, out, _ = run(capsys, "register", path, "--subject", SUBJECT, "--schema-registry-url", subject.url)
    assert (code, out) == (1, [f"refused: {path} under {SUBJECT} by level BACKWARD: Schema being registered "
                               "is incompatible with an earlier schema (BACKWARD: the new schema must read "
                               "data written with the old; added fields need defaults)"])


# ---------------------------------------------------------------- the local registry's commands

def test_the_local_commands_are_handed_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert set(registry.LOCAL_HELP) == set(local.COMMANDS)
    assert run(capsys, "status", "--home", str(tmp_path)) == (3, ["not running"], [])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "registry.mv.db").write_text("schemas")
    assert run(capsys, "--log-level", "WARNING", "reset", "--home", str(tmp_path)) == (
        0, [f"deleted every stored schema ({tmp_path / 'data'})"], [])
    assert not (tmp_path / "data").exists()
    # a subject named like a command does not make a check a local command
    assert registry._first_command(["check", "x.avsc", "--subject", "start"]) == "check"


def test_loginpipe_registry_is_this_command() -> None:
    assert commands.SUBCOMMANDS["registry"].module == "loginpipe.registry"
