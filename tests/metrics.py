"""Reading a service's ``/metrics`` page as Prometheus exposition format, not as text to search."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

SUFFIXES = ("", "_total", "_count", "_sum", "_bucket", "_created")


def sample(page: str, name: str, *, absent: float | None = None, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` on a ``/metrics`` page; fails when the page has no such
    sample, so a metric missing or misspelt cannot pass as zero. ``absent`` (say 0.0 for a labelled counter whose
    child is exported only once first touched) is returned instead when the family is on the page but that sample
    is not; a name no family on the page exports fails even then."""
    families = list(text_string_to_metric_families(page))
    for family in families:
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    if absent is not None and any(name in {family.name + suffix for suffix in SUFFIXES} for family in families):
        return absent
    raise AssertionError(f"no sample {name}{labels or ''} on the page; its families: {sorted(f.name for f in families)}")
