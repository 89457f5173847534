"""Which push nodes took each stream entry not yet acknowledged, and which are still being sent it. Pure logic.

Sends to nodes finish in the background, so a hung node holds up nobody: an entry is acknowledged once
every node it needs took its part, whenever that is. When an entry comes back for a retry (claimed after
a node failed or was skipped), it goes only to the nodes that have not taken it and are not being sent
it now, so the users of healthy nodes do not get it twice from this instance.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


class Ledger:
    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit  # entries remembered at most (others were claimed elsewhere, or failed long ago)
        self._needs: dict[str, set[str]] = {}
        self._taken: defaultdict[str, set[str]] = defaultdict(set)
        self._sending: defaultdict[str, set[str]] = defaultdict(set)

    def plan(self, entry_ids: Iterable[str], work: dict[str, dict[str, T]]) -> dict[str, dict[str, T]]:
        """Record the nodes each entry needs now (``work``: node → entry → its part); return the parts still to send."""
        needs: defaultdict[str, set[str]] = defaultdict(set)
        for node, by_entry in work.items():
            for entry_id in by_entry:
                needs[entry_id].add(node)
        for entry_id in entry_ids:
            self._needs.pop(entry_id, None)  # re-inserted last: the oldest are forgotten first
            self._needs[entry_id] = needs.get(entry_id, set())
        while len(self._needs) > self.limit:
            self._forget(next(iter(self._needs)))
        todo: dict[str, dict[str, T]] = {}
        for node, by_entry in work.items():
            parts = {e: part for e, part in by_entry.items() if node not in self._taken[e] and node not in self._sending[e]}
            if parts:
                todo[node] = parts
        return todo

    def sending(self, node: str, entry_ids: Iterable[str]) -> None:
        for entry_id in entry_ids:
            self._sending[entry_id].add(node)

    def finished(self, node: str, entry_ids: Iterable[str], ok: bool) -> None:
        for entry_id in entry_ids:
            if entry_id not in self._needs:
                continue  # forgotten meanwhile
            self._sending[entry_id].discard(node)
            if ok:
                self._taken[entry_id].add(node)

    def settled(self, entry_ids: Iterable[str]) -> list[str]:
        """The entries every needed node took, with no send still running: forgotten here, to be acknowledged."""
        done = [e for e in entry_ids if e in self._needs and not self._sending[e] and self._needs[e] <= self._taken[e]]
        for entry_id in done:
            self._forget(entry_id)
        return done

    def _forget(self, entry_id: str) -> None:
        self._needs.pop(entry_id, None)
        self._taken.pop(entry_id, None)
        self._sending.pop(entry_id, None)

    def __len__(self) -> int:
        return len(self._needs)
