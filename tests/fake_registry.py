"""Confluent-API schema registries in a thread, for unit tests without Java.

``ServedFake`` is the HTTP plumbing (a server in a thread that reads each request's JSON body, asks
``answer`` for a status and a JSON body, and records the request in ``seen``); two fakes answer on it:
``FakeRegistry`` keeps state for the calls the project makes (register, schema by id, per-subject
config) and has a switch that makes it answer 503 as a registry that is down would (the client treats
that like no answer); ``ScriptedRegistry`` answers what a test scripted for (method, path)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import unquote

API = "/apis/ccompat/v7"


class Request(NamedTuple):
    method: str
    path: str  # as normalized by the fake
    content_type: str | None
    body: Any  # the parsed JSON, None when the request had no body


def _unchanged(path: str) -> str:
    return path


class ServedFake:
    """Serves ``answer`` on 127.0.0.1 (a free port) while used as a context manager; ``url`` is the
    API base. ``normalize`` rewrites each path before it is recorded and answered."""

    def __init__(self, normalize: Callable[[str], str] = _unchanged) -> None:
        self.normalize = normalize
        self.seen: list[Request] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}{API}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ServedFake:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, method: str, path: str, body: Any, headers: Message) -> tuple[int, Any]:
        raise NotImplementedError

    def _serve(self, method: str, path: str, raw: bytes, headers: Message) -> tuple[int, bytes]:
        body = json.loads(raw) if raw else None
        path = self.normalize(path)
        self.seen.append(Request(method, path, headers.get("Content-Type"), body))
        status, answer = self.answer(method, path, body, headers)
        return status, json.dumps(answer).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _respond(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, data = fake._serve(self.command, self.path, raw, self.headers)
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _respond

            def log_message(self, *args: object) -> None:  # quiet: pytest shows stderr of failures
                pass

        return Handler


class FakeRegistry(ServedFake):
    """A registry with state: schemas by id, subjects' ids, per-subject levels; ``down`` makes every
    answer a 503; ``lookups`` lists the ids asked for, in order."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.levels: dict[str, str] = {}
        self.down = False
        self.lookups: list[int] = []
        self._lock = threading.Lock()
        super().__init__()

    def __enter__(self) -> FakeRegistry:
        super().__enter__()
        return self

    def register(self, subject: str, schema: str) -> int:
        with self._lock:
            same = [i for i, text in self.schemas.items() if json.loads(text) == json.loads(schema)]
            schema_id = same[0] if same else len(self.schemas) + 1
            self.schemas[schema_id] = schema
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id

    def answer(self, method: str, path: str, body: Any, headers: Message) -> tuple[int, Any]:
        if self.down:
            return 503, {"error_code": 50301, "message": "down for the test"}
        parts = [unquote(p) for p in path.split(f"{API}/", 1)[-1].split("/")]
        if parts[:1] == ["subjects"] and len(parts) == 3 and method == "POST":
            return 200, {"id": self.register(parts[1], body["schema"])}
        if parts[:2] == ["schemas", "ids"] and method == "GET":
            self.lookups.append(int(parts[2]))
            text = self.schemas.get(int(parts[2]))
            return (200, {"schema": text}) if text else (404, {"error_code": 40403, "message": "not found"})
        if parts[:1] == ["config"] and method == "GET":
            level = self.levels.get(parts[1])
            return (200, {"compatibilityLevel": level}) if level else (404, {"error_code": 40401,
                                                                             "message": "no level"})
        if parts[:1] == ["config"] and method == "PUT":
            self.levels[parts[1]] = body["compatibility"]
            return 200, {"compatibility": body["compatibility"]}
        return 404, {"error_code": 404, "message": f"the fake has no {method} {path}"}


class ScriptedRegistry(ServedFake):
    """Answers ``answers[(method, path)]`` ((status, body), keyed by the normalized path), else
    404 with error code 40401 (what a registry says of a subject it does not have)."""

    def __init__(self, normalize: Callable[[str], str] = _unchanged) -> None:
        self.answers: dict[tuple[str, str], tuple[int, Any]] = {}
        super().__init__(normalize)

    def __enter__(self) -> ScriptedRegistry:
        super().__enter__()
        return self

    def answer(self, method: str, path: str, body: Any, headers: Message) -> tuple[int, Any]:
        return self.answers.get((method, path), (404, {"error_code": 40401, "message": "not found"}))
