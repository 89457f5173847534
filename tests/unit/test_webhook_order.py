"""The webhook ordering window: facts held until they are a window old by how far the stream has been read, released in
the order they happened, their entries acknowledged only once all their facts are out."""

from __future__ import annotations

import random

from services.webhooks.order import OrderWindow, member
from shared.model.webhook_events import Fact

W = 3000


def delivered(at: int, user: str = "ada", message: str = "p0:0") -> Fact:
    return Fact("delivered", message, user, at, "node")


def expired(at: int, user: str = "ada", message: str = "p0:0") -> Fact:
    return Fact("expired", message, user, at)


def test_a_delivery_appended_after_its_expiry_is_released_first_once_both_are_a_window_old() -> None:
    """The expiry (dispatch, at once) reaches the stream before the delivery (a node's flush); neither is released
    before it is a window old, and the batch that holds both has the delivery first."""
    window = OrderWindow(W)
    window.add("10500-0", [expired(10_400)])
    window.add("10900-0", [delivered(10_000)])
    window.advance(12_999)
    assert window.release(100) == ([], [])
    window.advance(13_000)
    released, acks = window.release(100)
    assert [f.stage for _, f in released] == ["delivered"] and acks == ["10900-0"]
    window.advance(13_400)
    released, acks = window.release(100)
    assert [f.stage for _, f in released] == ["expired"] and acks == ["10500-0"]
    assert len(window) == 0


def test_facts_appended_within_the_window_come_out_in_the_order_they_happened_whatever_the_passes() -> None:
    """Three producers appending up to W - 1 ms late, in entries of several facts, read in pages at passes of random
    length: the facts released, batch after batch, are in the order they happened, and each entry is acknowledged once,
    after its last fact."""
    rng = random.Random(19)
    facts = sorted((rng.randrange(0, 60_000), n) for n in range(600))
    appends: dict[int, list[Fact]] = {}
    for at, n in facts:  # each fact appended with the next flush of one of three producers, within the window
        producer = n % 3
        flush = at + rng.randrange(0, W - 200) if producer else at  # the third appends at once
        appends.setdefault(flush + producer, []).append(delivered(at, message=f"p{n}:0"))
    stream = sorted((t, f"{t}-0", fs) for t, fs in appends.items())
    window, out, acked, clock = OrderWindow(W), [], [], 0
    while stream or len(window):
        clock += rng.randrange(1, 1500)
        while stream and stream[0][0] < clock:
            _, entry_id, fs = stream.pop(0)
            window.add(entry_id, fs)
        window.advance(clock)
        while True:
            released, acks = window.release(rng.randrange(1, 50))
            if not released and not acks:
                break
            out += [f.at for _, f in released]
            acked += acks
    assert out == sorted(out) and len(out) == 600
    assert sorted(acked) == sorted(f"{t}-0" for t in appends)


def test_an_entry_is_acknowledged_only_with_its_last_fact_and_an_empty_one_with_the_next_batch() -> None:
    window = OrderWindow(W)
    window.add("5000-0", [delivered(1000), expired(4500)])
    window.add("5001-0", [])  # deleted meanwhile: nothing to release, only to acknowledge
    window.advance(4000)
    released, acks = window.release(100)
    assert [f.at for _, f in released] == [1000] and acks == ["5001-0"]
    window.advance(7500)
    released, acks = window.release(100)
    assert [f.at for _, f in released] == [4500] and acks == ["5000-0"]


def test_a_batch_of_at_most_limit_facts_takes_the_earliest_and_the_rest_follow() -> None:
    window = OrderWindow(W)
    window.add("9000-0", [delivered(at, message=f"p{at}:0") for at in (300, 100, 200)])
    window.advance(10_000)
    first, acks = window.release(2)
    assert [f.at for _, f in first] == [100, 200] and acks == []
    second, acks = window.release(2)
    assert [f.at for _, f in second] == [300] and acks == ["9000-0"]


def test_a_user_offline_takes_its_place_when_its_grace_ended() -> None:
    """The watcher appends an offline when the grace ends, stamped when the last socket closed: it is held and sorted
    by the end of the grace, after an expiry that happened during the grace."""
    window = OrderWindow(W, offline_grace_ms=10_000)
    window.add("11000-0", [expired(11_000)])
    window.add("20000-0", [Fact("offline", "", "ada", 10_000)])
    window.advance(23_000)
    released, _ = window.release(100)
    assert [f.stage for _, f in released] == ["expired", "offline"]


def test_a_fact_later_than_the_window_goes_out_at_once_and_one_from_a_clock_ahead_is_held_no_longer_than_a_window() -> None:
    """Appended past the window (after a Redis outage) it is due already; stamped after its own append (a clock running
    ahead), it is held a window after the append, not after its stamp: the window never holds more than that."""
    window = OrderWindow(W)
    window.add("50000-0", [delivered(10_000)])
    window.add("50001-0", [delivered(90_000, message="p1:0")])
    window.advance(50_001)
    assert [f.at for _, f in window.release(100)[0]] == [10_000]
    assert window.due_in(50_001) == W
    window.advance(53_001)
    assert [f.at for _, f in window.release(100)[0]] == [90_000]
    assert window.due_in(53_001) is None


def test_the_member_sorts_by_time_then_entry_then_position_as_text() -> None:
    keys = [member(5, "20-0", 0), member(5, "10-3", 1), member(5, "10-3", 0), member(4, "99-0", 7), member(12, "1-0", 0)]
    assert sorted(keys) == [keys[3], keys[2], keys[1], keys[0], keys[4]]
    assert len({len(k) for k in keys}) == 1
