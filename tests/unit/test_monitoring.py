"""The monitoring stack of docker-compose.yml agrees with the code: Prometheus scrapes the port
the consumer serves, Grafana's queries use metric names the exporter defines, its provisioning
files exist, the dashboard and Kafdrop point where they should. No Docker needed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from loginpipe.dashboard.cli import build_parser as dashboard_parser
from loginpipe.observe.prometheus import Exporter
from tests.unit.test_compose import command_words, environment

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def published(service: dict) -> set[int]:
    return {int(str(p).split(":")[-1]) for p in service.get("ports", [])}


def exported_names() -> set[str]:
    exporter = Exporter(lag=lambda: 0, tracked_users=lambda: 0, tracked_devices=lambda: 0)
    text = generate_latest(exporter.registry).decode()
    return set(re.findall(r"^(loginpipe_[a-z0-9_]+)", text, re.MULTILINE))


def test_prometheus_scrapes_the_consumers_metrics_port(services: dict) -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert targets
    for target in targets:
        host, port = target.split(":")
        assert host in services, f"scrape target {target}: no service {host}"
        assert environment(services[host]).get("METRICS_PORT") == port, target
    mounts = services["prometheus"]["volumes"]
    assert any(m.startswith("./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml") for m in mounts)


def test_grafana_queries_use_exported_metric_names() -> None:
    dashboard = json.loads((MONITORING / "grafana/dashboards/loginpipe.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bloginpipe_[a-z0-9_]+", expr)}
    assert used and used <= exported_names(), sorted(used - exported_names())
    assert {"loginpipe_records_consumed_total", "loginpipe_consumer_lag_records"} <= used


def test_grafana_provisioning_is_mounted_and_points_at_prometheus(services: dict) -> None:
    grafana = services["grafana"]
    for mount in grafana["volumes"]:
        source = mount.split(":")[0]
        assert (ROOT / source).exists(), mount
    datasource = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    url = datasource["datasources"][0]["url"]
    host, port = re.match(r"http://([^:]+):(\d+)", url).groups()
    assert host in services and int(port) in published(services[host])
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/loginpipe.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert any(m.split(":")[1] == path for m in grafana["volumes"])
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path) and (MONITORING / "grafana/dashboards" / Path(home).name).exists()


def test_dashboard_service_serves_on_its_published_port(services: dict) -> None:
    words = command_words(services["dashboard"])
    args = dashboard_parser().parse_args(words[3:])
    assert args.port in published(services["dashboard"])
    assert args.address == "0.0.0.0"  # reachable from outside its container


def test_kafdrop_connects_to_the_internal_listener(services: dict) -> None:
    bootstrap = environment(services["consumer"])["BOOTSTRAP_SERVERS"]
    assert environment(services["kafdrop"])["KAFKA_BROKERCONNECT"] == bootstrap
