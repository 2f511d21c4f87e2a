"""docker-compose.yml, Dockerfile and .dockerignore agree with the code. No Docker needed.

Ports and listeners match loginpipe.local.broker, every environment variable a Python service
sets is one the code reads, topic names are the pipeline's own, and the build works from
this checkout.
"""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from loginpipe.local import registry
from loginpipe.local.broker import DEFAULT_PORT
from loginpipe.topics import TOPICS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CONSUMER_SCRIPT = "create_kafka_consumer.py"
BROKER_SERVICE = "kafka"
REGISTRY_SERVICE = "schema-registry"
REGISTRY_CONTAINER_PORT = 8080  # Apicurio's image listens there unless QUARKUS_HTTP_PORT says otherwise
# How the code declares an environment variable: add_env_argument("--flag", env="NAME", ...), or,
# for one read without a flag (a secret), a module constant SOMETHING_ENV = "NAME".
ENV_DECLARATION = re.compile(r"""(?:\benv|_ENV)\s*=\s*["']([A-Z][A-Z0-9_]*)["']""")
# The settings each third-party image reads (environment variable prefixes).
IMAGE_SETTINGS = {
    "apache/kafka": ("KAFKA_", "CLUSTER_ID"),  # Kafka properties, plus the KRaft cluster id
    "apicurio/apicurio-registry-mem": ("REGISTRY_", "QUARKUS_", "JAVA_OPTS"),  # Quarkus config as env
    "grafana/grafana": ("GF_",),
    "obsidiandynamics/kafdrop": ("KAFKA_BROKERCONNECT", "JVM_OPTS", "SERVER_"),
    "prom/prometheus": (),
}
# Set for the interpreter, not read by our code.
INTERPRETER_ENV = {"PYTHONUNBUFFERED"}
DEPENDENCY_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def _load() -> dict:
    with COMPOSE_FILE.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _service_names() -> list[str]:
    try:
        return sorted(_load()["services"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return []  # test_compose_file_is_well_formed reports why


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load()


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def environment(service: dict) -> dict[str, object]:
    """A service's environment as a dict, from either Compose form (mapping or KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return env
    pairs = (item.split("=", 1) for item in env)
    return {pair[0]: (pair[1] if len(pair) == 2 else None) for pair in pairs}


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' as {NAME: (host, port)}."""
    result = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        result[name] = (host, int(port))
    return result


def published_ports(service: dict) -> dict[int, int]:
    """{host port: container port} for the service's TCP ports, short or long syntax."""
    result = {}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            if entry.get("published") is not None:
                result[int(entry["published"])] = int(entry["target"])
            continue
        spec = str(entry).split("/")[0]
        parts = spec.split(":")
        if len(parts) >= 2:
            result[int(parts[-2])] = int(parts[-1])
    return result


def command_words(service: dict) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(word) for word in command]


def env_names_in_code() -> set[str]:
    """Every NAME declared as env="NAME" or X_ENV = "NAME" in loginpipe/ or a top-level script."""
    sources = [*(ROOT / "loginpipe").rglob("*.py"), *ROOT.glob("*.py")]
    names: set[str] = set()
    for source in sources:
        names.update(ENV_DECLARATION.findall(source.read_text(encoding="utf-8")))
    return names


def built_services(services: dict) -> dict[str, dict]:
    return {name: service for name, service in services.items() if "build" in service}


def broker_env(services: dict) -> dict[str, object]:
    return environment(services[BROKER_SERVICE])


def test_compose_file_is_well_formed(compose: dict) -> None:
    assert isinstance(compose, dict), "docker-compose.yml is not a mapping"
    assert "version" not in compose, "the Compose spec has no 'version' key; remove it"
    services = compose.get("services")
    assert isinstance(services, dict) and services, "no services"
    assert {BROKER_SERVICE, "topics", "generator", "consumer"} <= set(services)
    for name, service in services.items():
        assert isinstance(service, dict), f"service {name} is not a mapping"
        assert "image" in service or "build" in service, f"service {name} has neither image nor build"


def test_environment_values_are_strings(services: dict) -> None:
    # Unquoted YAML turns false into a boolean (which Compose rejects) and 0012 into a number.
    for name, service in services.items():
        for key, value in environment(service).items():
            assert isinstance(value, str), f"{name}: {key}={value!r} should be a quoted string"


def test_kafka_host_port_is_the_local_broker_default(services: dict) -> None:
    ports = published_ports(services[BROKER_SERVICE])
    assert DEFAULT_PORT == 29092
    assert DEFAULT_PORT in ports, f"kafka publishes {sorted(ports)}, not {DEFAULT_PORT}"
    bound = listeners(broker_env(services)["KAFKA_LISTENERS"])
    advertised = listeners(broker_env(services)["KAFKA_ADVERTISED_LISTENERS"])
    host_listeners = [name for name, (host, _) in advertised.items() if host == "localhost"]
    assert len(host_listeners) == 1, f"expected one listener advertised on localhost: {advertised}"
    host_listener = host_listeners[0]
    assert advertised[host_listener] == ("localhost", DEFAULT_PORT)
    assert bound[host_listener][1] == ports[DEFAULT_PORT], (
        f"port {DEFAULT_PORT} is published to container port {ports[DEFAULT_PORT]}, but the "
        f"{host_listener} listener binds {bound[host_listener][1]}")


def test_kafka_listeners_are_consistent(services: dict) -> None:
    env = broker_env(services)
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    internal = env["KAFKA_INTER_BROKER_LISTENER_NAME"]

    assert set(bound) <= set(protocols), f"listeners without a protocol: {set(bound) - set(protocols)}"
    assert set(advertised) <= set(bound) - {controller}, "advertise only bound, non-controller listeners"
    assert controller in bound
    assert internal in advertised
    assert advertised[internal] == (BROKER_SERVICE, bound[internal][1]), (
        f"containers must reach the broker as {BROKER_SERVICE}:port, got {advertised[internal]}")

    node_id, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node_id == env["KAFKA_NODE_ID"]
    assert voter.rpartition(":")[2] == str(bound[controller][1])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}


