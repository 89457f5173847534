"""The pure delivery-state model: random transitions keep its invariants, and the post that lost deliveries before
the model (a due part and a fired part of one post) keeps what it owes."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from shared.model.message import Message, index_of, post_of
from shared.model.poststate import Part, PostState
from tests.model_world import USERS, World, catalogue

MESSAGES = 6


class DeliveryStateMachine(RuleBasedStateMachine):
    """Two posts of three messages, opened in random parts (again too), acked, trimmed and expired in random order."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World(limit=4)
        self.now = 0
        self.messages: list[Message] = []

    @initialize(recipients=st.lists(st.sets(st.sampled_from(USERS), min_size=1), min_size=MESSAGES, max_size=MESSAGES),
          lifetimes=st.lists(st.integers(1, 50), min_size=MESSAGES, max_size=MESSAGES))
    def accept(self, recipients: list[set[str]], lifetimes: list[int]) -> None:
        self.messages = catalogue(2, 3, 0, [tuple(sorted(r)) for r in recipients], lifetimes)

    @rule(picks=st.sets(st.integers(0, MESSAGES - 1), min_size=1))
    def open_part(self, picks: set[int]) -> None:
        self.world.open([self.messages[k] for k in sorted(picks)], self.now)

    @rule(k=st.integers(0, MESSAGES - 1), user=st.sampled_from(USERS))
    def ack(self, k: int, user: str) -> None:
        self.world.close([(self.messages[k].id, user)])

    @rule()
    def close_trimmed(self) -> None:
        self.world.close_trimmed()

    @rule(ms=st.integers(1, 20))
    def expire(self, ms: int) -> None:
        self.now += ms
        self.world.expire(self.now)

    @invariant()
    def invariants_hold(self) -> None:
        assert self.world.broken() == []

    @invariant()
    def nothing_owed_is_lost(self) -> None:
        """Every open entry's message is held, so a replay can still send it."""
        for user, entries in self.world.inboxes.items():
            for mid in entries:
                assert index_of(mid) in self.world.posts[post_of(mid)].held, f"{user} owes {mid}, which is no longer held"


DeliveryStateMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_random_transitions_keep_the_delivery_state_invariants = DeliveryStateMachine.TestCase


def test_a_fired_part_acked_leaves_the_due_part_of_its_post_held() -> None:
    """Alice's due message stays held after bob's part of the same post is opened later and acked."""
    state = PostState()
    state.open([Part(0, ("alice",), 3_600_000)])
    state.open([Part(1, ("bob",), 10_000)])
    state.close({1: 1})
    assert list(state.held) == [0] and state.held[0].open == 1


def test_a_short_lived_part_never_shortens_another_parts_life() -> None:
    """A post's 10 s part expires alone; its 1 h part stays held and the post is scored by it next."""
    state = PostState()
    state.open([Part(0, ("alice",), 3_600_000)])
    state.open([Part(1, ("bob",), 10_000)])
    assert state.score == 10_000
    state.expire(10_000, state.expired(10_000))
    assert list(state.held) == [0] and state.score == 3_600_000


def test_a_part_opened_twice_overcounts_and_never_undercounts() -> None:
    """A hand-over finished twice keeps the message until all its recipients close it, and past that until it expires."""
    world = World(limit=10)
    (m,) = catalogue(1, 1, 0, [("ann", "bob")], [100])
    world.open([m], 0)
    world.close([(m.id, "ann")])
    world.open([m], 0)  # the reconciler finishes the same hand-over again: ann's entry is back
    world.close([(m.id, "ann"), (m.id, "bob")])
    assert world.broken() == [] and world.posts[m.post].held[0].open == 1
    assert world.expire(100) == [] and not world.posts[m.post].held

