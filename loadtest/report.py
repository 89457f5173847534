"""Figures as a plain table: one row per measurement, grouped by scenario, printed as they come."""

from __future__ import annotations

import math


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (``q`` in 0..1); NaN when empty."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def latency_summary(values_ms: list[float]) -> str:
    ordered = sorted(values_ms)
    parts = [f"{name} {percentile(ordered, q):.1f}" for name, q in (("p50", .5), ("p90", .9), ("p99", .99))]
    return " / ".join(parts) + f" / max {ordered[-1]:.1f} ms" if ordered else "no samples"


class Table:
    """Rows of (scenario, figure, value), each printed at once and all again, aligned, at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, scenario: str, figure: str, value: object) -> None:
        text = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
        self.rows.append((scenario, figure, text))
        print(f"  [{scenario}] {figure}: {text}", flush=True)

    def render(self) -> str:
        if not self.rows:
            return "(no figures)"
        widths = [max(len(row[i]) for row in self.rows + [("scenario", "figure", "value")]) for i in range(3)]
        line = "+".join("-" * (w + 2) for w in widths)
        out = [line, " | ".join(h.ljust(w) for h, w in zip(("scenario", "figure", "value"), widths)), line]
        previous = None
        for scenario, figure, value in self.rows:
            label = scenario if scenario != previous else ""
            out.append(" | ".join((label.ljust(widths[0]), figure.ljust(widths[1]), value.ljust(widths[2]))))
            previous = scenario
        out.append(line)
        return "\n".join(out)
