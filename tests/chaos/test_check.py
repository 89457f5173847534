"""The chaos checker's verdict (``loadtest.chaos_check.check``) on synthetic observations: a clean run counts
nothing, and each violation class, planted alone, is counted exactly once, so every check is proven able to fail."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from loadtest.chaos import SETTLE_MARGIN_S, SETTLE_MAX_EXTRA_S, settle_deadline
from loadtest.chaos_check import (
    CLASSES,
    LIFECYCLE_LOSS_S,
    Arrival,
    CancelRecord,
    FaultRecord,
    Observations,
    Planned,
    PostRecord,
    Report,
    SocketRecord,
    check,
)

NODE = 8101
T0 = 1_000.0  # wall clock seconds of the first post


def ms(seconds: float) -> int:
    return int(seconds * 1000)


def clean() -> Observations:
    """A run where everything went right: a post of three user messages (one scheduled, one cancelled), a topic
    message and a broadcast, one Idempotency-Key retry, a refused post; alice and bob each on one socket all along."""
    messages = (Planned("0.0", ("alice",)), Planned("0.1", ("alice", "bob")), Planned("0.2", ("bob",), delay_ms=2000),
                Planned("0.3", ("alice",), delay_ms=4000), Planned("0.4", topic="news"), Planned("0.5", topic="*"))
    ids = tuple(f"aaaa{i:04x}" for i in range(len(messages)))
    posts = [PostRecord(0, messages, T0, "k0", T0 + 0.1, 202, ids), PostRecord(0, messages, T0 + 0.5, "k0", T0 + 0.6, 202, ids),
             PostRecord(1, (Planned("1.0", ("alice",)),), T0 + 1, None, T0 + 1.1, 413)]
    alice = SocketRecord("a", "alice", NODE, settle=True, opened_at=T0 - 5, subscribe_sent={"news": T0 - 5},
                         granted={"news": T0 - 4.9}, told={"news": (10, "e"), "*": (20, "e")})
    bob = SocketRecord("b", "bob", NODE, settle=True, opened_at=T0 - 5, told={"*": (20, "e")})
    ts = ms(T0 + 0.05)
    offsets = {"news": 11, "*": 21}  # each topic's next position
    for socket, arrivals in ((alice, [("0000", T0 + 0.2), ("0001", T0 + 0.2), ("0004", T0 + 0.3), ("0005", T0 + 0.3)]),
                             (bob, [("0001", T0 + 0.2), ("0002", T0 + 2.2), ("0005", T0 + 0.3)])):
        for suffix, at in arrivals:
            message = messages[int(suffix, 16)]
            position = (offsets[message.topic], "e") if message.topic else (None, None)
            socket.arrivals.append(Arrival(f"aaaa{suffix}", message.tag, ts, at, message.topic, *position))
            socket.acks[f"aaaa{suffix}"] = at + 0.01
    statuses = {"aaaa0000": (200, {"recipients": [{"user_id": "alice", "state": "acked"}]}),
                "aaaa0001": (200, {"recipients": [{"user_id": "alice", "state": "acked"}, {"user_id": "bob", "state": "delivered"}]}),
                "aaaa0002": (200, {"recipients": [{"user_id": "bob", "state": "acked"}]}),
                "aaaa0003": (200, {"recipients": [{"user_id": "alice", "state": "cancelled"}]})}
    return Observations(posts, [CancelRecord("aaaa0003", T0 + 1, T0 + 1.1, 200)], [alice, bob], [], statuses, T0 + 30)


def counted(obs: Observations) -> Report:
    report = check(obs)
    assert report.violations == sum(report.counts[k] for k in CLASSES)
    return report


def only(report: Report, kind: str) -> None:
    assert {k: v for k, v in report.counts.items() if v} == {kind: 1}, report.examples
    assert len(report.examples[kind]) == 1


def socket(obs: Observations, user: str) -> SocketRecord:
    return next(s for s in obs.sockets if s.user == user)


def test_a_clean_run_counts_no_violation() -> None:
    """Observations where every delivery arrived once, on time, to its user, with matching statuses count 0."""
    report = counted(clean())
    assert report.violations == 0, report.examples
    assert report.tally["deliveries owed"] == report.tally["deliveries owed and arrived"] == 4
    assert report.tally["posts answered 202"] == 2 and report.tally["posts answered 413"] == 1


def drop_arrival(obs: Observations) -> None:
    s = socket(obs, "bob")
    s.arrivals = [a for a in s.arrivals if a.message_id != "aaaa0002"]
    obs.statuses["aaaa0002"] = (200, {"recipients": [{"user_id": "bob", "state": "accepted"}]})


def arrive_early(obs: Observations) -> None:
    s = socket(obs, "bob")
    s.arrivals = [Arrival(a.message_id, a.tag, a.ts, a.at - 1.0 if a.message_id == "aaaa0002" else a.at, a.topic) for a in s.arrivals]


def arrive_after_cancel(obs: Observations) -> None:
    socket(obs, "alice").arrivals.append(Arrival("aaaa0003", "0.3", ms(T0 + 0.05), T0 + 4.1))
    obs.statuses["aaaa0003"] = (200, {"recipients": [{"user_id": "alice", "state": "cancelled"}]})


def arrive_at_wrong_user(obs: Observations) -> None:
    socket(obs, "bob").arrivals.append(Arrival("aaaa0000", "0.0", ms(T0 + 0.05), T0 + 0.2))


def arrive_on_unsubscribed_socket(obs: Observations) -> None:
    socket(obs, "bob").arrivals.append(Arrival("aaaa0004", "0.4", ms(T0 + 0.05), T0 + 0.3, "news"))


def arrive_twice_unacked(obs: Observations) -> None:
    s = socket(obs, "alice")
    s.acks["aaaa0000"] = T0 + 0.5
    s.arrivals.append(Arrival("aaaa0000", "0.0", ms(T0 + 0.05), T0 + 0.4))


def arrive_out_of_order(obs: Observations) -> None:
    s = socket(obs, "alice")
    s.arrivals[0], s.arrivals[1] = s.arrivals[1], s.arrivals[0]


def status_left_accepted(obs: Observations) -> None:
    obs.statuses["aaaa0000"] = (200, {"recipients": [{"user_id": "alice", "state": "accepted"}]})


def miss_a_topic_message(obs: Observations) -> None:
    s = socket(obs, "alice")
    s.arrivals = [a for a in s.arrivals if a.message_id != "aaaa0004"]


def arrive_from_a_refused_post(obs: Observations) -> None:
    socket(obs, "alice").arrivals.append(Arrival("bbbb0000", "1.0", ms(T0 + 1.05), T0 + 1.2))


def answer_a_retry_with_other_ids(obs: Observations) -> None:
    to_carol = (Planned("2.0", ("carol",)),)  # offline all along: nothing is owed to her
    obs.posts += [PostRecord(2, to_carol, T0 + 2, "k2", T0 + 2.1, 202, ("dddd0000",)),
                  PostRecord(2, to_carol, T0 + 3, "k2", T0 + 3.1, 202, ("eeee0000",))]


def answer_500(obs: Observations) -> None:
    obs.cancels.append(CancelRecord("aaaa0000", T0 + 2, T0 + 2.1, 500))


def arrive_again_after_a_redis_restart(obs: Observations) -> None:
    obs.faults.append(FaultRecord("redis", "redis-6379", T0 + 10, T0 + 13))
    socket(obs, "bob").arrivals.append(Arrival("aaaa0001", "0.1", ms(T0 + 0.05), T0 + 15))


def skip_an_offset(obs: Observations) -> None:
    s = socket(obs, "alice")
    s.arrivals = [replace(a, offset=12) if a.topic == "news" else a for a in s.arrivals]


def refuse_a_recoverable_position(obs: Observations) -> None:
    s = socket(obs, "alice")
    s.recover_from["news"], s.recovered["news"] = (5, "e"), False


PLANTED: list[tuple[str, Callable[[Observations], None]]] = [
    ("lost", drop_arrival), ("early", arrive_early), ("after_cancel", arrive_after_cancel), ("wrong_user", arrive_at_wrong_user),
    ("wrong_user", arrive_on_unsubscribed_socket), ("duplicate", arrive_twice_unacked), ("order", arrive_out_of_order),
    ("status", status_left_accepted), ("topic_lost", miss_a_topic_message), ("unaccepted", arrive_from_a_refused_post),
    ("idempotency", answer_a_retry_with_other_ids), ("server_error", answer_500),
    ("acked_came_back", arrive_again_after_a_redis_restart), ("topic_gap", skip_an_offset),
    ("recovery_refused", refuse_a_recoverable_position),
]


@pytest.mark.parametrize(("kind", "plant"), PLANTED, ids=[f"{k}-{p.__name__}" for k, p in PLANTED])
def test_each_planted_violation_is_counted_once_in_its_class(kind: str, plant: Callable[[Observations], None]) -> None:
    """A single planted violation is counted once, in its own class, and nowhere else."""
    obs = clean()
    plant(obs)
    only(counted(obs), kind)


def test_every_class_has_a_planted_violation() -> None:
    """No class goes untested: each one in ``CLASSES`` is planted above."""
    assert {kind for kind, _ in PLANTED} == set(CLASSES)


def test_a_redelivery_after_the_socket_acked_is_tallied_not_counted() -> None:
    """The same message again on a socket that had acked it is at-least-once behaviour: tallied, not a violation."""
    obs = clean()
    socket(obs, "alice").arrivals.append(Arrival("aaaa0000", "0.0", ms(T0 + 0.05), T0 + 5))
    report = counted(obs)
    assert report.violations == 0 and report.tally["redelivered after ack"] == 1


def test_a_delivery_missing_for_a_user_who_connected_only_after_it_expired_is_not_lost() -> None:
    """A message whose ttl ran out before its user's settle socket was welcomed is not owed."""
    obs = clean()
    obs.posts[0].messages = tuple(replace(m, ttl_ms=1000) if m.tag == "0.2" else m for m in obs.posts[0].messages)
    obs.posts[1].messages = obs.posts[0].messages
    drop_arrival(obs)
    socket(obs, "bob").opened_at = T0 + 3
    obs.statuses["aaaa0002"] = (200, {"recipients": [{"user_id": "bob", "state": "expired"}]})
    assert counted(obs).violations == 0


