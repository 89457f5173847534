"""A push node's server connection: websockets' own, a hook that takes a browser's acks as they arrive, and who the
client is behind a load balancer.

``SessionConnection.take_text`` (``shared.infra.text_taker``), set by a session once it is welcomed, takes acks, most
of what a browser sends, as they are parsed (``sockets.py``): no queue, no future and no wake-up of the session's task
per frame. A frame it declines goes to the task's reader as before.

``client_address`` is what the per-address cap counts and the logs name: the TCP peer, unless the peer is
one of ``TRUSTED_PROXIES`` and says who it serves, in a PROXY protocol header (``ProxiedConnection``, with
``PUSH_PROXY_PROTOCOL=1``) or in ``X-Forwarded-For`` (``shared.wire.forwarding``).
"""

from __future__ import annotations

import logging
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import OPEN

from shared.infra.text_taker import TextTaker
from shared.wire.forwarding import Network, ProxyHeaderError, forwarded_client, is_trusted, parse_proxy_header

log = logging.getLogger(__name__)


def client_address(connection: ServerConnection, trusted: tuple[Network, ...]) -> str:
    """Whom ``connection`` serves: its peer, or the client a trusted peer names."""
    peer = str(connection.remote_address[0])
    if isinstance(connection, ProxiedConnection) and connection.proxy_source and is_trusted(peer, trusted):
        return connection.proxy_source
    forwarded = ", ".join(connection.request.headers.get_all("X-Forwarded-For")) if connection.request else None
    return forwarded_client(peer, forwarded, trusted)


class SessionConnection(TextTaker, ServerConnection):
    """A browser's socket (see the module's docstring).

    An upgrade's ``101 Switching Protocols`` is held back and written with the connection's next bytes, one write for
    both: for a session, its welcome frame (or the close that refuses it), sent once its token is checked and its route
    written; the client waits for either anyway. One write fewer took ~4% off a node's CPU per connect (ABBA). Nothing
    writes a session's transport directly before its welcome (the hub holds a session's frames until its replay, which
    begins after the welcome), so that first write goes through ``send_data``; dispatch's link, which speaks only after
    its peer, is sent the 101 at once (``send_held``).
    """

    __slots__ = ("_held",)  # slots, as ``TextTaker``'s
    _held: bytes | None  # None until the upgrade; then the held 101; b"" once written

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held = None

    def send_data(self) -> None:
        held = self._held
        if held is None and self.protocol.state is OPEN:  # the first write since the upgrade: the 101 alone
            self._held = b"".join(self.protocol.data_to_send())
            return
        if held:
            writes = self.protocol.writes
            if writes and writes[0]:
                writes[0] = held + writes[0]
            else:
                writes.insert(0, held)
            self._held = b""
        super().send_data()

    def send_held(self) -> None:
        """Write the held 101 now, on a connection whose client speaks first."""
        if self._held:
            self.send_data()


class ProxiedConnection(SessionConnection):
    """A listener behind a balancer that speaks the PROXY protocol: a header before the HTTP request is taken
    off here (a connection without one is served as it is); a malformed one closes the connection."""

    __slots__ = ("_head", "proxy_source")
    proxy_source: str | None  # the client the header named
    _head: bytes | None  # bytes received while the header is incomplete; None once it was read

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proxy_source, self._head = None, b""

    def data_received(self, data: bytes) -> None:
        if self._head is None:
            super().data_received(data)
            return
        self._head += data
        try:
            header = parse_proxy_header(self._head)
        except ProxyHeaderError as exc:
            log.warning("connection closed: malformed PROXY header", extra={"peer": str(self.remote_address[0]), "error": str(exc)})
            self.transport.close()
            return
        if header is None:
            return
        rest, self._head = self._head[header.length:], None
        self.proxy_source = header.source
        if rest:
            super().data_received(rest)
