"""A local Confluent-compatible schema registry on 127.0.0.1, built from Maven Central.

For machines without Docker, like ``broker.py``. Confluent's own registry is not on Maven Central,
so this is Apicurio Registry, which serves the Confluent API under ``/apis/ccompat/v7``.
``fetch`` builds it once with Maven (about 2 minutes and 200 MB of downloads cold) from the wrapper in
``maven/registry/``; the build, logs, pid file and schemas (an H2 database in ``data/``) live under
one ignored folder. Schemas and their ids survive a stop and start: framed records name their
writer's schema by id, so ids that restarted at 1 would decode old records with the wrong schema.
``reset`` stops the registry and deletes its schemas.

    python -m loginpipe.local.registry fetch|start|stop|status|logs|reset

Clients use ``http://127.0.0.1:18081/apis/ccompat/v7`` (``registry_url``); every subject is held to
BACKWARD compatibility unless its own config says otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loginpipe.cli import EnvArgumentParser, port_number, positive_int, run_cli
from loginpipe.errors import UserError
from loginpipe.local.background import Background, log_tail, read_command_line
from loginpipe.local.broker import PROJECT_ROOT, port_is_free
from loginpipe.waiting import wait_until

WRAPPER_DIR = Path(__file__).resolve().parent / "maven" / "registry"
POM = WRAPPER_DIR / "pom.xml"
SETTINGS = WRAPPER_DIR / "settings.xml"
API_PATH = "/apis/ccompat/v7"
DEFAULT_PORT = 18081
DEFAULT_HEAP_MB = 256
COMMANDS = ("start", "stop", "status", "logs", "fetch", "reset")
START_TIMEOUT_S = 90.0
PROGRESS_INTERVAL_S = 15.0
# Global compatibility for subjects without their own config. Apicurio enforces it but, unlike
# Confluent, still reports NONE from GET /config: clients set it per subject as well.
GLOBAL_COMPATIBILITY = "BACKWARD"
# The app jar's own build settings, changed so that Quarkus builds a runnable folder (fast-jar)
# rather than one fat jar, and indexes the app jar, which ships no Jandex index of its own.
LEGACY_PACKAGE = "%prod.quarkus.package.type=legacy-jar"
FAST_PACKAGE = "%prod.quarkus.package.type=fast-jar"
INDEX_APP_JAR = ("quarkus.index-dependency.registryapp.group-id=io.apicurio\n"
                 "quarkus.index-dependency.registryapp.artifact-id=apicurio-registry-app\n")


def default_home(root: Path = PROJECT_ROOT) -> Path:
    """The registry's folder: ``.registry/`` in a source checkout; the user's cache folder for an
    installed package, whose own folder may be read-only and is replaced on upgrade."""
    if (root / "pyproject.toml").is_file():
        return root / ".registry"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "loginpipe" / "registry"


DEFAULT_HOME = default_home()


def apicurio_version() -> str:
    """The Apicurio Registry version pinned in the wrapper pom."""
    match = re.search(r"<apicurio.version>([^<]+)</apicurio.version>", POM.read_text())
    return match.group(1) if match else "unknown"


def registry_url(port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> str:
    """The base URL a Confluent-API client is given."""
    return f"http://{host}:{port}{API_PATH}"


def api_answers(url: str, timeout_s: float = 2.0) -> bool:
    """True when a Confluent-compatible registry at ``url`` lists its subjects."""
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=timeout_s) as response:
            return response.status == 200 and response.read(1) == b"["
    except (OSError, ValueError):  # URLError, refused, reset and timeouts are all OSErrors
        return False


def app_properties(original: str) -> str:
    """The wrapper's application.properties from the app jar's own (see LEGACY_PACKAGE)."""
    lines = [FAST_PACKAGE if line.strip() == LEGACY_PACKAGE else line for line in original.splitlines()]
    if FAST_PACKAGE not in lines:
        lines.append(FAST_PACKAGE)
    return "\n".join(lines) + "\n" + INDEX_APP_JAR


def require_tool(name: str, why: str) -> None:
    if shutil.which(name) is None:
        raise UserError(f"{name!r} is not installed (or not on PATH): it is needed {why}")


# ---------------------------------------------------------------- building

def run_maven(args: list[str], cwd: Path, log: Path, step: str,
              progress: Callable[[str], None] | None) -> None:
    """Run Maven in ``cwd`` with output appended to ``log``, reporting progress every
    PROGRESS_INTERVAL_S; a UserError with the log's last lines when it fails."""
    cmd = ["mvn", "-B", "-Dstyle.color=never", "-s", str(cwd / "settings.xml"), *args]
    started = time.monotonic()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while True:
            try:
                proc.wait(timeout=PROGRESS_INTERVAL_S)
                break
            except subprocess.TimeoutExpired:
                if progress:
                    downloads = _downloads(log)
                    progress(f"  {step}: {time.monotonic() - started:.0f}s"
                             + (f", {downloads} files downloaded so far" if downloads else ""))
    if proc.returncode != 0:
        raise UserError(f"the registry build failed ({step}, mvn exit {proc.returncode}); "
                        f"last lines of {log}:\n{log_tail(log, 15)}")