def test_a_topic_message_missed_during_a_fault_is_not_counted() -> None:
    """Topic messages are at most once: one missed while a fault was on (or just after) is not topic loss."""
    obs = clean()
    miss_a_topic_message(obs)
    obs.faults.append(FaultRecord("kill", "dispatch-1", T0 - 2, T0 - 1))
    assert counted(obs).violations == 0


def test_messages_out_of_order_after_a_fault_are_not_counted() -> None:
    """Order is promised away from faults only (a fault's retries and a rebuild's replay may reorder a post)."""
    obs = clean()
    arrive_out_of_order(obs)
    obs.faults.append(FaultRecord("redis", "redis-1", T0 - 1, T0 - 0.5))
    assert counted(obs).violations == 0


@pytest.mark.parametrize(("rebuilt_from", "counted_as"), [(T0 + 0.1, 0), (T0 + 60, 1)])
def test_a_topic_message_due_while_the_state_was_rebuilt_is_not_counted_lost(rebuilt_from: float, counted_as: int) -> None:
    """A rebuild span over a topic message's span excuses its absence like a fault; one long after does not."""
    obs = clean()
    miss_a_topic_message(obs)
    obs.faults.append(FaultRecord("rebuild", "state", rebuilt_from, rebuilt_from + 3))
    assert counted(obs).counts["topic_lost"] == counted_as


