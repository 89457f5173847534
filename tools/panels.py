"""The Grafana dashboard (``deploy/grafana/pushcluster.json``) rendered without Prometheus or Grafana.

``python -m tools.panels`` scrapes every service's ``/metrics`` every ``--every`` seconds for ``--seconds``,
labelling each sample with ``job`` and ``instance`` as Prometheus would, evaluates each panel's query after
every scrape, and prints a block per panel: each series' legend, its latest value and its min/max over the
run; ``--svg FILE`` draws the panels as an SVG "screenshot". With no ``--target job=url`` it scrapes
``make run``'s ports. It knows only the PromQL the dashboard uses (``parse``) and refuses anything else.
Without extrapolation: ``increase`` is last minus first of the samples in the window (a drop counted as a
counter reset, as Prometheus does) and ``rate`` that over the samples' time span.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.request
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy/grafana/pushcluster.json"
RUN_TARGETS = [("auth", "http://127.0.0.1:8001"), ("collect", "http://127.0.0.1:8002"), ("dispatch", "http://127.0.0.1:8003"),
               ("webhooks", "http://127.0.0.1:8004"), ("push", "http://127.0.0.1:8101"), ("push", "http://127.0.0.1:8102")]

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs
Store = dict[str, dict[Labels, list[tuple[float, float]]]]  # sample name -> labels -> [(time, value)]

_SELECTOR = r"(\w+)(?:\{([^}]*)\})?"
_WINDOW = r"\[(\d+)([smh])\]"
_AGGREGATE = re.compile(r"(sum|max)\s*(?:by\s*\(([\w\s,]*)\))?\s*\((.*)\)")
_RANGE = re.compile(rf"(rate|increase)\(\s*{_SELECTOR}{_WINDOW}\s*\)")
_GAUGE = re.compile(_SELECTOR)
_QUANTILE = re.compile(rf"histogram_quantile\(\s*([\d.]+)\s*,\s*sum\s*by\s*\(\s*le\s*\)\s*"
                       rf"\(\s*rate\(\s*{_SELECTOR}{_WINDOW}\s*\)\s*\)\s*\)")
_MATCHER = re.compile(r'\s*(\w+)\s*=\s*"([^"\\]*)"\s*')
_UNITS = {"s": 1, "m": 60, "h": 3600}


class Unsupported(ValueError):
    """A query outside the subset of PromQL this evaluates."""


@dataclass(frozen=True)
class Query:
    aggregate: str  # "sum", "max", or "quantile" (histogram_quantile over sum by (le))
    by: tuple[str, ...]
    function: str  # "rate", "increase", or "" for a gauge's latest value
    metric: str
    matchers: Labels
    window: float = 0.0
    quantile: float = 0.0


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # "timeseries" or "stat"
    unit: str
    grid: tuple[int, int, int, int]  # x, y, w, h in Grafana's grid units
    targets: tuple[tuple[str, str, Query], ...]  # (expression, legendFormat, query)


def _matchers(text: str | None) -> Labels:
    pairs = [_MATCHER.fullmatch(part) for part in (text or "").split(",") if part.strip()]
    if not all(pairs):
        raise Unsupported("only label=\"value\" matchers")
    return tuple(sorted((m[1], m[2]) for m in pairs if m))


def parse(expr: str) -> Query:
    """``sum|max [by (labels)] (rate|increase(metric{l="v"}[w]) | metric)``, or ``histogram_quantile(q, sum by (le)
    (rate(metric_bucket[w])))``; anything else raises ``Unsupported``."""
    expr = expr.strip()
    if (m := _QUANTILE.fullmatch(expr)) and float(m[1]) <= 1:
        return Query("quantile", ("le",), "rate", m[2], _matchers(m[3]), int(m[4]) * _UNITS[m[5]], float(m[1]))
    if not (outer := _AGGREGATE.fullmatch(expr)):
        raise Unsupported("not sum(...), max(...) or histogram_quantile(q, sum by (le) (rate(..._bucket[w])))")
    by = tuple(label.strip() for label in (outer[2] or "").split(",") if label.strip())
    if m := _RANGE.fullmatch(inner := outer[3].strip()):
        return Query(outer[1], by, m[1], m[2], _matchers(m[3]), int(m[4]) * _UNITS[m[5]])
    if m := _GAUGE.fullmatch(inner):
        return Query(outer[1], by, "", m[1], _matchers(m[2]))
    raise Unsupported(f"inner {inner!r} is not rate(...), increase(...) or a bare metric")


def load_panels(dashboard: dict[str, Any]) -> list[Panel]:
    """The dashboard's panels with their queries parsed; ``Unsupported`` names the panel and the expression."""
    panels = []
    for p in dashboard["panels"]:
        targets = []
        for t in p.get("targets", []):
            try:
                targets.append((t["expr"], t.get("legendFormat", ""), parse(t["expr"])))
            except Unsupported as e:
                raise Unsupported(f"panel {p['title']!r}: {t['expr']!r} is outside the PromQL subset rendered here ({e})") from None
        g = p["gridPos"]
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        panels.append(Panel(p["title"], p["type"], unit, (g["x"], g["y"], g["w"], g["h"]), tuple(targets)))
    return panels


