"""The webhook retry schedule: each wait from WEBHOOK_SCHEDULE_SECONDS with +-20% jitter, then no more attempts."""

from __future__ import annotations

import random

from services.webhooks.config import seconds_list
from services.webhooks.schedule import retry_at

DEFAULT = seconds_list("5,300,1800,7200,18000,36000,21600")


def test_each_retry_waits_its_scheduled_delay_within_the_jitter() -> None:
    """The n-th failed attempt is retried after schedule[n-1] seconds, +-20%, never exactly in lockstep."""
    rng = random.Random(7)
    for attempts, delay in enumerate(DEFAULT, start=1):
        waits = {retry_at(attempts, DEFAULT, 1_000, rng) - 1_000 for _ in range(50)}
        assert all(0.8 * delay * 1000 <= w <= 1.2 * delay * 1000 for w in waits)
        assert len(waits) > 1


def test_the_default_schedule_spans_about_a_day_and_then_gives_up() -> None:
    """Seven retries over about 24 hours (eight attempts), then 0: the event goes to the failure list."""
    assert 22 * 3600 < sum(DEFAULT) < 26 * 3600
    assert retry_at(len(DEFAULT), DEFAULT, 0) > 0
    assert retry_at(len(DEFAULT) + 1, DEFAULT, 0) == 0


def test_a_short_schedule_for_tests_is_read_from_its_setting() -> None:
    """WEBHOOK_SCHEDULE_SECONDS takes fractions of seconds; an empty or too short delay is refused."""
    assert seconds_list("0.3, 0.3") == (0.3, 0.3)
    for bad in ("", "0", "a,b"):
        try:
            seconds_list(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