@pytest.mark.parametrize(("rebuilt_from", "counted_as"), [(T0 + 1, 0), (T0 + 10, 1)])
def test_a_message_that_expired_while_the_state_was_rebuilt_is_not_lost(rebuilt_from: float, counted_as: int) -> None:
    """A short-lived message due during a rebuild span and expiring within two seconds of its end is not owed (nothing
    is sent while the state is rebuilt); one that expires before a later span is."""
    obs = clean()
    obs.posts[0].messages = tuple(replace(m, ttl_ms=5000) if m.tag == "0.2" else m for m in obs.posts[0].messages)
    obs.posts[1].messages = obs.posts[0].messages
    drop_arrival(obs)
    obs.statuses["aaaa0002"] = (200, {"recipients": [{"user_id": "bob", "state": "expired"}]})
    obs.faults.append(FaultRecord("rebuild", "state", rebuilt_from, rebuilt_from + 3))
    assert counted(obs).counts["lost"] == counted_as


@pytest.mark.parametrize(("killed_after", "counted_as"), [(1.0, 0), (LIFECYCLE_LOSS_S + 1, 1)])
def test_an_acked_message_back_after_a_redis_restart_is_excused_only_if_its_node_died_right_after_the_ack(
        killed_after: float, counted_as: int) -> None:
    """The node that took an ack and was SIGKILLed within ``LIFECYCLE_LOSS_S`` of it may have taken the ack's
    lifecycle mark along (README's fault table), so the message coming back after a later Redis restart is excused;
    a node killed later had written it, and the message coming back still counts."""
    obs = clean()
    arrive_again_after_a_redis_restart(obs)
    acked = socket(obs, "bob").acks["aaaa0001"]
    obs.faults.append(FaultRecord("kill", f"push-{NODE}", acked + killed_after, acked + killed_after + 1))
    assert counted(obs).counts["acked_came_back"] == counted_as


