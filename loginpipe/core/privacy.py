"""Privacy mode: what leaves the process carries no raw IP address and no raw device id.

GDPR and CCPA treat both as personal data. In privacy mode the output carries a masked IP
(``addresses.mask_ip``: IPv4 /24, IPv6 /64) and a pseudonymous device id: a keyed HMAC-SHA256
of it, with a secret the shell passes in (``config.privacy_from_environment`` reads it from
$PRIVACY_SECRET; nothing here reads the environment). The same device always maps to the same
token, so counting shared devices downstream still works, and without the secret nobody can find
a device id by hashing guesses. The aggregations inside the process still see the raw values.

A dead letter can be any bytes in any shape, so no search for IPs in it can be trusted. Its key
and value are sealed whole instead, in an envelope (AES-256-GCM, key derived from the secret by
HKDF-SHA256) that whoever holds the secret opens with ``python -m loginpipe.dlq decrypt``:

    magic "LPDL" 0x01 | u16 topic length | topic | i32 partition | i64 offset | 12-byte nonce | ciphertext+tag

Everything before the nonce is the associated data: the source position is readable without
the secret and cannot be changed, nor the envelope moved to another record's position, unnoticed.
The plaintext is three length-prefixed fields (u32 big-endian, 0xFFFFFFFF for null): the
original key, the original value, and the full rejection detail.
"""

from __future__ import annotations

import functools
import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from loginpipe.core.addresses import mask_ip

SECRET_ENV = "PRIVACY_SECRET"  # where the shell finds the secret (config.privacy_from_environment)
MIN_SECRET_BYTES = 16
TOKEN_HEX_CHARS = 32  # 128 bits of the HMAC: collisions are negligible, records stay short

ENVELOPE_SCHEME = "aes-256-gcm/v1"  # the dlq-encrypted header's value
ENVELOPE_MAGIC = b"LPDL\x01"  # the last byte is the format version
_KDF_INFO = b"loginpipe dead-letter v1"  # a new use of the secret gets a new info, so a new key
_NONCE_BYTES = 12  # 96 bits, random: GCM's safe bound is 2**32 messages per key
_TOPIC_LENGTH = struct.Struct(">H")  # a topic name is at most 249 characters
_POSITION = struct.Struct(">iq")  # partition, offset
_LENGTH = struct.Struct(">I")
_NULL = 0xFFFFFFFF  # a null field's length, distinct from an empty one's (0)


class EnvelopeError(ValueError):
    """An envelope this secret cannot open: sealed with another secret, or altered."""


class NotAnEnvelope(EnvelopeError):
    """Bytes without the envelope's prefix: not sealed at all, or by a later format version."""


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a dead letter's input record was: the envelope's authenticated clear part."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Sealed:
    """An opened envelope: the input record's key and value, byte for byte, and why it was rejected."""

    source: SourcePosition
    key: bytes | None
    value: bytes | None
    detail: str


@dataclass(frozen=True)
class Privacy:
    secret: bytes = field(repr=False)  # never in a printed config, route or test failure

    def device_token(self, device_id: str) -> str:
        """The pseudonymous device id: the same device, the same token; irreversible without the key."""
        return self.token(device_id.encode()).decode()

    def token(self, data: bytes) -> bytes:
        """Any bytes' pseudonym, as ``device_token`` makes it (so a device id gets the same one)."""
        return hmac.digest(self.secret, data, "sha256").hex()[:TOKEN_HEX_CHARS].encode()

    @staticmethod
    def masked_ip(ip: str) -> str:
        return mask_ip(ip)

    def seal(self, source: SourcePosition, key: bytes | None, value: bytes | None, detail: str) -> bytes:
        """The envelope of one dead letter; a fresh random nonce each time."""
        clear = _clear_part(source)
        nonce = os.urandom(_NONCE_BYTES)
        plaintext = b"".join((_field(key), _field(value), _field(detail.encode("utf-8", "replace"))))
        return clear + nonce + _cipher(self.secret).encrypt(nonce, plaintext, clear)

    def open(self, envelope: bytes) -> Sealed:
        """What ``seal`` sealed; EnvelopeError when not an envelope or not opened with this secret."""
        source, nonce_at = read_source(envelope)
        clear, nonce = envelope[:nonce_at], envelope[nonce_at:nonce_at + _NONCE_BYTES]
        try:
            plaintext = _cipher(self.secret).decrypt(nonce, envelope[nonce_at + _NONCE_BYTES:], clear)
        except (InvalidTag, ValueError):  # ValueError: too short to hold a tag
            raise EnvelopeError("cannot be decrypted with this secret, or it was altered") from None
        key, at = _read_field(plaintext, 0)
        value, at = _read_field(plaintext, at)
        detail, _ = _read_field(plaintext, at)
        return Sealed(source, key, value, (detail or b"").decode("utf-8", "replace"))


@functools.lru_cache(maxsize=4)
def _cipher(secret: bytes) -> AESGCM:
    """The dead-letter cipher of a secret, derived once: HKDF is not per-record work. Kept out of
    Privacy's fields so that a config holding one can still be copied (dataclasses.asdict)."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_INFO).derive(secret)
    return AESGCM(key)


def is_envelope(data: bytes | None) -> bool:
    return data is not None and data.startswith(ENVELOPE_MAGIC)


def read_source(envelope: bytes) -> tuple[SourcePosition, int]:
    """The source position in an envelope's clear part, and where its nonce starts."""
    if not is_envelope(envelope):
        raise NotAnEnvelope("not a loginpipe dead-letter envelope (no LPDL v1 prefix)")
    at = len(ENVELOPE_MAGIC) + _TOPIC_LENGTH.size
    try:
        (size,) = _TOPIC_LENGTH.unpack_from(envelope, len(ENVELOPE_MAGIC))
        partition, offset = _POSITION.unpack_from(envelope, at + size)
        topic = envelope[at:at + size].decode()
    except (struct.error, UnicodeDecodeError):  # cut short or altered: GCM would refuse it too
        raise EnvelopeError("cannot be decrypted with this secret, or it was altered") from None
    return SourcePosition(topic, partition, offset), at + size + _POSITION.size


def _clear_part(source: SourcePosition) -> bytes:
    topic = source.topic.encode()
    return (ENVELOPE_MAGIC + _TOPIC_LENGTH.pack(len(topic)) + topic
            + _POSITION.pack(source.partition, source.offset))


def _field(data: bytes | None) -> bytes:
    return _LENGTH.pack(_NULL) if data is None else _LENGTH.pack(len(data)) + data


def _read_field(data: bytes, at: int) -> tuple[bytes | None, int]:
    """One length-prefixed field at ``at``, and where the next one starts."""
    (size,) = _LENGTH.unpack_from(data, at)
    at += _LENGTH.size
    if size == _NULL:
        return None, at
    return data[at:at + size], at + size