def test_kafka_single_node_settings(services: dict) -> None:
    env = broker_env(services)
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR"):
        assert env.get(key) == "1", f"{key} must be 1 on a single node, got {env.get(key)!r}"
    assert env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false"
    assert env.get("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS") == "0"


def test_kafka_healthcheck_asks_the_internal_listener(services: dict) -> None:
    test = services[BROKER_SERVICE].get("healthcheck", {}).get("test", [])
    words = test.split() if isinstance(test, str) else test
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in words
    server = words[words.index("--bootstrap-server") + 1]
    internal = broker_env(services)["KAFKA_INTER_BROKER_LISTENER_NAME"]
    port = listeners(broker_env(services)["KAFKA_LISTENERS"])[internal][1]
    assert server == f"localhost:{port}"


def test_python_services_bootstrap_from_the_internal_listener(services: dict) -> None:
    env = broker_env(services)
    host, port = listeners(env["KAFKA_ADVERTISED_LISTENERS"])[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    built = built_services(services)
    assert built, "no service is built from the Dockerfile"
    for name, service in built.items():
        assert environment(service).get("BOOTSTRAP_SERVERS") == f"{host}:{port}", name


@pytest.mark.parametrize("name", _service_names())
def test_env_names_are_read_by_the_code(services: dict, name: str) -> None:
    service = services[name]
    names = set(environment(service))
    if "build" not in service:
        # A third-party image's own settings, by the prefixes that image reads.
        image = service["image"].split(":")[0]
        assert image in IMAGE_SETTINGS, f"{name}: unknown image {image}"
        unknown = {n for n in names if not n.startswith(IMAGE_SETTINGS[image])}
        assert not unknown, f"{name}: not {image} settings: {sorted(unknown)}"
        return
    if CONSUMER_SCRIPT in command_words(service) and not (ROOT / CONSUMER_SCRIPT).exists():
        pytest.skip(f"{CONSUMER_SCRIPT} is not written yet")
    unknown = names - INTERPRETER_ENV - env_names_in_code()
    assert not unknown, f"{name} sets environment variables no code reads: {sorted(unknown)}"


def test_env_name_scan_finds_declarations() -> None:
    # Guards the check above against a regex that matches nothing.
    assert {"BOOTSTRAP_SERVERS", "GENERATOR_RATE", "PARTITIONS"} <= env_names_in_code()


def test_commands_run_code_that_exists(services: dict) -> None:
    for name, service in built_services(services).items():
        words = command_words(service)
        assert words[:1] == ["python"], f"{name}: command should run python, got {words}"
        if words[1] == "-m":
            module = ROOT.joinpath(*words[2].split("."))
            assert module.with_suffix(".py").is_file() or (module / "__main__.py").is_file(), name
        elif words[1] == CONSUMER_SCRIPT and not (ROOT / CONSUMER_SCRIPT).exists():
            continue  # being written
        else:
            assert (ROOT / words[1]).is_file(), f"{name}: {words[1]} does not exist"


def test_topic_names_are_the_pipelines(services: dict) -> None:
    known = {spec.name for spec in TOPICS}
    for name, service in services.items():
        for key, value in environment(service).items():
            if key.endswith("_TOPIC"):
                assert value in known, f"{name}: {key}={value!r} is not one of {sorted(known)}"
        words = command_words(service)
        for flag, value in pairwise(words):
            if flag == "--topic":
                assert value in known, f"{name}: --topic {value!r} is not one of {sorted(known)}"


def test_depends_on_targets_exist(services: dict) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {target: {"condition": "service_started"} for target in depends}
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name, f"{name} depends on itself"
            condition = spec.get("condition", "service_started")
            assert condition in DEPENDENCY_CONDITIONS, f"{name}: unknown condition {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck to wait for"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} must be one-shot"


