"""Who the client is behind a proxy: trusted proxy ranges, ``X-Forwarded-For`` and the PROXY protocol. Pure logic, no I/O.

A load balancer in front of push nodes makes every socket come from its own address, so a per-address cap
counts the balancer. The client's address is taken from what the balancer says only when the TCP peer is
one of ``TRUSTED_PROXIES``; anyone else could write any header.

* ``X-Forwarded-For: client, proxy1, proxy2``: each proxy appends the address it saw. Read from the right,
  the first entry that is not a trusted proxy is the client (entries further left are the client's own
  claims). A malformed entry ends the walk: the hop that wrote it is the client as far as anyone knows.
* The PROXY protocol (HAProxy's, v1 text or v2 binary) puts the client's address in a header before the
  HTTP request, for balancers that pass TCP through (``parse_proxy_header``). A connection without one
  (a health probe, a client that came straight to the node) is its peer's, like any untrusted peer's header.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (the specification's own bound)
V2_MAX = 16 + 1024  # the fixed header, addresses and TLVs: a longer one is refused
_V2_FAMILIES = {0x11: (4, ipaddress.IPv4Address), 0x12: (4, ipaddress.IPv4Address),  # TCP4, UDP4
                0x21: (16, ipaddress.IPv6Address), 0x22: (16, ipaddress.IPv6Address)}  # TCP6, UDP6


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY protocol header (v1 or v2)."""


def parse_networks(raw: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` -> the networks (a bare address is a /32 or /128)."""
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"has an entry that is not an address or CIDR range ({exc})") from None


def is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def forwarded_client(peer: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address: ``peer``, unless ``peer`` is a trusted proxy and ``forwarded_for`` names who it serves."""
    client = peer
    if not forwarded_for or not is_trusted(peer, trusted):
        return client
    for entry in reversed(forwarded_for.split(",")):
        candidate = entry.strip()
        try:
            candidate = str(ipaddress.ip_address(candidate))
        except ValueError:
            return client
        client = candidate
        if not is_trusted(candidate, trusted):
            return client
    return client


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY header: the client's address, or None when the proxy speaks for itself (v2 LOCAL, v1 UNKNOWN)."""

    source: str | None
    length: int  # bytes the header took, to strip before the HTTP request


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The PROXY header at the start of ``data`` (of length 0 if there is none: a probe or a client that came
    straight to the node); None while more bytes are needed. Raises ``ProxyHeaderError`` on a malformed one."""
    for prefix, parse in ((V2_SIGNATURE, _parse_v2), (V1_PREFIX, _parse_v1)):
        if data.startswith(prefix):
            return parse(data)
        if prefix.startswith(data):
            return None
    return ProxyHeader(None, 0)


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("PROXY v1 line longer than 107 bytes")
        return None
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(None, end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"malformed PROXY v1 line {data[:end]!r}")
    try:
        source = ipaddress.ip_address(parts[2])
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 source {parts[2]!r} is not an address") from None
    if source.version != (4 if parts[1] == "TCP4" else 6):
        raise ProxyHeaderError(f"PROXY v1 source {parts[2]} is not {parts[1]}")
    return ProxyHeader(str(source), end + 2)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    version_command, family, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2 or version_command & 0xF not in (0, 1):
        raise ProxyHeaderError(f"unsupported PROXY v2 version/command byte {version_command:#x}")
    if 16 + length > V2_MAX:
        raise ProxyHeaderError(f"PROXY v2 header of {16 + length} bytes")
    if len(data) < 16 + length:
        return None
    if version_command & 0xF == 0 or family not in _V2_FAMILIES:  # LOCAL (the balancer's health check), or no IP
        return ProxyHeader(None, 16 + length)
    size, address = _V2_FAMILIES[family]
    if length < 2 * size + 4:
        raise ProxyHeaderError("PROXY v2 address block too short for its family")
    return ProxyHeader(str(address(data[16:16 + size])), 16 + length)