def ingest(store: Store, page: str, at: float, job: str, instance: str) -> None:
    """Add one ``/metrics`` page scraped at ``at`` to ``store``, each sample labelled with ``job`` and ``instance``."""
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            labels = tuple(sorted({**s.labels, "job": job, "instance": instance}.items()))
            store.setdefault(s.name, {}).setdefault(labels, []).append((at, s.value))


def increase(points: list[tuple[float, float]]) -> float:
    """Last minus first value, a drop counted as a counter reset (the new value is all increase)."""
    total = points[-1][1] - points[0][1]
    for (_, before), (_, after) in zip(points, points[1:]):
        if after < before:
            total += before
    return total


def evaluate(query: Query, store: Store, at: float) -> dict[Labels, float]:
    """The query's value at time ``at`` from the samples up to then, one per result series (by its labels)."""
    name = query.metric
    groups: dict[Labels, list[float]] = {}
    for labels, points in store.get(name, {}).items():
        if not set(query.matchers) <= set(labels):
            continue
        if query.function:
            window = [(t, v) for t, v in points if at - query.window < t <= at]
            if len(window) < 2 or window[-1][0] == window[0][0]:
                continue
            value = increase(window) / (1 if query.function == "increase" else window[-1][0] - window[0][0])
        else:
            latest = [v for t, v in points if at - 300 < t <= at]  # Prometheus's 5-minute lookback
            if not latest:
                continue
            value = latest[-1]
        key = tuple((label, dict(labels).get(label, "")) for label in query.by)
        groups.setdefault(key, []).append(value)
    result = {key: (max(vs) if query.aggregate == "max" else sum(vs)) for key, vs in groups.items()}
    if query.aggregate != "quantile":
        return result
    return {(): quantile(query.quantile, {float(dict(k)["le"]): v for k, v in result.items()})} if result else {}


def quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus's histogram_quantile over cumulative ``buckets`` (upper bound -> count): linear within a bucket."""
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf or buckets[math.inf] <= 0:
        return math.nan
    rank = q * buckets[math.inf]
    i = next(i for i, b in enumerate(bounds) if buckets[b] >= rank)
    if i == len(bounds) - 1:
        return bounds[-2]
    start, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], buckets[bounds[i - 1]])
    if i == 0 and bounds[0] <= 0:
        return bounds[0]
    return start + (bounds[i] - start) * (rank - below) / (buckets[bounds[i]] - below)


def legend(fmt: str, labels: Labels) -> str:
    found = dict(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: found.get(m[1], ""), fmt) or "{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}"