def test_build_context_has_a_dockerfile(services: dict) -> None:
    builds = [service["build"] for service in built_services(services).values()]
    assert builds, "no service is built"
    for build in builds:
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).is_file(), f"no {dockerfile} in build context {context}"
    images = {service.get("image") for service in built_services(services).values()}
    assert len(images) == 1, f"the Python services should share one image, got {images}"


def test_dockerfile_installs_requirements_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    assert re.search(r"^COPY\s+.*\brequirements\.txt\b", text, re.MULTILINE), "requirements.txt is not copied"
    assert re.search(r"^RUN\s+.*\bpip\s+install\b.*-r\s+\S*requirements\.txt\b", text, re.MULTILINE), (
        "the Dockerfile does not pip install -r requirements.txt")
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image should run as a non-root user"
    assert (ROOT / "requirements.txt").is_file()


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    missing = {".venv", ".kafka", ".git", "tests"} - entries
    assert not missing, f".dockerignore should exclude {sorted(missing)}"
    assert not {"loginpipe", "requirements.txt"} & entries, ".dockerignore excludes what the image needs"


def registry_container_port(services: dict) -> int:
    return int(environment(services[REGISTRY_SERVICE]).get("QUARKUS_HTTP_PORT", REGISTRY_CONTAINER_PORT))


def test_the_schema_registry_is_the_one_the_local_command_builds(services: dict) -> None:
    image, _, tag = services[REGISTRY_SERVICE]["image"].partition(":")
    assert image == "apicurio/apicurio-registry-mem"
    assert tag == registry.apicurio_version(), "compose and loginpipe.local.registry should run one version"
    env = environment(services[REGISTRY_SERVICE])
    assert env.get("REGISTRY_RULES_GLOBAL_COMPATIBILITY") == registry.GLOBAL_COMPATIBILITY


def test_the_schema_registry_host_port_is_the_local_registry_default(services: dict) -> None:
    ports = published_ports(services[REGISTRY_SERVICE])
    container_port = registry_container_port(services)
    assert ports.get(registry.DEFAULT_PORT) == container_port, (
        f"{REGISTRY_SERVICE} publishes {ports}, not {registry.DEFAULT_PORT} -> {container_port}")


def test_the_schema_registry_healthcheck_asks_the_confluent_api(services: dict) -> None:
    test = services[REGISTRY_SERVICE].get("healthcheck", {}).get("test", [])
    words = test.split() if isinstance(test, str) else test
    container_port = registry_container_port(services)
    assert f"http://localhost:{container_port}{registry.API_PATH}/subjects" in words
    assert any(word.startswith("-f") for word in words), "curl must fail on an HTTP error"
