"""Where in a run its slowest messages arrived: a stall shows as one crowded window, contention as many thin ones."""

from __future__ import annotations

from loadtest.report import slowest_moments


def test_a_stall_shows_as_the_window_holding_most_of_the_slowest() -> None:
    """Of 1,000 messages one every 10 ms, the ten slowest arrived within 100 ms at +5 s: one window holds all ten."""
    arrived = [100.005 + i * 0.01 for i in range(1000)]  # mid-window, clear of float rounding at the edges
    latencies = [30.0 + i - 500 if 500 <= i < 510 else 2.0 for i in range(1000)]
    assert slowest_moments(latencies, arrived, started=100) == (
        "10 msgs in 1 windows of 100 ms; most in one: 10 (at +5.0 s, up to 39.0 ms)")


def test_a_tail_spread_over_the_run_shows_as_many_thin_windows() -> None:
    """The ten slowest, one every second: ten windows of one each, the first of them named."""
    arrived = [0.005 + i * 0.01 for i in range(1000)]
    latencies = [9.0 if i % 100 == 0 else 2.0 for i in range(1000)]
    assert slowest_moments(latencies, arrived, started=0) == (
        "10 msgs in 10 windows of 100 ms; most in one: 1 (at +0.0 s, up to 9.0 ms)")


def test_no_messages_say_so() -> None:
    """An empty run has no slowest messages."""
    assert slowest_moments([], [], started=0) == "no samples"
