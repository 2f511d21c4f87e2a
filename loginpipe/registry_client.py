"""A small client of the Confluent Schema Registry API over urllib: no dependency of its own.

Enough for the pipeline and its tests: register a schema under a subject, read one by id, set and
read a subject's compatibility level, and ask whether a schema would be accepted. Works with
Confluent's registry and with Apicurio's ccompat API (``loginpipe.local.registry``), whose URL
ends in ``/apis/ccompat/v7``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
UNAVAILABLE = (502, 503, 504)  # answers that mean "try again", like no answer at all
LEVELS = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
          "FULL", "FULL_TRANSITIVE")


class RegistryError(Exception):
    """The registry refused a request: ``status`` is the HTTP status (409: incompatible schema,
    404: no such subject, version or id, 422: invalid schema), ``message`` its own words."""

    def __init__(self, status: int, message: str, error_code: int | None = None) -> None:
        super().__init__(f"schema registry: HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.error_code = error_code


class RegistryUnavailable(RegistryError):
    """No answer at all (refused, reset, timed out): worth retrying, unlike a refusal."""

    def __init__(self, url: str, reason: object) -> None:
        super().__init__(0, f"no answer from {url}: {reason}")
        self.args = (f"schema registry: no answer from {url}: {reason}",)


class SchemaRegistryClient:
    """Requests to one registry; ``url`` is its API base (Apicurio: ``.../apis/ccompat/v7``)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def subjects(self) -> list[str]:
        return self._call("GET", "/subjects")

    def register(self, subject: str, schema: str, schema_type: str = "AVRO") -> int:
        """The id of ``schema`` (Avro JSON text) under ``subject``: a new version, or the existing
        one when the same schema is already there. RegistryError 409 when the subject's
        compatibility level refuses it."""
        return int(self._call("POST", f"/subjects/{_quote(subject)}/versions",
                              _schema_body(schema, schema_type))["id"])

    def schema_by_id(self, schema_id: int) -> str:
        """The schema text registered with ``schema_id``, as a reader of framed records needs it."""
        return self._call("GET", f"/schemas/ids/{int(schema_id)}")["schema"]

    def latest(self, subject: str) -> dict[str, Any]:
        """The subject's latest version: ``{"subject", "version", "id", "schema"}``."""
        return self._call("GET", f"/subjects/{_quote(subject)}/versions/latest")

    def versions(self, subject: str) -> list[int]:
        """The subject's version numbers, oldest first (RegistryError 404 when it has none)."""
        return sorted(int(v) for v in self._call("GET", f"/subjects/{_quote(subject)}/versions"))

    def version(self, subject: str, version: int) -> dict[str, Any]:
        """One version of the subject: ``{"subject", "version", "id", "schema"}``."""
        return self._call("GET", f"/subjects/{_quote(subject)}/versions/{int(version)}")

    def set_compatibility(self, subject: str, level: str) -> str:
        if level not in LEVELS:
            raise ValueError(f"compatibility level {level!r} is not one of {', '.join(LEVELS)}")
        answer = self._call("PUT", f"/config/{_quote(subject)}", {"compatibility": level})
        return answer["compatibility"]

    def compatibility(self, subject: str) -> str | None:
        """The subject's own level; None when it has none (the global level applies)."""
        try:
            answer = self._call("GET", f"/config/{_quote(subject)}")
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        # Confluent answers compatibilityLevel here (and compatibility to a PUT)
        return answer.get("compatibilityLevel") or answer.get("compatibility")

    def is_compatible(self, subject: str, schema: str, schema_type: str = "AVRO") -> bool:
        """Whether registering ``schema`` under ``subject`` would pass its compatibility level
        against the latest version (True when the subject has none yet)."""
        try:
            answer = self._call("POST", f"/compatibility/subjects/{_quote(subject)}/versions/latest",
                                _schema_body(schema, schema_type))
        except RegistryError as exc:
            if exc.status == 404:  # no versions yet: anything goes
                return True
            if exc.status == 409:  # Apicurio refuses rather than answering false
                return False
            raise
        return bool(answer["is_compatible"])

    def check_compatibility(self, subject: str, schema: str,
                            schema_type: str = "AVRO") -> tuple[bool, list[str]]:
        """Like ``is_compatible``, with the registry's reasons when it says no (empty when it gives
        none). Confluent lists them in ``messages``; Apicurio gives one ``reason`` and, on some
        paths, refuses with 409 and the reason as its message."""
        try:
            answer = self._call("POST", f"/compatibility/subjects/{_quote(subject)}/versions/latest"
                                "?verbose=true", _schema_body(schema, schema_type))
        except RegistryError as exc:
            if exc.status == 404 and exc.error_code in (40401, 40402):
                return True, []  # no such subject or no versions yet: anything goes
            # (a 404 without those codes is a wrong URL, not an empty subject)
            if exc.status == 409:
                return False, [exc.message]
            raise
        if answer.get("is_compatible"):
            return True, []
        reasons = answer.get("messages") or answer.get("reason") or []
        return False, [str(r) for r in ([reasons] if isinstance(reasons, str) else reasons)]

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        """Delete every version. Soft by default (Confluent's rule: a permanent delete must follow a
        soft one), so ``permanent`` does both."""
        versions = self._call("DELETE", f"/subjects/{_quote(subject)}")
        if permanent:
            self._call("DELETE", f"/subjects/{_quote(subject)}?permanent=true")
        return versions

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code in UNAVAILABLE:  # a proxy or the registry itself says: not now
                raise RegistryUnavailable(self.url, f"HTTP {exc.code} {exc.reason}") from None
            raise _refusal(exc) from None
        except (OSError, ValueError) as exc:  # URLError, refused, reset, timeout; a garbled answer
            raise RegistryUnavailable(self.url, getattr(exc, "reason", exc)) from exc


def _schema_body(schema: str, schema_type: str) -> dict[str, Any]:
    # Confluent's API leaves schemaType out for Avro, its default; some registries reject it there.
    return {"schema": schema} if schema_type == "AVRO" else {"schema": schema, "schemaType": schema_type}


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


def _refusal(exc: urllib.error.HTTPError) -> RegistryError:
    """The registry's own error (``{"error_code", "message"}``) when its answer carries one."""
    try:
        answer = json.loads(exc.read() or b"{}")
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    message = answer.get("message") or exc.reason or "no message"
    return RegistryError(exc.code, str(message), answer.get("error_code"))