def _downloads(log: Path) -> int:
    try:
        return log.read_text(errors="replace").count("Downloaded from")
    except OSError:
        return 0


def ensure_built(home: Path, quiet: bool = False) -> Path:
    """Build the registry into ``home/app`` unless a complete build of this version is there;
    return the runnable jar."""
    version = apicurio_version()
    app = home / "app"
    jar = app / "quarkus-run.jar"
    marker = app / f".complete-{version}"
    if marker.exists() and jar.exists():
        return jar
    require_tool("mvn", "once, to build the schema registry from Maven Central")
    require_tool("java", "to build and run the schema registry (Java 17)")
    say = None if quiet else _print
    build = home / "build"
    if build.exists():
        shutil.rmtree(build)  # a half-done earlier build must not mix with this one
    (build / "src" / "main" / "resources").mkdir(parents=True)
    shutil.copy(POM, build / "pom.xml")
    shutil.copy(SETTINGS, build / "settings.xml")
    log = home / "logs" / "build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    started = time.monotonic()
    if say:
        say(f"building Apicurio Registry {version} from Maven Central into {app} "
            f"(about 2 minutes the first time; log: {log}) ...")
    artifact = f"io.apicurio:apicurio-registry-app:{version}:jar"
    run_maven(["dependency:copy", f"-Dartifact={artifact}", "-DoutputDirectory=app-jar"],
              build, log, "fetching the app jar", say)
    app_jar = build / "app-jar" / f"apicurio-registry-app-{version}.jar"
    with zipfile.ZipFile(app_jar) as archive:
        original = archive.read("application.properties").decode()
    (build / "src" / "main" / "resources" / "application.properties").write_text(app_properties(original))
    if say:
        say(f"  app jar fetched in {time.monotonic() - started:.0f}s; building with Quarkus ...")
    run_maven(["package", "-DskipTests"], build, log, "building", say)
    built = build / "target" / "quarkus-app"
    if not (built / "quarkus-run.jar").is_file():
        raise UserError(f"the registry build finished but made no quarkus-run.jar; last lines of {log}:\n"
                        f"{log_tail(log, 15)}")
    if app.exists():
        shutil.rmtree(app)
    shutil.move(built, app)
    shutil.rmtree(build)
    marker.touch()
    if say:
        say(f"built in {time.monotonic() - started:.0f}s: {jar}")
    return jar