def test_a_status_left_behind_by_a_node_killed_right_after_writing_is_not_counted() -> None:
    """A node SIGKILLed within a few seconds of writing a message takes its lifecycle marks along: not a status violation."""
    obs = clean()
    status_left_accepted(obs)
    obs.faults.append(FaultRecord("kill", f"push-{NODE}", T0 + 1, T0 + 4))
    report = counted(obs)
    assert report.counts["status"] == 0


def test_the_settle_phase_waits_out_a_rebuild_and_its_margin() -> None:
    """The settle phase ends at its planned time, or ``SETTLE_MARGIN_S`` after the last rebuild span, and keeps waiting
    while a rebuild runs, but never more than ``SETTLE_MAX_EXTRA_S`` past the plan (cluster soak seed 1714: a rebuild
    ended 1.4 s before the planned end, and the replays it allowed were counted lost)."""
    obs = Observations()
    assert settle_deadline(100.0, obs, 50.0) == 100.0
    obs.faults.append(FaultRecord("rebuild", "state", 80.0, 98.0))
    assert settle_deadline(100.0, obs, 99.0) == 98.0 + SETTLE_MARGIN_S
    obs.rebuilding_since = 110.0
    assert settle_deadline(100.0, obs, 120.0) == 120.0 + SETTLE_MARGIN_S
    assert settle_deadline(100.0, obs, 1_000.0) == 100.0 + SETTLE_MAX_EXTRA_S


def test_a_recovered_socket_runs_on_from_the_position_it_recovered_from() -> None:
    """A socket that recovered from offset 10 and got 11 counts nothing; had it recovered from 9, 11 is a hole."""
    obs = clean()
    s = socket(obs, "alice")
    s.recover_from["news"], s.recovered["news"] = (10, "e"), True
    assert counted(obs).violations == 0
    s.recover_from["news"] = (9, "e")
    only(counted(obs), "topic_gap")
