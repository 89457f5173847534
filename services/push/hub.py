"""The node's local map of user id -> open connections, and writing frames to them."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.protocol import State

from services.push.metrics import CONNECTIONS, USERS


class Hub:
    def __init__(self) -> None:
        self._by_user: defaultdict[str, set[ServerConnection]] = defaultdict(set)
        self.connections = 0

    def add(self, user_id: str, ws: ServerConnection) -> None:
        self._by_user[user_id].add(ws)
        self.connections += 1
        CONNECTIONS.set(self.connections)
        USERS.set(len(self._by_user))

    def remove(self, user_id: str, ws: ServerConnection) -> None:
        sockets = self._by_user.get(user_id)
        if sockets is None or ws not in sockets:
            return
        sockets.discard(ws)
        if not sockets:
            del self._by_user[user_id]
        self.connections -= 1
        CONNECTIONS.set(self.connections)
        USERS.set(len(self._by_user))

    def holds(self, user_id: str) -> bool:
        return user_id in self._by_user

    def users(self) -> Iterator[str]:
        return iter(list(self._by_user))

    def __len__(self) -> int:
        return len(self._by_user)

    def deliver(self, user_id: str, frame: str) -> bool:
        """Write ``frame`` to every open socket of the user without awaiting; False if none is open."""
        sockets = [ws for ws in self._by_user.get(user_id, ()) if ws.protocol.state is State.OPEN]
        if not sockets:
            return False
        broadcast(sockets, frame)
        return True
