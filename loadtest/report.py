"""Figures as a plain table: one row per measurement, grouped by scenario, printed as they come; and, in a run beside
a peer system, the figures both sides kept, side by side with their ratio."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (``q`` in 0..1); NaN when empty."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def latency_summary(values_ms: list[float]) -> str:
    ordered = sorted(values_ms)
    parts = [f"{name} {percentile(ordered, q):.1f}" for name, q in (("p50", .5), ("p90", .9), ("p99", .99))]
    return " / ".join(parts) + f" / max {ordered[-1]:.1f} ms" if ordered else "no samples"


def slowest_moments(latencies_ms: Sequence[float], arrived: Sequence[float], started: float, share: float = 0.01,
                    window: float = 0.1) -> str:
    """When the slowest ``share`` of the messages arrived, by ``window`` seconds of the run (from ``started``): how many
    windows they fall in, and the one holding most of them. A stall (a pass over every socket, a flush) puts many in one
    window; a tail spread thin over many is the machine's contention."""
    if not latencies_ms:
        return "no samples"
    slow = sorted(range(len(latencies_ms)), key=latencies_ms.__getitem__)[-max(1, round(len(latencies_ms) * share)):]
    window_of = {i: math.floor((arrived[i] - started) / window) for i in slow}
    windows = Counter(window_of.values())
    at, most = max(windows.items(), key=lambda item: (item[1], -item[0]))
    worst = max(latencies_ms[i] for i in slow if window_of[i] == at)
    return (f"{len(slow):,} msgs in {len(windows):,} windows of {window * 1000:.0f} ms; most in one: {most:,} "
            f"(at +{at * window:.1f} s, up to {worst:.1f} ms)")


def grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned under ``header``, between rules."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = "+".join("-" * (w + 2) for w in widths)
    return "\n".join([line, " | ".join(h.ljust(w) for h, w in zip(header, widths)), line,
                      *(" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows), line])


Kept = tuple[float | str, int]  # a figure kept for a comparison, and its decimals when a number


class Table:
    """Rows of (scenario, figure, value), each printed at once and all again, aligned, at the end.

    ``labelled(peer)`` is a view of the same table for a peer system's run: its rows go under "scenario (peer)",
    and the figures it ``keep``s beside ours, for ``compare``.
    """

    def __init__(self, label: str = "", rows: list[tuple[str, str, str]] | None = None,
                 kept: dict[tuple[str, str], dict[str, Kept]] | None = None) -> None:
        self.label = label
        self.rows = [] if rows is None else rows
        self.kept = {} if kept is None else kept  # (label, scenario) -> figure -> value

    def labelled(self, label: str) -> Table:
        return Table(label, self.rows, self.kept)

    def add(self, scenario: str, figure: str, value: object) -> None:
        scenario = f"{scenario} ({self.label})" if self.label else scenario
        text = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
        self.rows.append((scenario, figure, text))
        print(f"  [{scenario}] {figure}: {text}", flush=True)

    def keep(self, scenario: str, figure: str, value: float | str, digits: int = 0) -> None:
        """Keep a figure for ``compare``: a number (shown with ``digits`` decimals, and as a ratio) or a text."""
        self.kept.setdefault((self.label, scenario), {})[figure] = (value, digits)

    def compare(self, scenario: str, peer: str, note: str = "") -> str:
        """Our kept figures of ``scenario`` beside ``peer``'s, with the ratio ours / theirs for the numbers, under a
        heading (and ``note``)."""
        ours, theirs = self.kept.get(("", scenario), {}), self.kept.get((peer, scenario), {})
        rows = []
        for figure, (value, digits) in ours.items():
            other, _ = theirs.get(figure, ("-", 0))
            ratio = f"{value / other:.2f}x" if isinstance(value, float) and isinstance(other, float) and other else ""
            rows.append((figure, shown(value, digits), shown(other, digits), ratio))
        heading = f"{scenario}: this project beside {peer}" + (f" ({note})" if note else "")
        return heading + "\n" + grid(("figure", "this project", peer, "ours / theirs"), rows)

    def render(self) -> str:
        if not self.rows:
            return "(no figures)"
        rows = [(scenario if scenario != previous else "", figure, value)
                for (scenario, figure, value), (previous, _, _) in zip(self.rows, [("", "", ""), *self.rows])]
        return grid(("scenario", "figure", "value"), rows)


def shown(value: float | str, digits: int) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, float) else value