def series(panel: Panel, store: Store, times: list[float]) -> dict[str, list[tuple[float, float]]]:
    """Each of the panel's series by legend: its (time, value) points, one per evaluation time it has a number at."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for _, fmt, query in panel.targets:
        for at in times:
            for labels, value in sorted(evaluate(query, store, at).items()):
                points = lines.setdefault(legend(fmt, labels), [])
                if not math.isnan(value):
                    points.append((at, value))
    return lines


def number(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"
    return f"{value:.3g}/s" if unit == "ops" else f"{value:.4g}"


def text(panels: list[Panel], lines: list[dict[str, list[tuple[float, float]]]]) -> str:
    out = []
    for panel, by_legend in zip(panels, lines):
        out.append(f"{panel.title}")
        for name, points in by_legend.items():
            values = [v for _, v in points]
            shown = (f"last {number(values[-1], panel.unit)}  min {number(min(values), panel.unit)}  max {number(max(values), panel.unit)}"
                     if values else "no data")
            out.append(f"  {name:<28} {shown}")
        out += [] if by_legend else ["  (no series)"]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


COLOURS = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0"]
COL, ROW = 40, 32  # pixels per Grafana grid unit


def svg(panels: list[Panel], lines: list[dict[str, list[tuple[float, float]]]], times: list[float]) -> str:
    """The panels as Grafana lays them out: a line chart per timeseries panel, big numbers for a stat panel."""
    t0, t1 = (times[0], times[-1]) if times else (0.0, 1.0)
    height = max((p.grid[1] + p.grid[3] for p in panels), default=0) * ROW
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{24 * COL}" height="{height}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="#111217"/>']
    for panel, by_legend in zip(panels, lines):
        x, y, w, h = (panel.grid[0] * COL + 4, panel.grid[1] * ROW + 4, panel.grid[2] * COL - 8, panel.grid[3] * ROW - 8)
        out += [f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="3" fill="#181b1f" stroke="#2c3235"/>',
                f'<text x="{x + 8}" y="{y + 17}" fill="#ccccdc" font-weight="bold" font-size="12">{escape(panel.title)}</text>']
        items = list(by_legend.items())
        if panel.kind == "stat":
            size = 44 if len(items) <= 1 else 22
            for i, (name, points) in enumerate(items or [("No data", [])]):
                cy = y + 40 + (h - 50) * (i + 0.5) / max(len(items), 1)
                value = number(points[-1][1], panel.unit) if points else "-"
                out += [f'<text x="{x + w / 2}" y="{cy}" fill="{COLOURS[i % 8]}" font-size="{size}" text-anchor="middle">{value}</text>',
                        f'<text x="{x + w / 2}" y="{cy + 16}" fill="#8e8e9e" text-anchor="middle">{escape(name)}</text>']
            continue
        rows = (len(items) + 1) // 2
        left, top, right, bottom = x + 48, y + 28, x + w - 12, y + h - 22 - 14 * rows
        peak = max((v for _, points in items for _, v in points), default=0) or 1
        out += [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#2c3235"/>',
                f'<line x1="{left}" y1="{top}" x2="{right}" y2="{top}" stroke="#2c3235" stroke-dasharray="2,3"/>',
                f'<text x="{left - 4}" y="{top + 4}" fill="#8e8e9e" text-anchor="end">{number(peak, panel.unit)}</text>',
                f'<text x="{left - 4}" y="{bottom + 4}" fill="#8e8e9e" text-anchor="end">0</text>',
                f'<text x="{left}" y="{bottom + 13}" fill="#8e8e9e">0 s</text>',
                f'<text x="{right}" y="{bottom + 13}" fill="#8e8e9e" text-anchor="end">{t1 - t0:.0f} s</text>']
        if not items:
            out.append(f'<text x="{(left + right) / 2}" y="{(top + bottom) / 2}" fill="#8e8e9e" text-anchor="middle">No data</text>')
        for i, (name, points) in enumerate(items):
            xy = " ".join(f"{left + (right - left) * (t - t0) / ((t1 - t0) or 1):.1f},{bottom - (bottom - top) * v / peak:.1f}"
                          for t, v in points)
            lx, ly = x + 10 + (i % 2) * w / 2, bottom + 30 + 14 * (i // 2)
            last = number(points[-1][1], panel.unit) if points else "no data"
            out += [f'<polyline points="{xy}" fill="none" stroke="{COLOURS[i % 8]}" stroke-width="1.5"/>',
                    f'<rect x="{lx}" y="{ly - 8}" width="10" height="3" fill="{COLOURS[i % 8]}"/>',
                    f'<text x="{lx + 14}" y="{ly - 3}" fill="#ccccdc">{escape(name)}  {last}</text>']
    return "\n".join([*out, "</svg>"]) + "\n"


def scrape(targets: list[tuple[str, str]], seconds: float, every: float, ops_key: str | None = None) -> tuple[Store, list[float]]:
    """Scrape every target's ``/metrics`` every ``every`` seconds for ``seconds``: the samples, and the scrape times.
    A target that does not answer is reported on stderr and left out of that scrape, as Prometheus would."""
    store: Store = {}
    times: list[float] = []
    headers = {"Authorization": f"Bearer {ops_key}"} if ops_key else {}
    start = time.monotonic()
    while (at := time.monotonic()) - start <= seconds:
        for job, url in targets:
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{url}/metrics", headers=headers), timeout=max(every, 2)) as answer:
                    ingest(store, answer.read().decode(), at, job, url.split("://", 1)[-1].rstrip("/"))
            except OSError as e:
                print(f"panels: {job} {url}/metrics: {e}", file=sys.stderr)
        times.append(at)
        time.sleep(max(0.0, start + len(times) * every - time.monotonic()))
    return store, times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.panels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", default=[], metavar="JOB=URL",
                        help="a service to scrape, e.g. push=http://127.0.0.1:8101 (repeatable; default: make run's ports)")
    parser.add_argument("--seconds", type=float, default=20, help="how long to sample (default 20)")
    parser.add_argument("--every", type=float, default=1, help="seconds between scrapes (default 1)")
    parser.add_argument("--ops-key", help="the operators' key (OPS_KEY), which production's /metrics needs")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--svg", type=Path, help="also draw the panels into this SVG file")
    args = parser.parse_args(argv)
    try:
        panels = load_panels(json.loads(args.dashboard.read_text()))
    except Unsupported as e:
        parser.exit(2, f"panels: {e}\n")
    if any("=" not in t for t in args.target):
        parser.error("--target takes job=url")
    targets = [(job, url) for job, _, url in (t.partition("=") for t in args.target)] or RUN_TARGETS
    store, times = scrape(targets, args.seconds, args.every, args.ops_key)
    lines = [series(panel, store, times) for panel in panels]
    print(text(panels, lines), end="")
    if args.svg:
        args.svg.write_text(svg(panels, lines, times))


if __name__ == "__main__":
    main()
