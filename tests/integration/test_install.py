"""`pip install .` as a new user would: the wheel built from this checkout, installed with the lock
into a fresh venv, gives a working `loginpipe` command without test or browser tooling; the
dashboard extra adds Streamlit. Needs PyPI (or pip's cache); no broker. About 30-60 s."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import loginpipe

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
# Local state and build output: not part of a fresh clone, so not of the copy the wheel is built from.
NOT_IN_A_CLONE = shutil.ignore_patterns(".git", ".venv", ".kafka", "__pycache__", "*.egg-info", "build",
                                        "dist", ".hypothesis", ".pytest_cache", ".ruff_cache",
                                        "bench-results", "test-artifacts", "artifacts")


def run(*command: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """A venv's command, run in the venv (not this checkout) without PYTHONPATH, so that it uses the
    venv's own copy of loginpipe."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return subprocess.run([str(part) for part in command], cwd=Path(command[0]).parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout (building in place leaves build/ behind),
    monitoring/, tests/ and scripts/ included, as in a clone."""
    source = tmp_path_factory.mktemp("source") / "loginpipe"
    shutil.copytree(ROOT, source, ignore=NOT_IN_A_CLONE)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out,
                            source], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = out.glob("loginpipe-*.whl")
    return wheel


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with `pip install --constraint requirements.lock <the wheel>`: its bin folder."""
    home = tmp_path_factory.mktemp("venv")
    created = subprocess.run([sys.executable, "-m", "venv", home], capture_output=True, text=True,
                             timeout=120)
    assert created.returncode == 0, created.stderr
    installed = run(home / "bin" / "python", "-m", "pip", "install", "--quiet", "--constraint", LOCK, wheel)
    assert installed.returncode == 0, installed.stderr
    return home / "bin"


def test_the_wheel_holds_the_package_and_its_data_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"loginpipe", f"loginpipe-{loginpipe.__version__}.dist-info"}, tops
    schemas = {path.name for path in (ROOT / "loginpipe" / "core" / "schemas").glob("*.json")}
    assert schemas and {f"loginpipe/core/schemas/{name}" for name in schemas} <= set(names)
    assert "loginpipe/local/maven/pom.xml" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_the_command_works_from_the_installed_package(venv: Path) -> None:
    version = run(venv / "loginpipe", "--version")
    assert (version.returncode, version.stdout) == (0, f"loginpipe {loginpipe.__version__}\n"), version.stderr
    for subcommand in ("consume", "topics"):
        result = run(venv / "loginpipe", subcommand, "--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: loginpipe {subcommand} ")
    module = run(venv / "python", "-m", "loginpipe", "--version")
    assert module.stdout == version.stdout


def test_the_installed_package_finds_its_files_and_keeps_state_outside(venv: Path) -> None:
    probe = run(venv / "python", "-c", "\n".join([
        "import json, loginpipe",
        "from loginpipe.core.contracts import INPUT_SCHEMA, OUTPUT_SCHEMA, load",
        "from loginpipe.local.broker import DEFAULT_HOME, kafka_version",
        "schemas = [load(INPUT_SCHEMA)['$id'], load(OUTPUT_SCHEMA)['$id']]",
        "print(json.dumps({'package': loginpipe.__file__, 'home': str(DEFAULT_HOME),",
        "                  'kafka': kafka_version(), 'schemas': schemas}))",
    ]))
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert "site-packages" in found["package"] and not found["package"].startswith(str(ROOT))
    assert re.fullmatch(r"\d+\.\d+\.\d+", found["kafka"]), "pom.xml is not in the installed package"
    assert all(found["schemas"])
    assert "site-packages" not in found["home"] and found["home"].endswith("loginpipe/kafka")


# Modules of an extra (the Streamlit page: dashboard; confluent; avro) and the benchmark's Quix app,
# which runs under its own venv's interpreter.
EXTRA_MODULES = ("loginpipe.dashboard.app", "loginpipe.kafka.confluent", "loginpipe.core.avro",
                 "loginpipe.benchmark.quix_app")


def test_the_runtime_set_imports_every_module(venv: Path) -> None:
    """requirements.txt is complete: every module imports without the extras, but for the modules
    of an extra and the entry points (importing them runs them)."""
    probe = run(venv / "python", "-c", "\n".join([
        "import importlib, pkgutil, loginpipe",
        "for module in pkgutil.walk_packages(loginpipe.__path__, 'loginpipe.'):",
        f"    if module.name not in {EXTRA_MODULES!r} and not module.name.endswith('.__main__'):",
        "        importlib.import_module(module.name)",
        "        print(module.name)",
    ]))
    assert probe.returncode == 0, probe.stderr
    imported = set(probe.stdout.split())
    assert {"loginpipe.runtime.app", "loginpipe.commands", "loginpipe.local.stack",
            "loginpipe.kafka.backends", "loginpipe.local.registry"} <= imported


def test_no_test_or_browser_tooling_is_installed(venv: Path) -> None:
    shown = run(venv / "python", "-m", "pip", "show", "playwright", "pytest")
    assert shown.returncode == 1 and shown.stdout == ""
    assert "not found: playwright, pytest" in shown.stderr.replace("\n", " ")
    listed = run(venv / "python", "-m", "pip", "list", "--format", "json")
    names = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert {"kafka-python", "rich"} <= names and not names & {"streamlit", "hypothesis", "matplotlib"}


def test_the_dashboard_extra_adds_streamlit(venv: Path, wheel: Path, tmp_path: Path) -> None:
    """Resolved with the lock, not installed: the resolution is what the extra decides."""
    report = tmp_path / "report.json"
    resolved = run(venv / "python", "-m", "pip", "install", "--quiet", "--dry-run", "--report", report,
                   "--constraint", LOCK, f"{wheel}[dashboard]")
    assert resolved.returncode == 0, resolved.stderr
    added = {item["metadata"]["name"].lower(): item["metadata"]["version"]
             for item in json.loads(report.read_text())["install"]}
    locked_streamlit = re.search(r"^streamlit==(\S+)", LOCK.read_text(), re.MULTILINE)[1]
    assert added.get("streamlit") == locked_streamlit
    assert "pytest" not in added and "playwright" not in added
