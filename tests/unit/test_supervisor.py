"""The restart backoff of `make run`'s supervisor (pure logic)."""

from __future__ import annotations

from tools.supervisor import Backoff


def test_a_process_that_keeps_crashing_waits_twice_as_long_each_time_up_to_the_cap() -> None:
    """Quick crashes wait 0.5, 1, 2, 4 ... seconds, never more than the cap."""
    backoff = Backoff(base=0.5, cap=5.0, stable=60.0)
    assert [backoff.delay("push", lived=1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_process_that_ran_long_enough_restarts_after_the_base_wait_again() -> None:
    """After a run of `stable` seconds the streak is forgotten, for that process only."""
    backoff = Backoff(base=0.5, cap=5.0, stable=60.0)
    for _ in range(4):
        backoff.delay("push", lived=1.0)
        backoff.delay("auth", lived=1.0)
    assert backoff.delay("push", lived=120.0) == 0.5
    assert backoff.delay("auth", lived=1.0) == 5.0
