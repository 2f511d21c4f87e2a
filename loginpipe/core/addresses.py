"""IP addresses: is it one, is it private or reserved, and its masked form for privacy mode.

Every function here runs once per event, so the common IPv4 case avoids the ``ipaddress``
module (several microseconds an address) and works on the text and the C library instead.
"""

from __future__ import annotations

import functools
import ipaddress
import socket

_IPV6_ZERO_HOST = bytes(8)

# First octet of an IPv4 address -> 0: every address in that /8 is public, 1: none is, 2: it
# depends on the rest (ask ipaddress). Checked against ipaddress for every first octet by a
# unit test. 0/8 "this network", 10/8 private, 127/8 loopback, 224/4 multicast, 240/4 reserved.
_SPECIAL_FIRST = frozenset({0, 10, 127, *range(224, 256)})
_MIXED_FIRST = frozenset({100, 169, 172, 192, 198, 203})  # 100.64/10 shared, 169.254/16 link-local, ...
# Keyed by the octet's text: a dict lookup costs less than int() (this runs per event).
_FIRST_OCTET = {str(i): 1 if i in _SPECIAL_FIRST else 2 if i in _MIXED_FIRST else 0 for i in range(256)}


def is_ip(text: str) -> bool:
    """Strict IPv4 dotted quad or IPv6, via the C library (several times faster than ipaddress)."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        socket.inet_pton(family, text)
    except (OSError, ValueError):  # ValueError: non-ASCII text or an embedded NUL
        return False
    return True


def is_private_ip(ip: str) -> bool:
    """True for an address that is not publicly routable: private, loopback, link-local, shared
    (carrier-grade NAT), documentation, multicast or reserved. ``ip`` must be valid (``is_ip``)."""
    if ":" not in ip:
        kind = _FIRST_OCTET.get(ip.partition(".")[0], 2)
        if kind != 2:
            return kind == 1
    return _not_global(ip)


@functools.lru_cache(maxsize=4096)
def _not_global(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return not address.is_global or address.is_multicast


def mask_ip(ip: str) -> str:
    """Privacy mode's address: IPv4 with the last octet zeroed, IPv6 cut to its /64 prefix.
    ``ip`` must be valid (``is_ip``)."""
    if ":" not in ip:
        return ip[:ip.rindex(".")] + ".0"
    packed = socket.inet_pton(socket.AF_INET6, ip)
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + _IPV6_ZERO_HOST)
