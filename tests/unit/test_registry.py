"""The local schema registry's command (loginpipe.local.registry) with stand-ins for Maven and Java,
and the registry client (loginpipe.registry_client) against a stand-in HTTP server. The real
registry is exercised by tests/integration/test_registry.py (pytest -m registry)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loginpipe.errors import UserError
from loginpipe.local import registry
from loginpipe.local.registry import LocalRegistry
from loginpipe.registry_client import RegistryError, RegistryUnavailable, SchemaRegistryClient
from loginpipe.waiting import wait_until
from tests.fake_registry import ScriptedRegistry

VERSION = registry.apicurio_version()
ORIGINAL_PROPERTIES = ("%prod.quarkus.http.port=${HTTP_PORT:8080}\n"
                       "%prod.quarkus.package.type=legacy-jar\n%dev.quarkus.package.type=legacy-jar\n")

# A stand-in for Maven: "dependency:copy" writes the app jar with its application.properties;
# "package" waits for the go file (created by the test's progress printer, so that the build
# cannot finish before a progress line), then makes the runnable folder, keeping a copy of the
# properties it was given. $FAKE_MVN_FAIL makes it fail like a broken build.
FAKE_MVN = f"""#!{sys.executable}
import os, pathlib, sys, time, zipfile
args = sys.argv[1:]
print("[INFO] Downloaded from central-only: https://repo.example/some.pom", flush=True)
if os.environ.get("FAKE_MVN_FAIL"):
    print("[ERROR] Failed to execute goal: could not resolve io.apicurio:missing", flush=True)
    sys.exit(1)
if "dependency:copy" in args:
    out = pathlib.Path("app-jar"); out.mkdir()
    with zipfile.ZipFile(out / "apicurio-registry-app-{VERSION}.jar", "w") as jar:
        jar.writestr("application.properties", {ORIGINAL_PROPERTIES!r})
elif "package" in args:
    go = pathlib.Path(os.environ["FAKE_MVN_GO"])
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    app = pathlib.Path("target/quarkus-app"); app.mkdir(parents=True)
    (app / "quarkus-run.jar").write_text("jar")
    given = pathlib.Path("src/main/resources/application.properties").read_text()
    (app / "given.properties").write_text(given)
"""
# A stand-in for Java: exits at once with $FAKE_JAVA_EXIT, else runs (answering nothing) until stopped.
FAKE_JAVA = f"""#!{sys.executable}
import os, sys, time
print("fake registry starting", flush=True)
if os.environ.get("FAKE_JAVA_EXIT"):
    print("Error: could not bind", flush=True)
    sys.exit(int(os.environ["FAKE_JAVA_EXIT"]))
