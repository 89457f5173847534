"""A push node with a certificate serves wss:// to browsers and to dispatch's link, which dispatch and collect verify."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake

from tests.client import API_KEY, next_frame, receive_ids, subscribe
from tests.conftest import RunningStack
from tests.waits import scaled, until


def issue(tmp: Path) -> tuple[Path, Path, Path]:
    """A test CA, and a certificate it signs for 127.0.0.1: (ca.pem, node.pem, node.key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key, node_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pushcluster test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    node = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(node_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "node.pem", tmp / "node.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(node.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(node_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return paths


@pytest.fixture
def secured(start_stack, tmp_path: Path) -> tuple[RunningStack, ssl.SSLContext]:
    ca, cert, key = issue(tmp_path)
    stack = start_stack(nodes=1, PUSH_TLS_CERT=str(cert), PUSH_TLS_KEY=str(key), LINK_CA=str(ca))
    return stack, ssl.create_default_context(cafile=str(ca))


async def test_a_node_with_a_certificate_is_reached_over_wss_by_browsers_dispatch_and_collect(
        secured: tuple[RunningStack, ssl.SSLContext]) -> None:
    """A browser connects with wss://, a posted message reaches it over dispatch's wss:// link (verified against
    LINK_CA), collect lists the topic's users and shows the node up in its stats, both over https."""
    stack, trust = secured
    c, port = stack.client, stack.stack.push_ports[0]
    ws = await connect(f"wss://127.0.0.1:{port}/ws?token={await c.token('secure', topics=['vault:*'])}", ssl=trust,
                       open_timeout=scaled(5))
    assert (await next_frame(ws))["type"] == "welcome"
    _, posted = await c.post({"user_id": "secure", "payload": "over TLS"})
    assert await receive_ids(ws, 1) == [posted["id"]]
    await subscribe(ws, ["vault:1"])
    async with c.session.get(f"{stack.stack.collect_url}/v1/topics/vault:1?users=1",
                             headers={"Authorization": f"Bearer {API_KEY}"}) as answer:
        assert answer.status == 200 and (await answer.json())["users"] == ["secure"]

    async def node_up() -> list[tuple[bool, str]]:
        async with c.session.get(f"{stack.stack.collect_url}/v1/stats") as answer:
            return [(n["up"], n["url"]) for n in (await answer.json())["nodes"]]

    await until(node_up, lambda nodes: nodes == [(True, f"wss://127.0.0.1:{port}/ws")], what="collect to scrape the node over https")
    await ws.close()


async def test_a_plain_client_or_an_untrusted_ca_gets_no_connection(secured: tuple[RunningStack, ssl.SSLContext]) -> None:
    """ws:// to a TLS node fails, and a client that does not trust the node's CA refuses the handshake."""
    stack, _ = secured
    port = stack.stack.push_ports[0]
    with pytest.raises((InvalidHandshake, OSError)):
        await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=scaled(3))
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(f"wss://127.0.0.1:{port}/ws", ssl=ssl.create_default_context(), open_timeout=scaled(3))
