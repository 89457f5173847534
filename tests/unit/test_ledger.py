"""dispatch's ledger: which nodes took each unacknowledged entry, so retries skip them (pure logic)."""

from __future__ import annotations

from services.dispatch.ledger import Ledger


def test_an_entry_is_settled_once_every_node_it_needs_took_it() -> None:
    """Acknowledged only after both nodes answered OK; an entry routed nowhere is settled at once."""
    ledger = Ledger()
    todo = ledger.plan(["e1", "e2"], {"n1": {"e1": "p1"}, "n2": {"e1": "p2"}})
    assert todo == {"n1": {"e1": "p1"}, "n2": {"e1": "p2"}}
    ledger.sending("n1", ["e1"])
    ledger.sending("n2", ["e1"])
    ledger.finished("n1", ["e1"], ok=True)
    assert ledger.settled(["e1", "e2"]) == ["e2"]
    ledger.finished("n2", ["e1"], ok=True)
    assert ledger.settled(["e1"]) == ["e1"]
    assert len(ledger) == 0


def test_a_retried_entry_goes_only_to_the_nodes_that_did_not_take_it() -> None:
    """After the hung node failed, the retry plans no part for the healthy node that took it, nor for a node still being sent it."""
    ledger = Ledger()
    work = {"healthy": {"e1": "a"}, "hung": {"e1": "b"}, "slow": {"e1": "c"}}
    for node in ledger.plan(["e1"], work):
        ledger.sending(node, ["e1"])
    ledger.finished("healthy", ["e1"], ok=True)
    ledger.finished("hung", ["e1"], ok=False)
    assert ledger.settled(["e1"]) == []
    assert ledger.plan(["e1"], work) == {"hung": {"e1": "b"}}


def test_the_ledger_forgets_its_oldest_entries_past_its_limit() -> None:
    """Entries claimed by another instance are never settled here: memory stays bounded by ``limit``."""
    ledger = Ledger(limit=3)
    for n in range(10):
        ledger.plan([f"e{n}"], {"n1": {f"e{n}": n}})
    assert len(ledger) == 3
    ledger.finished("n1", ["e0"], ok=True)  # forgotten: ignored
    assert ledger.settled(["e0", "e9"]) == []