time.sleep(60)
"""


def install(bin_dir: Path, name: str, text: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only the stand-ins (add them with ``install``)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def built(home: Path) -> LocalRegistry:
    """A registry whose build is already there (a stand-in jar)."""
    app = home / "app"
    app.mkdir(parents=True)
    (app / "quarkus-run.jar").write_text("jar")
    (app / f".complete-{VERSION}").touch()
    return LocalRegistry(home=home, port=_free_port())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- home, URL, properties

def test_a_checkout_keeps_the_registry_in_its_registry_folder(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    assert registry.default_home(tmp_path) == tmp_path / ".registry"


def test_an_installed_package_keeps_the_registry_in_the_users_cache(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert registry.default_home(tmp_path / "site-packages") == tmp_path / "cache" / "loginpipe" / "registry"


def test_the_url_is_the_confluent_api_of_apicurio() -> None:
    assert registry.registry_url(18081) == "http://127.0.0.1:18081/apis/ccompat/v7"
    assert LocalRegistry(port=19000).url == "http://127.0.0.1:19000/apis/ccompat/v7"


def test_the_app_properties_build_a_fast_jar_and_index_the_app_jar() -> None:
    lines = registry.app_properties(ORIGINAL_PROPERTIES).splitlines()
    assert "%prod.quarkus.package.type=fast-jar" in lines
    assert "%prod.quarkus.package.type=legacy-jar" not in lines
    assert "%dev.quarkus.package.type=legacy-jar" in lines  # other profiles untouched
    assert "quarkus.index-dependency.registryapp.artifact-id=apicurio-registry-app" in lines
    assert "%prod.quarkus.http.port=${HTTP_PORT:8080}" in lines


def test_the_app_properties_gain_the_package_type_when_the_original_has_none() -> None:
    assert "%prod.quarkus.package.type=fast-jar" in registry.app_properties("a=b").splitlines()


def test_the_wrapper_pins_the_versions_the_notes_found_to_build() -> None:
    pom = registry.POM.read_text()
    assert VERSION == "2.4.2.Final"
    assert "<quarkus.version>2.16.4.Final</quarkus.version>" in pom
    assert "<artifactId>org.everit.json.schema</artifactId>" in pom  # excluded: jitpack only
    assert "<mirrorOf>*</mirrorOf>" in registry.SETTINGS.read_text()


# ---------------------------------------------------------------- building

def test_a_build_reports_progress_and_leaves_a_runnable_folder(tools: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    install(tools, "mvn", FAKE_MVN)
    install(tools, "java", FAKE_JAVA)
    go = tmp_path / "go"
    monkeypatch.setenv("FAKE_MVN_GO", str(go))
    monkeypatch.setattr(registry, "PROGRESS_INTERVAL_S", 0.05)
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        if "building:" in line:
            go.touch()

    monkeypatch.setattr(registry, "_print", say)
    home = tmp_path / "home"
    jar = registry.ensure_built(home)
    assert jar == home / "app" / "quarkus-run.jar" and jar.is_file()
    assert (home / "app" / f".complete-{VERSION}").exists()
    assert not (home / "build").exists()
    given = (home / "app" / "given.properties").read_text()
    assert given == registry.app_properties(ORIGINAL_PROPERTIES)
    assert any(line.startswith("  building: ") and "files downloaded so far" in line for line in said), said
    assert said[-1].startswith("built in ")
    # built once: no Maven needed again
    (tools / "mvn").unlink()
    assert registry.ensure_built(home, quiet=True) == jar


def test_a_failed_build_is_one_error_with_the_logs_last_lines(tools: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    install(tools, "mvn", FAKE_MVN)
    install(tools, "java", FAKE_JAVA)
    monkeypatch.setenv("FAKE_MVN_FAIL", "1")
    with pytest.raises(UserError, match="the registry build failed") as failure:
        registry.ensure_built(tmp_path / "home", quiet=True)
    assert "could not resolve io.apicurio:missing" in str(failure.value)
    assert not (tmp_path / "home" / "app").exists()


@pytest.mark.parametrize("missing", ["mvn", "java"])
def test_a_missing_tool_is_named(tools: Path, tmp_path: Path, missing: str) -> None:
    for name in {"mvn", "java"} - {missing}:
        install(tools, name, FAKE_JAVA)
    with pytest.raises(UserError, match=f"'{missing}' is not installed"):
        registry.ensure_built(tmp_path / "home", quiet=True)


# ---------------------------------------------------------------- starting

def test_a_taken_port_is_refused_before_anything_runs(tmp_path: Path, taken_port: int) -> None:
    with pytest.raises(UserError, match=f"port {taken_port} is already in use by another program"):
        LocalRegistry(home=tmp_path, port=taken_port).start()
    assert not (tmp_path / "app").exists()


def test_java_missing_at_start_is_named(tools: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="'java' is not installed"):
        built(tmp_path).start()


def test_a_registry_that_exits_at_start_is_reported_with_its_log(tools: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    install(tools, "java", FAKE_JAVA)
    monkeypatch.setenv("FAKE_JAVA_EXIT", "3")
    local = built(tmp_path)
    with pytest.raises(UserError, match="exited with code 3") as failure:
        local.start(timeout_s=30)
    assert "Error: could not bind" in str(failure.value)
    assert local.pid() is None


def test_a_registry_that_never_answers_is_stopped_and_reported(tools: Path, tmp_path: Path) -> None:
    install(tools, "java", FAKE_JAVA)
    local = built(tmp_path)
    answer = r"did not answer at http://127\.0\.0\.1:\d+/apis/ccompat/v7"
    with pytest.raises(UserError, match=answer) as failure:
        local.start(timeout_s=1)
    assert "log tail:" in str(failure.value)
    assert local.pid() is None and local.status() == "not running"


def test_a_running_registry_is_found_by_its_jar_and_stopped(tools: Path, tmp_path: Path) -> None:
    install(tools, "java", FAKE_JAVA)
    local = built(tmp_path)
    proc = local._launch()  # runs without answering: enough to be found and stopped
    try:
        # /proc/<pid>/cmdline reads empty for a moment while the new program is being loaded
        assert wait_until(local.pid, 10) == proc.pid and local.running_port() == local.port
        assert local.status().startswith(f"running at {local.url} (pid {proc.pid}), not answering")
        other = LocalRegistry(home=tmp_path, port=local.port + 1)
        with pytest.raises(UserError, match=f"already runs on port {local.port}"):
            other.start()
        assert LocalRegistry(home=tmp_path / "elsewhere").pid() is None
    finally:
        assert local.stop() == f"stopped (pid {proc.pid})"
    assert local.pid() is None and local.stop() == "not running"


def test_schemas_are_stored_on_disk_under_the_home(tmp_path: Path) -> None:
    command = LocalRegistry(home=tmp_path).command()
    # Apicurio's default is an in-memory H2 database: a restart would lose every schema and reuse ids
    assert (f"-Dquarkus.datasource.jdbc.url=jdbc:h2:file:{tmp_path / 'data' / 'registry'};"
            "DB_CLOSE_ON_EXIT=FALSE;LOCK_TIMEOUT=10000") in command
    assert command.index("-jar") > command.index(next(a for a in command if "jdbc" in a))  # a JVM flag


def test_reset_stops_the_registry_and_deletes_its_schemas(tools: Path, tmp_path: Path) -> None:
    install(tools, "java", FAKE_JAVA)
    local = built(tmp_path)
    proc = local._launch()
    assert local.data_dir.is_dir()  # made before the JVM starts
    (local.data_dir / "registry.mv.db").write_text("schemas")
    assert wait_until(local.pid, 10) == proc.pid
    assert local.reset() == f"stopped (pid {proc.pid}); deleted every stored schema ({local.data_dir})"
    assert local.pid() is None and not local.data_dir.exists()
    assert (tmp_path / "app" / "quarkus-run.jar").is_file()  # the build stays
    assert local.reset() == f"no stored schemas to delete ({local.data_dir} does not exist)"


def test_a_recycled_pid_is_not_taken_for_the_registry(tmp_path: Path) -> None:
    local = LocalRegistry(home=tmp_path)
    local.pid_file.write_text(f"{os.getpid()}\n")  # this test's own process
    assert local.pid() is None


def test_the_command_line_errors_are_one_line(tmp_path: Path, taken_port: int) -> None:
    result = subprocess.run([sys.executable, "-m", "loginpipe.local.registry", "start",
                             "--home", str(tmp_path), "--port", str(taken_port)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: port {taken_port} is already in use by another program; stop it or choose another port "
        f"(--port or $SCHEMA_REGISTRY_PORT)"]
    status = subprocess.run([sys.executable, "-m", "loginpipe.local.registry", "status",
                             "--home", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert (status.returncode, status.stdout.strip()) == (3, "not running")


# ---------------------------------------------------------------- the client

@pytest.fixture
def fake() -> Iterator[tuple[SchemaRegistryClient, ScriptedRegistry]]:
    """A client and the scripted registry it talks to (``answers`` and ``seen`` use the full path)."""
    with ScriptedRegistry() as server:
        yield SchemaRegistryClient(f"{server.url}/"), server


def test_register_posts_the_schema_under_the_quoted_subject(fake: Any) -> None:
    client, server = fake
    server.answers[("POST", "/apis/ccompat/v7/subjects/a%2Fb-value/versions")] = (200, {"id": 7})
    assert client.register("a/b-value", '"string"') == 7
    _, _, content_type, body = server.seen[-1]
    assert content_type == "application/vnd.schemaregistry.v1+json"
    assert body == {"schema": '"string"'}  # Avro is the default type: no schemaType
    client.register("a/b-value", "{}", schema_type="JSON")
    assert server.seen[-1][3] == {"schema": "{}", "schemaType": "JSON"}


def test_a_refusal_carries_the_registrys_status_and_message(fake: Any) -> None:
    client, server = fake
    server.answers[("POST", "/apis/ccompat/v7/subjects/s/versions")] = (
        409, {"error_code": 409, "message": "Schema being registered is incompatible"})
    with pytest.raises(RegistryError, match="HTTP 409: Schema being registered is incompatible") as refusal:
        client.register("s", '"string"')
    assert (refusal.value.status, refusal.value.error_code) == (409, 409)
    assert not isinstance(refusal.value, RegistryUnavailable)


def test_compatibility_levels_are_set_and_read(fake: Any) -> None:
    client, server = fake
    server.answers[("PUT", "/apis/ccompat/v7/config/s")] = (200, {"compatibility": "BACKWARD"})
    server.answers[("GET", "/apis/ccompat/v7/config/s")] = (200, {"compatibilityLevel": "BACKWARD"})
    assert client.set_compatibility("s", "BACKWARD") == "BACKWARD"
    assert server.seen[-1][3] == {"compatibility": "BACKWARD"}
    assert client.compatibility("s") == "BACKWARD"
    assert client.compatibility("unset") is None
    with pytest.raises(ValueError, match="BACKWARDS"):
        client.set_compatibility("s", "BACKWARDS")


@pytest.mark.parametrize(("status", "answer", "expected"), [
    (200, {"is_compatible": True}, True),
    (200, {"is_compatible": False}, False),
    (409, {"error_code": 0, "message": "Incompatible artifact"}, False),  # Apicurio's way
    (404, {"error_code": 40401, "message": "Subject not found"}, True),  # nothing to break
])
def test_a_compatibility_test_answers_yes_or_no(fake: Any, status: int, answer: dict, expected: bool) -> None:
    client, server = fake
    server.answers[("POST", "/apis/ccompat/v7/compatibility/subjects/s/versions/latest")] = (status, answer)
    assert client.is_compatible("s", '"string"') is expected


def test_a_schema_is_read_by_id(fake: Any) -> None:
    client, server = fake
    server.answers[("GET", "/apis/ccompat/v7/schemas/ids/3")] = (200, {"schema": '"long"'})
    assert client.schema_by_id(3) == '"long"'
    with pytest.raises(RegistryError, match="HTTP 404: not found"):
        client.schema_by_id(4)


def test_no_answer_is_unavailable_not_a_refusal() -> None:
    client = SchemaRegistryClient(f"http://127.0.0.1:{_free_port()}/apis/ccompat/v7", timeout_s=2)
    with pytest.raises(RegistryUnavailable, match=r"no answer from http://127\.0\.0\.1"):
        client.subjects()

