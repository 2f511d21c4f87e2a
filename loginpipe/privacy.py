"""Privacy mode: what leaves the process carries no raw IP address and no raw device id.

GDPR and CCPA treat both as personal data. In privacy mode the output carries a masked IP
(``addresses.mask_ip``: IPv4 /24, IPv6 /64) and a pseudonymous device id: a keyed HMAC-SHA256
of it, with a secret from the environment. The same device always maps to the same token, so
counting shared devices downstream still works, and without the secret nobody can find a
device id by hashing guesses. The aggregations inside the process still see the raw values.
"""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass, field

import orjson

from loginpipe.addresses import is_ip, mask_ip
from loginpipe.errors import UserError

SECRET_ENV = "PRIVACY_SECRET"
MIN_SECRET_BYTES = 16
TOKEN_HEX_CHARS = 32  # 128 bits of the HMAC: collisions are negligible, records stay short
REDACTED = "<redacted>"
# A quoted value inside a rejection's detail, as repr() writes it.
_QUOTED = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""")


@dataclass(frozen=True)
class Privacy:
    secret: bytes = field(repr=False)  # never in a printed config, route or test failure

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Privacy:
        """The secret from $PRIVACY_SECRET; a UserError when it is missing or short."""
        secret = (os.environ if environ is None else environ).get(SECRET_ENV, "")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            state = "is not set" if not secret else f"has fewer than {MIN_SECRET_BYTES} bytes"
            raise UserError(f"--privacy needs a secret key: ${SECRET_ENV} {state} (e.g. export "
                            f"{SECRET_ENV}=$(python3 -c 'import secrets; print(secrets.token_hex(32))'))")
        return cls(secret.encode())

    def device_token(self, device_id: str) -> str:
        """The pseudonymous device id: the same device, the same token; irreversible without the key."""
        return hmac.digest(self.secret, device_id.encode(), "sha256").hex()[:TOKEN_HEX_CHARS]

    @staticmethod
    def masked_ip(ip: str) -> str:
        return mask_ip(ip)

    @staticmethod
    def redact_text(text: str) -> str:
        """A rejection's detail with every quoted input value replaced."""
        return _QUOTED.sub(repr(REDACTED), text)

    def redact_value(self, value: bytes | None) -> bytes | None:
        """A dead letter's value with its ip and device_id masked, when it is a JSON object;
        None when it is not one (its bytes could hold anything, so none of them are kept)."""
        if value is None:
            return None
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if type(data) is not dict:
            return None
        if "ip" in data:
            ip = data["ip"]
            data["ip"] = mask_ip(ip) if type(ip) is str and is_ip(ip) else REDACTED
        if "device_id" in data:
            device_id = data["device_id"]
            data["device_id"] = self.device_token(device_id) if type(device_id) is str else REDACTED
        try:
            return orjson.dumps(data)
        except (TypeError, orjson.JSONEncodeError):  # e.g. nested deeper than orjson writes (254)
            return None
