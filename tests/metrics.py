"""Reading a service's ``/metrics`` page as Prometheus exposition format, not as text to search."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

SUFFIXES = ("", "_total", "_count", "_sum", "_bucket", "_created")


def sample(page: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` on a ``/metrics`` page. A labelled sample not recorded
    yet counts 0; a name no family on the page exports fails, so a misspelt metric cannot pass as zero."""
    families = list(text_string_to_metric_families(page))
    for family in families:
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    if labels and any(name in {family.name + suffix for suffix in SUFFIXES} for family in families):
        return 0.0
    raise AssertionError(f"no sample {name}{labels or ''} on the page; its families: {sorted(f.name for f in families)}")
