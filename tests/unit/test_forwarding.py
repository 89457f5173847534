"""Reading the client's address from a trusted proxy's X-Forwarded-For or PROXY header (pure logic)."""

from __future__ import annotations

import pytest

from shared.wire.forwarding import ProxyHeader, ProxyHeaderError, forwarded_client, parse_networks, parse_proxy_header

TRUSTED = parse_networks("10.0.0.0/8, 192.168.1.1")
V2 = b"\r\n\r\n\x00\r\nQUIT\n"


def test_an_untrusted_peers_forwarded_for_is_ignored() -> None:
    """A peer outside the trusted ranges is the client, whatever it forwards."""
    assert forwarded_client("203.0.113.9", "198.51.100.1", TRUSTED) == "203.0.113.9"


def test_the_right_most_untrusted_entry_is_the_client() -> None:
    """Entries are read from the right, past trusted proxies; what the client wrote further left is ignored."""
    assert forwarded_client("10.0.0.2", "6.6.6.6, 198.51.100.1, 192.168.1.1", TRUSTED) == "198.51.100.1"


def test_a_chain_of_trusted_proxies_only_yields_its_left_most_entry() -> None:
    """When every entry is a trusted proxy, the left-most one is the client as far as anyone knows."""
    assert forwarded_client("10.0.0.2", "10.1.1.1, 192.168.1.1", TRUSTED) == "10.1.1.1"


def test_a_malformed_entry_stops_at_the_hop_that_wrote_it() -> None:
    """A garbage entry is nobody's address: the trusted hop to its right stands for the client."""
    assert forwarded_client("10.0.0.2", "198.51.100.1, bogus, 10.0.0.3", TRUSTED) == "10.0.0.3"
    assert forwarded_client("10.0.0.2", "", TRUSTED) == "10.0.0.2"


def test_addresses_are_normalised_so_one_client_is_counted_once() -> None:
    """IPv6 written two ways is one address."""
    assert forwarded_client("10.0.0.2", "2001:DB8:0:0::1", TRUSTED) == "2001:db8::1"


def test_trusted_proxies_must_be_addresses_or_ranges() -> None:
    """A typo in TRUSTED_PROXIES is refused with the reason, not read as nothing."""
    with pytest.raises(ValueError, match="not an address"):
        parse_networks("10.0.0.0/8, proxy.local")
    assert parse_networks("") == ()


@pytest.mark.parametrize("data, header", [
    (b"PROXY TCP4 198.51.100.1 10.0.0.1 5000 443\r\nGET /", ProxyHeader("198.51.100.1", 43)),
    (b"PROXY TCP6 2001:db8::1 ::1 5000 443\r\n", ProxyHeader("2001:db8::1", 37)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(None, 15)),
    (V2 + bytes([0x21, 0x11, 0, 12]) + bytes([198, 51, 100, 2, 10, 0, 0, 1, 0, 1, 0, 2]) + b"GET", ProxyHeader("198.51.100.2", 28)),
    (V2 + bytes([0x20, 0x00, 0, 0]), ProxyHeader(None, 16)),  # LOCAL: the balancer's own health check
    (b"GET /ws HTTP/1.1\r\n", ProxyHeader(None, 0)),  # no header: a probe, or a client straight to the node
])
def test_proxy_headers_v1_and_v2_name_the_client_and_their_length(data: bytes, header: ProxyHeader) -> None:
    """Each header form gives the client (or none) and how many bytes to take off before the HTTP request."""
    assert parse_proxy_header(data) == header


@pytest.mark.parametrize("data", [b"", b"PRO", b"PROXY TCP4 198.51.100.1", V2[:5], V2 + bytes([0x21, 0x11, 0, 12, 198])])
def test_an_incomplete_proxy_header_waits_for_more_bytes(data: bytes) -> None:
    """A header cut anywhere asks for more instead of guessing."""
    assert parse_proxy_header(data) is None


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n",
    b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
    b"PROXY SCTP 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY " + b"x" * 120,
    V2 + bytes([0x31, 0x11, 0, 12]),
    V2 + bytes([0x21, 0x11, 0, 4, 1, 2, 3, 4]),
    V2 + bytes([0x21, 0x11, 0xFF, 0xFF]),
])
def test_a_malformed_proxy_header_is_refused(data: bytes) -> None:
    """A bad address, family, version, length or an endless v1 line is an error, not a client address."""
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)
