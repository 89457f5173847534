"""The node's local map of user id -> open sessions, and writing frames to them.

A session starts in *replay*: the node first sends the user's stored, unacknowledged messages,
oldest first. Live frames arriving meanwhile are held and written after the replay, so a user's
messages arrive in order across the replay. A message stored just before the replay query is
usually also on its way live: the session remembers what it replayed and skips that live copy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.protocol import State

from services.push.metrics import CONNECTIONS, USERS


@dataclass(eq=False, slots=True)
class Session:
    ws: ServerConnection
    user_id: str
    replaying: bool = True
    held: list[tuple[str, str]] = field(default_factory=list)
    replayed: frozenset[str] = frozenset()

    @property
    def open(self) -> bool:
        return self.ws.protocol.state is State.OPEN

    def finish_replay(self, replayed: set[str]) -> None:
        """Write the held live frames the replay did not already send, then go live; no await in between."""
        self.replayed = frozenset(replayed)
        frames = [frame for message_id, frame in self.held if message_id not in self.replayed]
        self.held.clear()
        self.replaying = False
        for frame in frames:
            broadcast([self.ws], frame)


class Hub:
    def __init__(self) -> None:
        self._by_user: defaultdict[str, set[Session]] = defaultdict(set)
        self.connections = 0

    def add(self, session: Session) -> None:
        self._by_user[session.user_id].add(session)
        self.connections += 1
        self._gauge()

    def remove(self, session: Session) -> None:
        sessions = self._by_user.get(session.user_id)
        if sessions is None or session not in sessions:
            return
        sessions.discard(session)
        if not sessions:
            del self._by_user[session.user_id]
        self.connections -= 1
        self._gauge()

    def _gauge(self) -> None:
        CONNECTIONS.set(self.connections)
        USERS.set(len(self._by_user))

    def holds(self, user_id: str) -> bool:
        return user_id in self._by_user

    def users(self) -> Iterator[str]:
        return iter(list(self._by_user))

    def __len__(self) -> int:
        return len(self._by_user)

    def deliver(self, user_id: str, message_id: str, frame: str) -> bool:
        """Write (or, during replay, hold) ``frame`` for every open session of the user, without awaiting."""
        live = []
        taken = False
        for session in self._by_user.get(user_id, ()):
            if not session.open:
                continue
            taken = True
            if message_id in session.replayed:
                continue
            if session.replaying:
                session.held.append((message_id, frame))
            else:
                live.append(session.ws)
        if live:
            broadcast(live, frame)
        return taken
