"""The package's shape: the ``loginpipe`` command and its subcommands, and pyproject.toml, the
requirements files and the lock agreeing with each other and with the code. The wheel itself
is built and installed by tests/integration/test_install.py."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

import loginpipe
from loginpipe import cli, commands
from loginpipe.commands import SUBCOMMANDS, Subcommand
from loginpipe.local.broker import default_home

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REQUIREMENT_FILES = {None: "requirements.txt", "dashboard": "requirements-dashboard.txt",
                     "dev": "requirements-dev.txt", "avro": "requirements-avro.txt",
                     "confluent": "requirements-confluent.txt"}  # extra -> its file
LOCK = ROOT / "requirements.lock"
# Modules with a main(argv) that are not commands of their own: the dispatcher, and the tool that
# renders the README's field tables from the schemas (for developers, run with python -m).
# quix_app runs under the benchmark's own Quix Streams interpreter, not as a loginpipe command
# loginpipe.local.registry is reached through loginpipe.registry (`loginpipe registry start`)
NOT_COMMANDS = {"loginpipe.commands", "loginpipe.core.contracts", "loginpipe.benchmark.quix_app",
                "loginpipe.local.registry"}


@pytest.fixture(autouse=True)
def parsers_keep_their_names() -> Iterator[None]:
    yield
    cli.invoked_as(None)  # run_subcommand names every parser built afterwards


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(path: Path) -> dict[str, str]:
    """name -> pinned version, from a requirements file of ``name==version`` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, equals, version = line.partition("==")
            assert equals and version, f"{path.name}: {line!r} is not pinned with =="
            pins[normalized(name)] = version.strip()
    return pins


def locked() -> dict[str, set[str]]:
    """name -> the versions the lock pins (one per environment marker)."""
    pins: dict[str, set[str]] = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if match:
            pins.setdefault(normalized(match[1]), set()).add(match[2])
    return pins


def run_loginpipe(*args: str) -> subprocess.CompletedProcess:
    """``python -m loginpipe ARGS`` from the source tree."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "loginpipe", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- the command

def command_modules() -> set[str]:
    """Every module of the package that has a ``main(argv)``, found by reading the sources."""
    found = set()
    for path in (ROOT / "loginpipe").rglob("*.py"):
        if re.search(r"^def main\(argv", path.read_text(), re.MULTILINE):
            found.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found - NOT_COMMANDS


def test_every_command_module_is_a_subcommand() -> None:
    listed = {command.module for command in SUBCOMMANDS.values()}
    assert command_modules() - listed == set(), "a command module has no `loginpipe` subcommand"


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_names_a_module_with_a_main(name: str) -> None:
    module = SUBCOMMANDS[name].module
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"loginpipe {name}: no module {module}"
    assert re.search(r"^def main\(argv", Path(spec.origin).read_text(), re.MULTILINE), (
        f"{module} has no main(argv)")


def test_version_from_the_source_tree() -> None:
    result = run_loginpipe("--version")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"loginpipe {loginpipe.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", loginpipe.__version__)


def test_a_subcommands_help_is_its_modules_under_the_commands_name() -> None:
    result = run_loginpipe("consume", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: loginpipe consume ")
    assert "--bootstrap-servers" in result.stdout and "--processing-guarantee" in result.stdout


def test_a_subcommands_usage_error_names_the_subcommand(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        commands.main(["topics", "--no-such-flag"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("loginpipe topics: error: unrecognized arguments: --no-such-flag "
                                       "(see loginpipe topics --help)\n")


def test_help_lists_every_subcommand_on_one_line(capsys: pytest.CaptureFixture) -> None:
    assert commands.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in SUBCOMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(command.summary)}$", out, re.MULTILINE), name


def test_no_subcommand_prints_the_help_and_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert commands.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: loginpipe COMMAND")


@pytest.mark.parametrize(("argv", "message"), [
    (["consumer"], "unknown command 'consumer'; did you mean 'consume'?"),
    (["frobnicate", "--help"], "unknown command 'frobnicate'"),
    (["--bogus"], "unknown option '--bogus'"),
])
def test_an_unknown_subcommand_is_one_line_and_exit_2(argv: list[str], message: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    assert commands.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"loginpipe: error: {message} (see loginpipe --help)\n"


def test_a_subcommand_missing_from_this_version_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(SUBCOMMANDS, "later", Subcommand("loginpipe.no_such_module", "not yet"))
    assert commands.main(["later"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"loginpipe: error: 'loginpipe later' is not part of this version ({loginpipe.__version__})"]


def test_a_missing_dependency_is_not_mistaken_for_a_missing_subcommand(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "needs_more.py").write_text("import no_such_dependency_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(SUBCOMMANDS, "needy", Subcommand("needs_more", "imports what is not installed"))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_anywhere"):
        commands.main(["needy"])


def test_the_top_level_scripts_still_run() -> None:
    for script in ("create_kafka_consumer.py", "create_kafka_topic.py"):
        result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.startswith("usage: "), (script, result.stderr)


# ---------------------------------------------------------------- pyproject.toml and the files

def test_the_console_script_and_the_version_come_from_the_package() -> None:
    assert PYPROJECT["project"]["scripts"] == {"loginpipe": "loginpipe.commands:main"}
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "loginpipe.__version__"}


def test_the_dependencies_are_the_requirements_files() -> None:
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]
    assert {"dependencies", "optional-dependencies"} <= set(PYPROJECT["project"]["dynamic"])
    assert "dependencies" not in PYPROJECT["project"], "listed twice: in pyproject.toml and requirements.txt"
    assert dynamic["dependencies"] == {"file": [REQUIREMENT_FILES[None]]}
    extras = {extra: spec["file"] for extra, spec in dynamic["optional-dependencies"].items()}
    assert extras == {extra: [file] for extra, file in REQUIREMENT_FILES.items() if extra}


@pytest.mark.parametrize("file", REQUIREMENT_FILES.values())
def test_requirement_files_hold_only_pins(file: str) -> None:
    """setuptools reads them as the package's metadata: no -r, -c or other option lines."""
    assert requirements(ROOT / file), f"{file} is empty"
    options = [line for line in (ROOT / file).read_text().splitlines() if line.lstrip().startswith("-")]
    assert options == []