def _print(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------- running

@dataclass
class LocalRegistry:
    """One registry process whose files (build, logs, pid file, schemas) all live under ``home``."""

    home: Path = DEFAULT_HOME
    port: int = DEFAULT_PORT
    heap_mb: int = DEFAULT_HEAP_MB

    @property
    def url(self) -> str:
        return registry_url(self.port)

    @property
    def jar(self) -> Path:
        return self.home / "app" / "quarkus-run.jar"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "registry.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "registry.pid"

    @property
    def data_dir(self) -> Path:
        """Where the registry keeps its schemas (H2 database files) between runs."""
        return self.home / "data"

    @property
    def process(self) -> Background:
        # A recycled pid belongs to some other program: only ours names our jar.
        return Background(self.pid_file, self.log_file, str(self.jar))

    def pid(self) -> int | None:
        """The registry's pid when our registry process is alive, else None."""
        return self.process.pid()

    def running_port(self) -> int | None:
        """The port our running registry was started on (from its command line)."""
        pid = self.pid()
        command_line = None if pid is None else read_command_line(pid)
        if command_line is None:
            return None
        match = re.search(rb"-Dquarkus\.http\.port=(\d+)", command_line)
        return int(match.group(1)) if match else None

    def start(self, timeout_s: float = START_TIMEOUT_S, quiet: bool = False) -> str:
        """Start the registry (idempotent; built first if need be) and return once its API answers."""
        running = self.running_port()
        if running is not None:
            if running != self.port:
                raise UserError(f"the registry in {self.home} already runs on port {running} "
                                f"(pid {self.pid()}): stop it first (the 'stop' command)")
            return f"already running at {self.url} (pid {self.pid()})"
        if not port_is_free(self.port):
            raise UserError(f"port {self.port} is already in use by another program; stop it or choose "
                            f"another port (--port or $SCHEMA_REGISTRY_PORT)")
        require_tool("java", "to run the schema registry (Java 17)")
        ensure_built(self.home, quiet=quiet)
        started = time.monotonic()
        proc = self._launch()
        wait_until(lambda: proc.poll() is not None or api_answers(self.url, 1.0), timeout_s, interval_s=0.2)
        if proc.poll() is not None:
            self.pid_file.unlink(missing_ok=True)
            raise UserError(f"the registry exited with code {proc.returncode}; log tail:\n{self.tail(20)}")
        if not api_answers(self.url, 1.0):
            self.stop()
            raise UserError(f"the registry did not answer at {self.url} within {timeout_s:.0f}s; "
                            f"log tail:\n{self.tail(20)}")
        return (f"started Apicurio Registry {apicurio_version()} at {self.url} (pid {proc.pid}) "
                f"in {time.monotonic() - started:.1f}s")

    def start_or_reuse(self) -> str:
        """Start this registry, or use one that already answers on its port (compose, another checkout)."""
        if self.pid() is None and api_answers(self.url):
            return f"a schema registry already answers at {self.url}: using it"
        return self.start()

    def _launch(self) -> subprocess.Popen:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.process.launch(self.command(), cwd=self.home)

    def command(self) -> list[str]:
        # C1 only and the serial collector: ready in about 6 s instead of 13, in about 200 MB.
        return [
            "java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", f"-Xmx{self.heap_mb}m",
            f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
            f"-Dregistry.rules.global.compatibility={GLOBAL_COMPATIBILITY}",
            # On disk rather than Apicurio's default in-memory H2: schemas and ids outlive a restart.
            # DB_CLOSE_ON_EXIT=FALSE leaves closing to the app, which flushes on SIGTERM. H2's
            # default lock wait (1 s) failed two first registrations made at once (generator and
            # consumer of `make run --avro`) with a table lock timeout.
            f"-Dquarkus.datasource.jdbc.url=jdbc:h2:file:{self.data_dir / 'registry'};DB_CLOSE_ON_EXIT=FALSE;"
            "LOCK_TIMEOUT=10000",
            "-jar", str(self.jar),
        ]

    def stop(self, timeout_s: float = 20.0) -> str:
        """Stop cleanly with SIGTERM; SIGKILL after ``timeout_s``. Its schemas stay in ``data_dir``."""
        return self.process.stop(timeout_s)

    def reset(self) -> str:
        """Stop the registry if it runs and delete every schema it stored (ids start at 1 again)."""
        stopped = self.stop()
        prefix = "" if stopped == "not running" else f"{stopped}; "
        if not self.data_dir.exists():
            return f"{prefix}no stored schemas to delete ({self.data_dir} does not exist)"
        shutil.rmtree(self.data_dir)
        return f"{prefix}deleted every stored schema ({self.data_dir})"

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            return "not running"
        url = registry_url(self.running_port() or self.port)
        return f"running at {url} (pid {pid}), {'answering' if api_answers(url) else 'not answering'}"

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log_file, lines)


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(prog="python -m loginpipe.local.registry", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=COMMANDS)
    parser.add_env_argument("--home", env="SCHEMA_REGISTRY_HOME", default=str(DEFAULT_HOME),
                            help="folder for the build, logs, pid file and stored schemas")
    parser.add_env_argument("--port", env="SCHEMA_REGISTRY_PORT", type=port_number, default=DEFAULT_PORT,
                            help="HTTP port on 127.0.0.1")
    parser.add_env_argument("--heap-mb", env="SCHEMA_REGISTRY_HEAP_MB", type=positive_int,
                            default=DEFAULT_HEAP_MB, help="JVM heap cap in MiB")
    parser.add_argument("--lines", type=positive_int, default=50, help="with 'logs': how many lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    registry = LocalRegistry(Path(args.home), args.port, args.heap_mb)
    if args.command == "start":
        print(registry.start())
    elif args.command == "stop":
        print(registry.stop())
    elif args.command == "status":
        text = registry.status()
        print(text)
        return 0 if text.startswith("running") else 3
    elif args.command == "logs":
        print(registry.tail(args.lines))
    elif args.command == "reset":
        print(registry.reset())
    elif args.command == "fetch":
        print(f"Apicurio Registry {apicurio_version()}: {ensure_built(registry.home)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
