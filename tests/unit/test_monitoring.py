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
from prometheus_client.parser import text_string_to_metric_families

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


def exported_series() -> list:
    """Every series a scrape of the consumer's /metrics shows (its process collectors included)."""
    exporter = Exporter(lag=lambda: 0, tracked_users=lambda: 0, tracked_devices=lambda: 0, group="g")
    text = generate_latest(exporter.registry).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def exported_names() -> set[str]:
    return {s.name for s in exported_series()}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana/dashboards/loginpipe.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return exprs + [v["query"]["query"] for v in dashboard.get("templating", {}).get("list", [])]


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
    exprs = dashboard_exprs()
    used = {name for expr in exprs for name in re.findall(r"\b(?:loginpipe|process|python)_[a-z0-9_]+", expr)}
    assert used and used <= exported_names(), sorted(used - exported_names())
    assert {"loginpipe_records_consumed_total", "loginpipe_consumer_lag_records",
            "process_resident_memory_bytes"} <= used


def test_grafana_queries_use_labels_the_series_have() -> None:
    """``by``, ``on``, ``group_left`` and selectors name labels of the exported series, or the
    ``instance`` and ``job`` Prometheus adds to every scraped series."""
    exprs = " ".join(dashboard_exprs())
    grouped = re.findall(r"\b(?:by|on|group_left)\s*\(([^)]*)\)", exprs)
    used = {label.strip() for labels in grouped for label in labels.split(",") if label.strip()}
    used |= set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", exprs))
    exported = {label for s in exported_series() for label in s.labels}
    assert {"le", "group", "instance_id", "instance"} <= used
    assert used <= exported | {"instance", "job"}, sorted(used - exported)


def test_grafana_shows_the_end_to_end_p99_from_the_histogram() -> None:
    quantiles = [e for e in dashboard_exprs() if e.startswith("histogram_quantile(0.99")]
    assert any("loginpipe_end_to_end_latency_seconds_bucket" in e and "by (le)" in e for e in quantiles)


def test_no_exported_label_clashes_with_the_ones_prometheus_adds() -> None:
    """A series' own ``instance`` or ``job`` would be renamed ``exported_*`` (honor_labels off), or
    replace the target's (on): neither is what the dashboard's queries expect."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert not any(job.get("honor_labels") for job in config["scrape_configs"])
    labels = {label for s in exported_series() for label in s.labels}
    assert {"group", "instance_id"} <= labels and not labels & {"instance", "job"}


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