def test_the_runtime_set_holds_no_test_or_browser_tooling() -> None:
    runtime = set(requirements(ROOT / REQUIREMENT_FILES[None]))
    assert runtime.isdisjoint({"pytest", "playwright", "hypothesis", "ruff", "streamlit", "matplotlib"})


def test_the_installed_metadata_is_current() -> None:
    """The editable install (make) says what the files say; stale after a change until reinstalled."""
    try:
        installed = metadata.version("loginpipe")
    except metadata.PackageNotFoundError:
        pytest.skip("loginpipe is not installed in this environment (make installs it)")
    assert installed == loginpipe.__version__
    runtime = {normalized(req.split("==")[0]): req.split("==")[1]
               for req in metadata.requires("loginpipe") or [] if ";" not in req}
    assert runtime == requirements(ROOT / REQUIREMENT_FILES[None])


def test_only_the_package_is_packaged() -> None:
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["loginpipe", "loginpipe.*"]


def test_every_data_file_in_the_package_is_package_data() -> None:
    """A file the code opens next to its module (a schema, the pom) must be in the wheel."""
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    missing = []
    for path in (ROOT / "loginpipe").rglob("*"):
        if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        package = ".".join(path.parent.relative_to(ROOT).parts)
        if not any(fnmatch.fnmatch(path.name, pattern) for pattern in package_data.get(package, [])):
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []
    assert package_data["loginpipe.core.schemas"] == ["*.json", "*.avsc"]


# ---------------------------------------------------------------- the lock

@pytest.mark.parametrize("file", REQUIREMENT_FILES.values())
def test_the_lock_pins_what_the_requirements_pin(file: str) -> None:
    lock = locked()
    drift = {name: (version, lock.get(name)) for name, version in requirements(ROOT / file).items()
             if lock.get(name) != {version}}
    assert drift == {}, "requirements.lock is out of date: make lock"


def test_the_lock_says_how_it_was_made() -> None:
    header = LOCK.read_text().splitlines()[:2]
    assert header[0] == "# This file was autogenerated by uv via the following command:"
    command = header[1].lstrip("# ").split()
    assert command[:3] == ["uv", "pip", "compile"]
    assert [word for word in command if word.startswith("requirements")] == [
        *REQUIREMENT_FILES.values(), LOCK.name]
    assert re.search(r"^\s+\$\(VENV\)/bin/uv pip compile ", (ROOT / "Makefile").read_text(), re.MULTILINE)


def test_the_lock_pins_everything_it_names() -> None:
    unpinned = [line for line in LOCK.read_text().splitlines()
                if line and not line.startswith((" ", "#")) and "==" not in line]
    assert unpinned == []
    assert len(locked()) > sum(len(requirements(ROOT / file)) for file in REQUIREMENT_FILES.values()), (
        "the lock should pin the dependencies' own dependencies too")


# ---------------------------------------------------------------- the local broker's home

def test_a_checkout_keeps_the_broker_in_its_kafka_folder(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    assert default_home(tmp_path) == tmp_path / ".kafka"
    assert default_home() == ROOT / ".kafka"


def test_an_installed_package_keeps_the_broker_in_the_users_cache(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    site_packages = tmp_path / "site-packages"
    site_packages.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_home(site_packages) == tmp_path / "cache" / "loginpipe" / "kafka"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_home(site_packages) == tmp_path / "home" / ".cache" / "loginpipe" / "kafka"
