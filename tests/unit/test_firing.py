"""The firing loop's pause between short pages: until the next due time, within its floor and ceiling."""

from __future__ import annotations

from typing import cast

import pytest

from services.dispatch.config import DispatchConfig
from services.dispatch.firing import Firing
from shared.delivery.handover import Handover
from shared.delivery.lifecycle import LifecycleWriter


class FakeHandover:
    schedule = None


@pytest.fixture
def firing(monkeypatch: pytest.MonkeyPatch) -> Firing:
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv("FIRE_INTERVAL_MS", "50")
    monkeypatch.setenv("FIRE_IDLE_MS", "500")
    return Firing(DispatchConfig.from_env(), cast(Handover, FakeHandover()), cast(LifecycleWriter, None))


def test_an_empty_schedule_is_looked_at_once_per_idle_pause(firing: Firing) -> None:
    """With nothing scheduled the loop sleeps the whole idle pause."""
    assert firing.pause_ms(None, 1_000) == 500


def test_the_loop_wakes_at_the_next_due_time(firing: Firing) -> None:
    """A message due within the idle pause sets the sleep to end at its due time."""
    assert firing.pause_ms(1_200, 1_000) == 200


def test_a_due_time_far_off_still_wakes_the_loop_after_the_idle_pause(firing: Firing) -> None:
    """A far due time is not slept through: something scheduled meanwhile for sooner is found within the idle pause."""
    assert firing.pause_ms(60_000, 1_000) == 500


def test_a_due_time_now_or_past_sleeps_the_floor_interval(firing: Firing) -> None:
    """A due time already reached (claimed by another instance meanwhile) never makes the loop spin."""
    assert firing.pause_ms(1_000, 1_000) == 50
    assert firing.pause_ms(900, 1_000) == 50
