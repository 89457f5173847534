"""tools/panels.py's evaluator: the dashboard's PromQL subset over scraped samples, and its refusal of the rest."""

from __future__ import annotations

import json
import math

import pytest

from tools.panels import DASHBOARD, Store, Unsupported, evaluate, ingest, load_panels, parse, series, svg, text


def page(lines: str) -> str:
    return lines.strip() + "\n"


def counter(values: list[float], job: str = "collect", instance: str = "h:1") -> Store:
    """A store of ``push_messages_in_total`` scraped once a second with ``values``."""
    store: Store = {}
    for t, v in enumerate(values):
        ingest(store, page(f"# TYPE push_messages_in counter\npush_messages_in_total {v}"), float(t), job, instance)
    return store


def test_rate_is_the_increase_over_the_samples_time_span_counting_a_drop_as_a_reset() -> None:
    """10 -> 20 -> 4 (a restart) -> 8 over 3 s is 10 + 4 + 4 = 18 of increase: 6 per second."""
    store = counter([10, 20, 4, 8])
    assert evaluate(parse('sum(rate(push_messages_in_total{job="collect"}[1m]))'), store, 3.0) == {(): 6.0}
    assert evaluate(parse("sum(increase(push_messages_in_total[1m]))"), store, 3.0) == {(): 18.0}


def test_rate_reads_only_the_window_and_needs_two_samples() -> None:
    """A 2 s window at t=3 holds the samples at 2 and 3 only; a window holding one sample, or a job that does not match,
    yields no series."""
    store = counter([0, 100, 100, 103])
    assert evaluate(parse("sum(rate(push_messages_in_total[2s]))"), store, 3.0) == {(): 3.0}
    assert evaluate(parse("sum(rate(push_messages_in_total[1s]))"), store, 3.0) == {}
    assert evaluate(parse('sum(rate(push_messages_in_total{job="dispatch"}[1m]))'), store, 3.0) == {}


def test_sum_by_groups_series_by_the_labels_scraping_added() -> None:
    """Two push nodes' connection gauges, summed by instance, stay two series; summed, and maxed, they are one."""
    store: Store = {}
    for instance, n in (("127.0.0.1:8101", 3), ("127.0.0.1:8102", 5)):
        ingest(store, page(f"# TYPE push_connections gauge\npush_connections {n}"), 1.0, "push", instance)
    assert evaluate(parse("sum by (instance) (push_connections)"), store, 1.0) == {
        (("instance", "127.0.0.1:8101"),): 3.0, (("instance", "127.0.0.1:8102"),): 5.0}
    assert evaluate(parse("sum(push_connections)"), store, 1.0) == {(): 8.0}
    assert evaluate(parse("max(push_connections)"), store, 1.0) == {(): 5.0}


def test_histogram_quantile_interpolates_within_the_bucket_holding_the_rank() -> None:
    """Over 10 s: 40 observations at most 0.1 s, 80 at most 0.5 s, 100 in all; the median (rank 50) is a quarter into
    (0.1, 0.5], p99 (rank 99) is in +Inf's bucket so it is the highest finite bound, and with none observed it is NaN."""
    store, idle = histogram(1), histogram(0)
    expr = "histogram_quantile({q}, sum by (le) (rate(push_delivery_latency_seconds_bucket[5m])))"
    assert evaluate(parse(expr.format(q=0.5)), store, 10.0)[()] == pytest.approx(0.2)
    assert evaluate(parse(expr.format(q=0.99)), store, 10.0)[()] == pytest.approx(0.5)
    assert math.isnan(evaluate(parse(expr.format(q=0.5)), idle, 10.0)[()])  # nothing observed: a gap in the panel


def histogram(scale: int) -> Store:
    """Latency buckets scraped at 0 s (all zero) and at 10 s (40, 80 and 100 observations, times ``scale``)."""
    store: Store = {}
    for t, times in ((0.0, 0), (10.0, scale)):
        body = "\n".join(f'push_delivery_latency_seconds_bucket{{le="{le}"}} {n * times}'
                         for le, n in (("0.1", 40), ("0.5", 80), ("+Inf", 100)))
        ingest(store, page(f"# TYPE push_delivery_latency_seconds histogram\n{body}"), t, "push", "h:1")
    return store


def test_an_expression_outside_the_subset_is_refused_naming_its_panel() -> None:
    """avg, binary operators, regex matchers and offsets are refused, with the panel's title and the expression."""
    for expr in ("avg(push_connections)", "sum(rate(a_total[1m])) / sum(rate(b_total[1m]))",
                 'sum(rate(a_total{job=~"push"}[1m]))', "sum(push_connections offset 5m)", "push_connections"):
        with pytest.raises(Unsupported):
            parse(expr)
    dashboard = {"panels": [{"title": "Averages", "type": "timeseries", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8},
                             "targets": [{"expr": "avg(push_connections)"}]}]}
    with pytest.raises(Unsupported, match=r"panel 'Averages': 'avg\(push_connections\)' is outside"):
        load_panels(dashboard)


def test_every_panel_of_the_dashboard_renders_to_text_and_svg() -> None:
    """The shipped dashboard parses whole, and a store holding one page yields a block per panel and an SVG with each
    title, a series' legend expanded from its labels."""
    panels = load_panels(json.loads(DASHBOARD.read_text()))
    store: Store = {}
    for t in (0.0, 1.0):
        ingest(store, page("# TYPE push_tier_backlog gauge\npush_tier_backlog{tier=\"high\"} 2"), t, "dispatch", "h:3")
    lines = [series(panel, store, [0.0, 1.0]) for panel in panels]
    rendered, drawn = text(panels, lines), svg(panels, lines, [0.0, 1.0])
    assert all(panel.title in rendered for panel in panels) and len(panels) >= 12
    assert "  high " in rendered and ">high  2</text>" in drawn and drawn.startswith("<svg")
    assert not math.isnan(lines[2]["high"][-1][1])
